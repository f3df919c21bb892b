import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// The findings of the second outside attack (F8–F13): configuration that parsers read two
/// ways, advice that did not protect, reports that judged by who runs the command, output
/// a drop's name could forge, a tail read whole, and submissions that looked accepted.
/// Real binaries on temp spools; the parts that need second Unix users are skipped (with a
/// message) when not running as root.
@Suite(.serialized) struct TrustConfigTests {
    typealias Auth = AuthorizationTests

    static func skipUnlessRoot(_ test: String) -> Bool {
        guard getuid() == 0 else {
            print("TrustConfigTests.\(test): skipped — needs root to act as \(Auth.service), \(Auth.alice), \(Auth.bob) (CI runs as root)")
            return true
        }
        return false
    }

    /// Replaces cairn.json with `text` exactly as given (duplicate keys and all).
    static func writeConfigText(_ t: TempSpool, _ text: String) throws {
        try t.spool.durable.write(Data(text.utf8), to: t.spool.configFile)
    }

    // F8: the refusal of a group-writable drop advised `chmod go-w`, which leaves whoever
    // opened the file meanwhile able to write it. The advice is now a fresh copy.
    @Test func aGroupWritableDropIsRefusedWithAdviceThatDoesNotLeaveItOpen() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        let r = try t.submit("gate", input: ["who": "x"] as JSONValue)
        try await t.waitFor(r, .waiting)
        let approvals = t.spool.run(r).approvalsDirectory.string
        let staged = approvals + "/.go"
        try Data("{}".utf8).write(to: URL(fileURLWithPath: staged))
        chmod(staged, 0o664)
        rename(staged, approvals + "/go.approved")
        let err = FilePath(approvals + "/go.approved.error.json")
        try await waitUntil("the refusal's error file") { DurableFile.exists(err) }
        let reason = try DurableFile.readJSON(err)["error"]?.stringValue ?? ""
        #expect(!reason.contains("chmod go-w"), "the hint must not advise chmod: \(reason)")
        #expect(reason.contains("umask 022"), "the hint says how to make a copy of one's own: \(reason)")
        #expect(t.status(r) == .waiting)
    }

    // F8, with real users: following the new advice (a fresh copy under umask 022) defeats
    // a teammate who opened the group-writable original for writing.
    @Test func aFreshCopyIsNotWritableThroughADescriptorOnTheOriginal() async throws {
        if Self.skipUnlessRoot("aFreshCopyIsNotWritableThroughADescriptorOnTheOriginal") { return }
        let (t, spool) = try Auth.serviceSpool()
        let cairn = Binary.path("cairn-fixtures")
        let d = try await DaemonProcess(spool: t.spool, asUser: Auth.service)
        defer { d.stopBlocking() }
        try #require(try Auth.sh(Auth.service, "echo '{}' | \(cairn) submit gate --spool \(spool) --id f8 --input -").code == 0)
        try await t.waitFor("f8", .waiting)
        let shared = t.path.appending("shared").string
        try #require(try Auth.root("install -d -g \(Auth.group) -m 2775 \(shared)").code == 0)
        try #require(try Auth.sh(Auth.alice, "umask 002; echo '{\"value\": 10}' > \(shared)/d.json").code == 0)
        // Bob opens alice's group-writable file, waits for her copy, then writes through it.
        let bob = try Binary.start("/usr/bin/setpriv", ["--reuid=\(Auth.bob)", "--regid=\(Auth.bob)", "--init-groups", "--", "/bin/bash", "-c", """
            exec 3<>\(shared)/d.json; touch \(shared)/opened
            for i in $(seq 1000); do [ -e \(shared)/copied ] && break; sleep 0.01; done
            printf '{"value": 99999}\\n' >&3 && touch \(shared)/written
            """])
        try await waitUntil("bob has the file open") { FileManager.default.fileExists(atPath: shared + "/opened") }
        try #require(try Auth.sh(Auth.alice, "umask 022; cp \(shared)/d.json \(spool)/runs/f8/approvals/.go && touch \(shared)/copied").code == 0)
        try await waitUntil("bob wrote through his descriptor") { FileManager.default.fileExists(atPath: shared + "/written") }
        _ = await Binary.finish(bob)
        try #require(try Auth.sh(Auth.alice, "mv \(spool)/runs/f8/approvals/.go \(spool)/runs/f8/approvals/go.approved").code == 0)
        try await t.waitFor("f8", .completed)
        let res = try t.result("f8")
        #expect(res["value"] == 10, "bob's write reached the copy: \(res)")
        #expect(res["by"] == .string(Auth.alice))
    }

    // F8's class: a group-writable cairn.json (or workflow script) was to be fixed "with
    // chown/chmod", which leaves a descriptor opened meanwhile able to rewrite it.
    @Test func anUntrustedConfigurationFileIsToBeReplacedNotChmodded() async throws {
        let t = try TempSpool()
        chmod(t.spool.configFile.string, 0o664)
        let r = try Binary.run("cairn-fixtures", ["daemon", "--spool", t.spool.root.string])
        #expect(r.code != 0 && r.stderr.contains("writable by group or others"), "\(r.stderr.suffix(400))")
        #expect(r.stderr.contains("fresh copy") && !r.stderr.contains("(fix with chown/chmod)"), "\(r.stderr.suffix(400))")
    }

    // F9: `"approvers"` twice: the daemon read the first (open to all), jq the last (bob only).
    @Test func duplicateKeysInCairnJsonAreRefusedEverywhere() async throws {
        let t = try TempSpool()
        let r = try t.submit("gate", input: ["who": "x"] as JSONValue)
        try Self.writeConfigText(t, #"{"format": 1, "approvers": {}, "approvers": {"go": {"users": ["nobody-at-all"]}}}"#)
        let fsck = try Binary.cairn("fsck", spool: t.spool)
        #expect(fsck.code != 0, "fsck accepted it: \(fsck.stdout)")
        #expect((fsck.stdout + fsck.stderr).contains("\"approvers\" twice"), "fsck names the key: \(fsck.stdout) \(fsck.stderr)")
        let approve = try Binary.cairn("approve", r, "go", "--early", spool: t.spool)
        #expect(approve.code != 0, "approve acted on it: \(approve.stdout)")
        // The daemon refuses to start on it (fails closed), naming the key.
        let daemon = try Binary.start("cairn-fixtures", ["daemon", "--spool", t.spool.root.string])
        let deadline = Date().addingTimeInterval(15)
        while daemon.0.isRunning && Date() < deadline { usleep(10_000) }
        if daemon.0.isRunning { kill(daemon.0.processIdentifier, SIGKILL) }
        let out = await Binary.finish(daemon)
        #expect(out.code != 0 && out.signal == nil, "the daemon ran on a cairn.json with a key twice: \(out.stderr.suffix(400))")
        #expect(out.stderr.contains("twice"), "\(out.stderr.suffix(400))")
        // Nested: a gate named twice is refused the same way.
        try Self.writeConfigText(t, #"{"format": 1, "approvers": {"go": {"users": ["a"]}, "go": {"users": ["b"]}}}"#)
        let nested = try Binary.cairn("fsck", spool: t.spool)
        #expect(nested.code != 0 && (nested.stdout + nested.stderr).contains("\"go\" twice"), "\(nested.stdout) \(nested.stderr)")
    }

    // F9, live: a daemon already running does not act on a cairn.json that gained a key
    // twice (alice's decision is not accepted under the rule jq does not show).
    @Test func aRunningDaemonDoesNotActOnACairnJsonWithAKeyTwice() async throws {
        if Self.skipUnlessRoot("aRunningDaemonDoesNotActOnACairnJsonWithAKeyTwice") { return }
        let (t, spool) = try Auth.serviceSpool()
        let cairn = Binary.path("cairn-fixtures")
        let d = try await DaemonProcess(spool: t.spool, asUser: Auth.service)
        defer { d.stopBlocking() }
        try #require(try Auth.sh(Auth.service, "echo '{}' | \(cairn) submit gate --spool \(spool) --id f9 --input -").code == 0)
        try await t.waitFor("f9", .waiting)
        let cfg = #"{"format":1,"approvers":{},"approvers":{"go":{"users":["cairnbob"]}}}"#
        try #require(try Auth.sh(Auth.service, "printf '%s' '\(cfg)' > \(spool)/.c && mv \(spool)/.c \(spool)/cairn.json").code == 0)
        try #require(try Auth.sh(Auth.alice, "umask 022; echo '{}' > \(spool)/runs/f9/approvals/.go && mv \(spool)/runs/f9/approvals/.go \(spool)/runs/f9/approvals/go.approved").code == 0)
        try await waitUntil("the daemon reports the key twice") { d.log.contains("twice") }
        usleep(300_000)
        #expect(t.status("f9") == .waiting, "alice's decision was accepted under the first \"approvers\": \(d.log.suffix(600))")
    }

    // F9's class: a value given to a command with a key twice is refused, not collapsed.
    @Test func aCommandRefusesAValueWithAKeyTwice() async throws {
        let t = try TempSpool()
        let r = try t.submit("gate", input: ["who": "x"] as JSONValue)
        let file = t.path.appending("v.json").string
        try Data(#"{"amount": 1, "amount": 1000}"#.utf8).write(to: URL(fileURLWithPath: file))
        let approve = try Binary.cairn("approve", r, "go", "--early", "--value", file, spool: t.spool)
        #expect(approve.code != 0 && approve.stderr.contains("twice"), "\(approve.stdout) \(approve.stderr)")
        #expect(!DurableFile.exists(t.spool.run(r).approvalsDirectory.appending("go.approved")))
        let submit = try Binary.cairn("submit", "gate", "--input", file, spool: t.spool)
        #expect(submit.code != 0 && submit.stderr.contains("twice"), "\(submit.stdout) \(submit.stderr)")
    }

    // F10: fsck and why, run by root (or a teammate), judged the service user's own files by
    // who ran the command: "owned by cairnsvc, neither the service user nor root".
    @Test func fsckAndWhyJudgeByTheServiceUserNotByWhoRunsThem() async throws {
        if Self.skipUnlessRoot("fsckAndWhyJudgeByTheServiceUserNotByWhoRunsThem") { return }
        let (t, spool) = try Auth.serviceSpool()
        defer { withExtendedLifetime(t) {} }
        let cairn = Binary.path("cairn-fixtures")
        try #require(try Auth.sh(Auth.service, "printf '#!/bin/sh\\necho 1 | cairn result -\\n' > \(spool)/workflows/one && chmod 755 \(spool)/workflows/one").code == 0)
        try #require(try Auth.sh(Auth.service, "echo '{}' | \(cairn) submit one --spool \(spool) --id f10 --input -").code == 0)
        for (who, run) in [("root", { (c: String) in try Auth.root(c) }), (Auth.alice, { (c: String) in try Auth.sh(Auth.alice, c) })] {
            let fsck = try run("\(cairn) fsck --spool \(spool)")
            #expect(fsck.code == 0, "fsck as \(who): \(fsck.out) \(fsck.err)")
            #expect(!fsck.out.contains("neither the service user"), "fsck as \(who): \(fsck.out)")
            let why = try run("\(cairn) why f10 --spool \(spool)")
            #expect(!why.out.contains("will not execute"), "why as \(who): \(why.out) \(why.err)")
        }
        // A file of someone else is still reported, by anyone.
        try #require(try Auth.root("chown \(Auth.bob) \(spool)/workflows/one").code == 0)
        let fsck = try Auth.root("\(cairn) fsck --spool \(spool)")
        #expect(fsck.code != 0 && fsck.out.contains("workflows/one") && fsck.out.contains("owned by \(Auth.bob)"), "\(fsck.out)")
    }

    // F11: the name of a dropped file (escape codes, a line break) reached the terminal raw.
    @Test func namesAndTextFromDropsCannotForgeOutput() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        let evil = "ev.\u{1B}[31mRED\u{1B}[0m\nFAKE LINE.json"
        let l = try t.submit("listen", input: "ev")
        try await t.waitFor(l, .waiting)
        let events = t.spool.run(l).eventsDirectory.string
        try Data("1".utf8).write(to: URL(fileURLWithPath: events + "/.x"))
        rename(events + "/.x", events + "/" + evil)
        try await t.waitFor(l, .completed)
        // A gate decided with a comment holding a line break and an escape.
        let g = try t.submit("gate", input: ["who": "x"] as JSONValue)
        try await t.waitFor(g, .waiting)
        let approve = try Binary.cairn("approve", g, "go", "--comment", "ok\nFAKE COMMENT \u{1B}]0;title\u{07}", spool: t.spool)
        try #require(approve.code == 0, "\(approve.stderr)")
        try await t.waitFor(g, .completed)
        // And a foreign file with such a name where fsck lists it.
        let planted = t.spool.run(g).directory.string + "/x\u{1B}[2J\nFAKE FSCK"
        try Data().write(to: URL(fileURLWithPath: planted))
        chown(planted, 65534, 65534)
        for args in [["show", l], ["show", g], ["why", l], ["ls"], ["fsck"]] {
            let r = try Binary.run("cairn-fixtures", args + ["--spool", t.spool.root.string])
            let text = r.stdout + r.stderr
            #expect(!text.contains("\u{1B}"), "\(args): an escape reached the output: \(text.debugDescription)")
            #expect(!text.split(separator: "\n").contains { $0.hasPrefix("FAKE") }, "\(args): a forged line: \(text)")
        }
    }

    // F12: the stderr tail of a failed script read the whole log (hundreds of MiB in the
    // daemon's memory; past 256 MiB the tail was silently dropped).
    @Test func theStderrTailReadsOnlyTheEndOfTheLog() async throws {
        let t = try TempSpool()
        // A script whose stderr is 300 MiB (sparse: costs no disk, nor time) fails; its
        // error holds the last line, and the daemon's peak memory does not grow with the log.
        let p = t.spool.workflowsDirectory.appending("loud").string
        try "#!/bin/sh\ntruncate -s 300M /proc/self/fd/2\necho 'LAST LINE' >&2\nexit 1\n".write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        func peakKiB() -> Int {
            let s = (try? String(contentsOfFile: "/proc/\(d.pid)/status", encoding: .utf8)) ?? ""
            let line = s.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        let before = peakKiB()
        let r = try t.submit("loud", input: JSONValue.null)
        try await waitUntil("the run failed with the tail") { (try? t.state(r))?.error?.message.contains("LAST LINE") == true }
        let grown = peakKiB() - before
        #expect(grown < 64 * 1024, "the daemon's peak memory grew by \(grown) KiB for one failure")
    }

    // F12's class: fsck read every approvals/*.json whole, following whatever was there: a
    // teammate's FIFO named x.json hung it.
    @Test func fsckDoesNotHangOnAFifoDroppedAmongTheRequests() async throws {
        let t = try TempSpool()
        let r = try t.submit("gate", input: ["who": "x"] as JSONValue)
        _ = try Binary.cairn("advance", r, spool: t.spool)
        let fifo = t.spool.run(r).approvalsDirectory.string + "/x.json"
        try #require(mkfifo(fifo, 0o644) == 0)
        chown(fifo, 65534, 65534)
        let fsck = try Binary.start("cairn-fixtures", ["fsck", "--spool", t.spool.root.string])
        let deadline = Date().addingTimeInterval(15)
        while fsck.0.isRunning && Date() < deadline { usleep(10_000) }
        let hung = fsck.0.isRunning
        if hung { kill(fsck.0.processIdentifier, SIGKILL) }
        let out = await Binary.finish(fsck)
        #expect(!hung, "fsck hung on a FIFO in approvals/")
        #expect(out.stdout.contains("approvals/x.json"), "the FIFO is reported as a file the runtime did not write: \(out.stdout)")
    }

    // F13: a submission over the inbox limit printed an id and exited 0; the daemon then
    // rejected it and that id never existed. The same for what else the daemon checks.
    @Test func whatTheDaemonWouldRefuseIsRefusedBeforeAnIdIsPrinted() async throws {
        if Self.skipUnlessRoot("whatTheDaemonWouldRefuseIsRefusedBeforeAnIdIsPrinted") { return }
        let (t, spool) = try Auth.serviceSpool()
        let cairn = Binary.path("cairn-fixtures")
        let big = t.path.appending("big.json").string
        try JSONValue.object(["blob": .string(String(repeating: "x", count: 1_100_000))]).canonicalData().write(to: URL(fileURLWithPath: big))
        chmod(big, 0o644)
        chmod(t.path.string, 0o755)
        let submit = try Auth.sh(Auth.alice, "\(cairn) submit gate --spool \(spool) --input \(big)")
        #expect(submit.code == 1, "an oversized submission looked accepted: \(submit.out) \(submit.err)")
        #expect(submit.out.isEmpty && submit.err.contains("limit"), "\(submit.out) \(submit.err)")
        #expect(((try? Spool.list(t.spool.inboxDirectory)) ?? []).isEmpty, "nothing is left in inbox/")
        // An id someone else's run has.
        try #require(try Auth.sh(Auth.service, "echo '{}' | \(cairn) submit gate --spool \(spool) --id taken --input -").code == 0)
        let taken = try Auth.sh(Auth.alice, "echo '{}' | \(cairn) submit gate --spool \(spool) --id taken --input -")
        #expect(taken.code == 1 && taken.out.isEmpty && taken.err.contains("already used"), "\(taken.out) \(taken.err)")
        // A decision by someone the gate's approvers leave out.
        let bob = try Auth.sh(Auth.bob, "\(cairn) approve taken go --early --spool \(spool)")
        #expect(bob.code == 1 && !bob.out.contains("approved"), "\(bob.out) \(bob.err)")
        #expect(!DurableFile.exists(t.spool.run("taken").approvalsDirectory.appending("go.approved")))
    }

    // F13's class: decisions and events over drop_size_limit.
    @Test func oversizedDecisionsAndEventsAreRefusedByTheCommand() async throws {
        let t = try TempSpool()
        let r = try t.submit("gate", input: ["who": "x"] as JSONValue)
        let big = t.path.appending("big.json").string
        try JSONValue.string(String(repeating: "x", count: 100_000)).canonicalData().write(to: URL(fileURLWithPath: big))
        let approve = try Binary.cairn("approve", r, "go", "--early", "--value", big, spool: t.spool)
        #expect(approve.code == 1 && approve.stderr.contains("drop_size_limit"), "\(approve.stdout) \(approve.stderr)")
        let signal = try Binary.cairn("signal", r, "ev", "--data", big, spool: t.spool)
        #expect(signal.code == 1 && signal.stderr.contains("drop_size_limit"), "\(signal.stdout) \(signal.stderr)")
        #expect(((try? Spool.list(t.spool.run(r).eventsDirectory)) ?? []).isEmpty)
    }
}
