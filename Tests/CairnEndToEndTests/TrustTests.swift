import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// The defects found from outside (issue "Trust"), each reproduced against the real
/// binaries: what a misbehaving script, a crash, a typo or a careless drop must not do.
@Suite(.serialized) struct TrustTests {
    func install(_ t: TempSpool, _ name: String, _ text: String) throws {
        let p = t.spool.workflowsDirectory.appending(name).string
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
    }

    func setConfig(_ t: TempSpool, _ f: (inout [String: JSONValue]) -> Void) throws {
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        f(&cfg)
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
    }

    // Defect 1: a script that does not read its stdin killed the daemon with SIGPIPE.
    @Test func aScriptThatIgnoresALargeInputDoesNotKillTheDaemon() async throws {
        let t = try TempSpool()
        try install(t, "deaf", "#!/bin/sh\nexit 0\n")
        let d = try await DaemonProcess(spool: t.spool)
        let big = String(repeating: "x", count: 300_000)
        var runs: [String] = []
        for _ in 0..<3 { runs.append(try t.submit("deaf", input: ["blob": .string(big)] as JSONValue)) }
        for r in runs { try await t.waitFor(r, .completed) }
        #expect(d.process.isRunning, "the daemon is alive: \(d.log.suffix(500))")
        // And the script still gets its whole input when it does read it.
        try install(t, "echo", "#!/bin/sh\nwc -c | tr -d ' ' | cairn result -\n")
        let r = try t.submit("echo", input: ["blob": .string(big)] as JSONValue)
        try await t.waitFor(r, .completed)
        #expect(try t.result(r) == .int(Int64(JSONValue.object(["blob": .string(big)]).compactText().utf8.count + 1)))
        #expect(await d.stop() == 0)
    }

    // Defect 2: the helper link of a host binary not named `cairn` lived in a predictable
    // /tmp directory that another user could create first.
    @Test func scriptsNeverRunAHelperFromADirectoryAnotherUserCouldPrepare() async throws {
        let t = try TempSpool()
        let marker = t.path.appending("pwned").string
        // What the old code used: $TMPDIR/cairn-bin-UID-<hash of the executable>. Prepare
        // every such directory name that could be chosen by planting a link in a fresh
        // TMPDIR whose only content is attacker-made.
        let tmpdir = t.path.appending("tmp").string
        mkdir(tmpdir, 0o1777)
        let exe = Binary.path("cairn-fixtures")
        let evil = tmpdir + "/evil.sh"
        try "#!/bin/sh\ntouch \(marker)\necho 1\n".write(toFile: evil, atomically: true, encoding: .utf8)
        chmod(evil, 0o755)
        let resolved = URL(fileURLWithPath: exe).resolvingSymlinksInPath().path
        let hash = ContentHash.sha256Hex(Array(resolved.utf8)).prefix(12)
        let predictable = tmpdir + "/cairn-bin-\(getuid())-\(hash)"
        mkdir(predictable, 0o777)
        symlink(evil, predictable + "/cairn")
        try install(t, "where", """
            #!/bin/sh
            set -e
            dir=$(dirname "$(command -v cairn)")
            v=$(cairn step one -- echo 7)
            printf '{"dir": "%s", "mode": "%s", "owner": "%s", "v": %s}' "$dir" "$(stat -c %a "$dir")" "$(stat -c %u "$dir")" "$v" | cairn result -

            """)
        let d = try await DaemonProcess(spool: t.spool, env: ["TMPDIR": tmpdir])
        let r = try t.submit("where", input: JSONValue.null)
        try await t.waitFor(r, .completed)
        let res = try t.result(r)
        #expect(!FileManager.default.fileExists(atPath: marker), "another user's program ran")
        #expect(res["dir"] != .string(predictable))
        #expect(res["mode"] == "700")
        #expect(res["owner"] == .string(String(getuid())))
        #expect(res["v"] == 7)
        await d.stop()
    }

    // Defect 4: kill -9 between state.json and the index left runs the index did not list.
    @Test func aRunTheIndexLostIsFoundByFsckAndFinishedByTheDaemon() async throws {
        let t = try TempSpool()
        let lost = try t.submit("gate", input: ["who": "a"] as JSONValue)
        let misfiled = try t.submit("gate", input: ["who": "b"] as JSONValue)
        unlink(t.spool.indexDirectory.appending("queued").appending(lost).string)
        // `misfiled` waits, but the index still says queued (as after a kill mid-move).
        let d1 = try await DaemonProcess(spool: t.spool)
        try await t.waitFor(misfiled, .waiting)
        await d1.stop()
        let idx = t.spool.indexDirectory.string
        unlink(idx + "/waiting/" + misfiled)
        _ = FileManager.default.createFile(atPath: idx + "/queued/" + misfiled, contents: nil)
        let fsck = try Binary.cairn("fsck", spool: t.spool)
        #expect(fsck.code == 1, "fsck must not pass with drift: \(fsck.stdout)")
        #expect(fsck.stdout.contains("index/waiting/\(misfiled): missing"), "\(fsck.stdout)")
        #expect(fsck.stdout.contains("index/queued/\(misfiled): stale"), "\(fsck.stdout)")
        // `lost` was reconciled by the first daemon already (it has waited since).
        let d2 = try await DaemonProcess(spool: t.spool)
        try await t.waitFor(lost, .waiting)
        let waiting = try Binary.cairn("ls", "--status", "waiting", spool: t.spool)
        #expect(waiting.stdout.contains(lost) && waiting.stdout.contains(misfiled), "\(waiting.stdout)")
        try t.drop("approvals/go.approved", in: lost)
        try t.drop("approvals/go.approved", in: misfiled)
        try await t.waitFor(lost, .completed)
        try await t.waitFor(misfiled, .completed)
        await d2.stop()
        #expect(try Binary.cairn("fsck", spool: t.spool).code == 0)
    }

    // Defect 5: a typo in `approvers` let anyone approve.
    @Test(arguments: [
        #"{"go": {"users": "alice"}}"#,
        #"{"go": {"user": ["root"]}}"#,
        #"{"go": {}}"#,
        #"{"go": ["root"]}"#,
        #"["go"]"#,
    ])
    func aMalformedApproversRuleFailsClosed(rule: String) async throws {
        let t = try TempSpool()
        try setConfig(t) { $0["approvers"] = try! JSONValue.parse(rule) }
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("gate", input: ["who": "x"] as JSONValue)
        try await t.waitFor(r, .waiting)
        try t.drop("approvals/go.approved", in: r)
        let err = t.spool.run(r).approvalsDirectory.appending("go.approved.error.json").string
        try await waitUntil("error file for \(rule)") { FileManager.default.fileExists(atPath: err) }
        let text = try String(contentsOfFile: err, encoding: .utf8)
        #expect(text.contains("cairn.json"), "\(text)")
        #expect(t.status(r) == .waiting)
        let why = try Binary.cairn("why", r, spool: t.spool)
        #expect(why.stdout.contains("cairn.json"), "why must say the policy is broken: \(why.stdout)")
        let fsck = try Binary.cairn("fsck", spool: t.spool)
        #expect(fsck.code == 1 && fsck.stdout.contains("approvers"), "\(fsck.stdout)")
        await d.stop()
    }

    // The class of defect 5: any setting of the wrong shape fails closed, and so does
    // configuration another user could have written.
    @Test(arguments: [
        (#"{"drop_size_limit": "64k"}"#, "drop_size_limit"),
        (#"{"script_timeout": {"x": "soon"}}"#, "script_timeout"),
        (#"{"concurrency": {"workflow": {"x": 1}}}"#, "unknown key \"workflow\""),
        (#"{"script_retries": {"x": {"max_attempt": 3}}}"#, "max_attempt"),
    ])
    func aMistypedSettingStopsTheDaemonWithAClearError(setting: String, fragment: String) async throws {
        let t = try TempSpool()
        try setConfig(t) { cfg in
            for (k, v) in (try! JSONValue.parse(setting)).objectValue! { cfg[k] = v }
        }
        let r = try Binary.run("cairn", ["daemon", "--spool", t.spool.root.string])
        #expect(r.code != 0)
        #expect(r.stderr.contains("cairn.json") && r.stderr.contains(fragment), "\(r.stderr)")
    }

    @Test func configurationOthersCanWriteIsNotTrusted() async throws {
        let t = try TempSpool()
        chmod(t.spool.configFile.string, 0o666)
        let r = try Binary.run("cairn", ["daemon", "--spool", t.spool.root.string])
        #expect(r.code != 0)
        #expect(r.stderr.contains("writable by group or others"), "\(r.stderr)")
        let fsck = try Binary.cairn("fsck", spool: t.spool)
        #expect(fsck.code == 1 && fsck.stdout.contains("cairn.json: is writable by group or others"), "\(fsck.stdout)")
        chmod(t.spool.configFile.string, 0o644)
        try setConfig(t) { $0["aprovers"] = ["go": ["users": ["x"]]] }
        let typo = try Binary.cairn("fsck", spool: t.spool)
        #expect(typo.code == 1 && typo.stdout.contains("unknown setting \"aprovers\""), "\(typo.stdout)")
    }

    // Defect 6: a rejected submission could be overwritten by a later rejection's error file.
    @Test func nothingDroppedInTheInboxIsEverOverwritten() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        let inbox = t.spool.inboxDirectory.string
        func dropInbox(_ name: String, _ text: String) throws {
            try text.write(toFile: t.path.appending(".x").string, atomically: false, encoding: .utf8)
            #expect(rename(t.path.appending(".x").string, inbox + "/" + name) == 0)
        }
        try dropInbox("victim.error.json", "precious, not a submission")
        try await waitUntil("first rejection") { (try? Spool.list(t.spool.rejectedDirectory).count) == 2 }
        try dropInbox("victim.json", "{not json")
        try await waitUntil("second rejection") { (try? Spool.list(t.spool.rejectedDirectory).count) == 4 }
        try dropInbox("victim.json", "{still not json")
        try await waitUntil("third rejection") { (try? Spool.list(t.spool.rejectedDirectory).count) == 6 }
        let rejected = t.spool.rejectedDirectory.string
        var contents: [String] = []
        for name in try Spool.list(t.spool.rejectedDirectory) {
            contents.append(try String(contentsOfFile: rejected + "/" + name, encoding: .utf8))
        }
        let names = try Spool.list(t.spool.rejectedDirectory)
        for original in ["precious, not a submission", "{not json", "{still not json"] {
            #expect(contents.contains(original), "\(original) was lost: \(names)")
        }
        await d.stop()
    }

    // Defect 9: `cairn wait` missed the change it waited for.
    @Test func waitNeverMissesTheStateItWaitsFor() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        for i in 0..<20 {
            let r = try t.submit("gate", input: ["who": .string("w\(i)")] as JSONValue)
            // No re-reading every second to fall back on (--rescan-interval 1h): each change
            // must be seen from inotify alone, or the wait times out (exit 4).
            let w = try Binary.start("cairn", ["wait", r, "--for", "waiting", "--timeout", "15s", "--rescan-interval", "1h", "--spool", t.spool.root.string])
            let done = try Binary.start("cairn", ["wait", r, "--timeout", "15s", "--rescan-interval", "1h", "--spool", t.spool.root.string])
            let res = await Binary.finish(w)
            #expect(res.code == 0 && res.stdout.contains("waiting"), "wait --for waiting \(i): \(res.stderr)")
            try t.drop("approvals/go.approved", in: r)
            let fin = await Binary.finish(done)
            #expect(fin.code == 0 && fin.stdout.contains("completed"), "wait \(i): \(fin.stderr)")
        }
        await d.stop()
    }

    // Defect 10: hard links, directories, duplicate keys.
    @Test func hardLinksDirectoriesAndDuplicateKeysAreRefusedAtOnce() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("gate", input: ["who": "x"] as JSONValue)
        try await t.waitFor(r, .waiting)
        let approvals = t.spool.run(r).approvalsDirectory.string
        // A hard link gives no close or move event; it is refused when it appears.
        let other = t.path.appending("mine").string
        try #"{"value": "linked"}"#.write(toFile: other, atomically: false, encoding: .utf8)
        #expect(link(other, approvals + "/go.approved") == 0)
        try await waitUntil("hard link refused", timeout: 5) { ((try? String(contentsOfFile: approvals + "/go.approved.error.json", encoding: .utf8)) ?? "").contains("hard link") }
        #expect(t.status(r) == .waiting)
        unlink(approvals + "/go.approved")
        // A directory where a decision belongs gets an error file at once (not at a rescan).
        mkdir(approvals + "/go.approved", 0o755)
        try await waitUntil("directory refused", timeout: 5) { ((try? String(contentsOfFile: approvals + "/go.approved.error.json", encoding: .utf8)) ?? "").contains("not a regular file") }
        rmdir(approvals + "/go.approved")
        // Duplicate keys: jq would read "b", Foundation "a"; refused.
        try t.drop("approvals/go.approved", in: r, content: #"{"value": "a", "value": "b"}"#)
        try await waitUntil("duplicate key refused", timeout: 5) { ((try? String(contentsOfFile: approvals + "/go.approved.error.json", encoding: .utf8)) ?? "").contains("twice") }
        #expect(t.status(r) == .waiting)
        unlink(approvals + "/go.approved")
        // The inbox: a directory named like a submission is rejected at once.
        mkdir(t.spool.inboxDirectory.string + "/x.json", 0o755)
        try await waitUntil("inbox directory rejected", timeout: 5) { FileManager.default.fileExists(atPath: t.spool.rejectedDirectory.string + "/x.error.json") }
        // A decision that is fine is recorded, consumed out of approvals/, with its check.
        try t.drop("approvals/go.approved", in: r, content: #"{"value": "fine"}"#)
        try await t.waitFor(r, .completed)
        #expect(!FileManager.default.fileExists(atPath: approvals + "/go.approved"))
        let decided = try t.spool.journal(r).load().last { $0.kind == "approval" && $0.phase == "decided" }
        let consumed = try #require(decided?.data?["consumed"]?.stringValue)
        #expect(FileManager.default.fileExists(atPath: t.spool.run(r).directory.appending(consumed).string))
        #expect(decided?.data?["authorization"]?.stringValue?.contains("Unix permissions") == true)
        await d.stop()
    }
}

/// Defect 10's script and daemon items: a script that never exits, `running` while a script
/// works before its first helper, a full disk under a script, what two daemons log.
@Suite(.serialized) struct TrustScriptTests {
    func install(_ t: TempSpool, _ name: String, _ text: String) throws {
        let p = t.spool.workflowsDirectory.appending(name).string
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
    }

    @Test func aScriptPastItsTimeoutIsKilledAndTheRunFailsSayingSo() async throws {
        let t = try TempSpool()
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["script_timeout"] = ["hang": "1s"]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        let pidFile = t.path.appending("child.pid").string
        try install(t, "hang", "#!/bin/sh\nsleep 300 &\necho $! > \(pidFile)\nwait\n")
        let d = try await DaemonProcess(spool: t.spool, args: ["--concurrency", "1"])
        let r = try t.submit("hang", input: JSONValue.null)
        try await t.waitFor(r, .failed, timeout: 10)
        let message = try t.state(r).error?.message ?? ""
        #expect(message.contains("timed out after 1"), "\(message)")
        // The whole group is gone, and the slot is free for the next run.
        let child = Int32((try String(contentsOfFile: pidFile, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines))!
        try await waitUntil("the script's child is killed", timeout: 5) { kill(child, 0) != 0 }
        try install(t, "quick", "#!/bin/sh\necho '\"ok\"' | cairn result -\n")
        let q = try t.submit("quick", input: JSONValue.null)
        try await t.waitFor(q, .completed)
        await d.stop()
    }

    @Test func aScriptAtWorkBeforeItsFirstHelperIsRunning() async throws {
        let t = try TempSpool()
        let gate = t.path.appending("go").string
        try install(t, "slow", "#!/bin/sh\nwhile [ ! -e \(gate) ]; do sleep 0.05; done\ncairn step one -- echo 1 >/dev/null\n")
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("slow", input: JSONValue.null)
        try await t.waitFor(r, .running)
        _ = FileManager.default.createFile(atPath: gate, contents: nil)
        try await t.waitFor(r, .completed)
        #expect(try t.state(r).counters.executions == 1)
        await d.stop()
    }

    /// Both daemons try every run (both see it created); the one that finds it held looks
    /// again `busyRecheck` later and finds it completed: that must not be logged as its work.
    /// So the check waits until both daemons have seen every run end.
    @Test func twoDaemonsEachLogOnlyTheRunsTheyFinished() async throws {
        let t = try TempSpool()
        let d1 = try await DaemonProcess(spool: t.spool, name: "d1")
        let d2 = try await DaemonProcess(spool: t.spool, name: "d2")
        var runs: [String] = []
        for i in 0..<10 { runs.append(try t.submit("nap", input: 0.05 * Double(i % 3))) }
        for r in runs { try await t.waitFor(r, .completed) }
        /// Per run, the levels of the "run completed" lines of a log ("info" or "debug").
        func completions(_ log: String, _ run: String) -> [String] {
            log.split(separator: "\n").filter { $0.contains("run completed") }.compactMap { line in
                let words = line.split(separator: " ").map(String.init)
                guard words.contains("run=\(run)") else { return nil }
                return words.first { $0 == "info" || $0 == "debug" }
            }
        }
        try await waitUntil("both daemons saw every run end", timeout: 15) {
            let l1 = d1.log, l2 = d2.log
            return runs.allSatisfy { !completions(l1, $0).isEmpty && !completions(l2, $0).isEmpty }
        }
        await d1.stop()
        await d2.stop()
        let l1 = d1.log, l2 = d2.log
        for r in runs {
            let info = completions(l1, r).filter { $0 == "info" }.count + completions(l2, r).filter { $0 == "info" }.count
            #expect(info == 1, "\(r): completion logged at info \(info) times (d1 \(completions(l1, r)), d2 \(completions(l2, r)))")
        }
    }

    /// A real full filesystem (tmpfs, as root): the run waits, the daemon lives, nothing is
    /// recorded twice, and the run finishes on its own once there is room again.
    @Test(.enabled(if: getuid() == 0, "mounting a small tmpfs needs root (CI runs as root)"))
    func aFullDiskIsNeverTheRunsFailure() async throws {
        let t = try TempSpool()
        let mnt = t.path.appending("small").string
        mkdir(mnt, 0o755)
        guard Binary.runShell("mount -t tmpfs -o size=8m tmpfs \(mnt)").code == 0 else {
            print("aFullDiskIsNeverTheRunsFailure: skipped — cannot mount tmpfs here")
            return
        }
        defer { _ = Binary.runShell("umount -l \(mnt)") }
        let spool = try Spool.create(at: FilePath(mnt + "/spool"))
        let fx = t.path.appending("effects").string
        let p = spool.workflowsDirectory.appending("fill").string
        try """
            #!/bin/sh
            cairn approval go >/dev/null
            v=$(cairn step once -- sh -c 'echo ran >> \(fx); echo 5')
            echo "{\\"v\\": $v}" | cairn result -

            """.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
        let d = try await DaemonProcess(spool: spool)
        let r = try spool.createRun(.init(workflow: "fill", input: .null)).id
        try await waitUntil("waiting") { (try? spool.readState(r))??.status == .waiting }
        // Fill the filesystem, then approve (an empty file needs no data block).
        _ = Binary.runShell("dd if=/dev/zero of=\(mnt)/filler bs=64k 2>/dev/null")
        let approved = spool.run(r).approvalsDirectory.appending("go.approved").string
        _ = FileManager.default.createFile(atPath: approved, contents: nil)
        try await Task.sleep(for: .seconds(3))
        #expect(d.process.isRunning, "the daemon is alive")
        let whileFull = try? spool.readState(r)
        #expect(whileFull?.status != .failed, "a full disk is not the run's failure: \(whileFull?.error?.message ?? "")")
        // Room again: the run finishes by itself, and the step ran once.
        unlink(mnt + "/filler")
        try await waitUntil("completed after space came back", timeout: 30) { (try? spool.readState(r))??.status == .completed }
        #expect(try DurableFile.readJSON(spool.run(r).resultFile) == ["v": 5])
        #expect(((try? String(contentsOfFile: fx, encoding: .utf8)) ?? "").split(separator: "\n").count == 1)
        await d.stop()
    }
}
