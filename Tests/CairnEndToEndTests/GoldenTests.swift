import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// The built `cairn` binary's output and exit codes (SPEC §5).
@Suite struct CLIGoldenTests {
    @Test func exitCodesAndOneLineErrors() async throws {
        let t = try TempSpool()
        let usage = try Binary.cairn("submit", spool: t.spool)
        #expect(usage.code == 2)
        let missing = try Binary.cairn("show", "no-such-run", spool: t.spool)
        #expect(missing.code == 3)
        #expect(missing.stderr == "cairn: no such run 'no-such-run' in \(t.spool.root.string)/runs\n")
        let notSpool = try Binary.run("cairn", ["ls", "--spool", t.path.string])
        #expect(notSpool.code == 1 && notSpool.stderr.contains("not a Cairn spool"))
        // From / with the default ./spool: "/spool", not "//spool" (a newcomer's trial).
        if !FileManager.default.fileExists(atPath: "/spool") {
            let fromRoot = try Binary.run("cairn", ["status"], cwd: "/")
            #expect(fromRoot.code == 1 && fromRoot.stderr.hasPrefix("cairn: /spool (from the default"), "\(fromRoot.stderr)")
        }
        let badStatus = try Binary.cairn("ls", "--status", "sleepy", spool: t.spool)
        #expect(badStatus.code == 2 && badStatus.stderr.contains("unknown status 'sleepy'"))
        let r = try t.submit("demo-refund", input: ["order": "A", "amount": 1, "reason": "x"] as JSONValue)
        let wait = try Binary.cairn("wait", r, "--timeout", "1s", spool: t.spool)
        #expect(wait.code == 4)
        let gate = try Binary.cairn("approve", r, "nope", spool: t.spool)
        #expect(gate.code == 3 && gate.stderr.contains("has not requested gate 'nope'"))
    }

    /// Issue 20, what a newcomer tripped over: a mistyped command is one line with the
    /// nearest name (and `help nosuch` is an error, not the root help with exit 0); a usage
    /// error is one line; `wait` on a run already there answers even with --timeout 0s, and
    /// does not return the old failure of a run whose retry is pending; a signal nobody will
    /// read says so.
    @Test func mistypesAndWaitsSayWhatIsTrue() async throws {
        let t = try TempSpool()
        let typo = try Binary.cairn("sbumit", spool: t.spool)
        #expect(typo.code == 2 && typo.stderr == "cairn: unknown command 'sbumit'; did you mean 'submit'? (cairn --help lists them)\n", "\(typo.stderr)")
        let help = try Binary.run("cairn", ["help", "nosuch"])
        #expect(help.code == 2 && help.stderr.hasPrefix("cairn: unknown command 'nosuch'") && help.stdout.isEmpty, "\(help.code) \(help.stderr)")
        #expect(try Binary.run("cairn", ["help", "submit"]).code == 0)
        let usage = try Binary.cairn("submit", spool: t.spool)
        #expect(usage.code == 2 && usage.stderr.split(separator: "\n").count == 1 && usage.stderr.hasPrefix("cairn: "), "\(usage.stderr)")
        #expect(usage.stderr.contains("cairn submit --help"), "\(usage.stderr)")

        let r = try t.submit("demo-refund", input: ["order": "A", "amount": 1, "reason": "x"] as JSONValue)
        _ = try Binary.cairn("advance", r, spool: t.spool)
        #expect(try Binary.cairn("reject", r, "issue-refund", spool: t.spool).code == 0)
        _ = try Binary.cairn("advance", r, spool: t.spool)
        let done = try Binary.cairn("wait", r, "--timeout", "0s", spool: t.spool)
        #expect(done.code == 0 && done.stdout == "\(r)  completed\n", "a run already there is no timeout: \(done.code) \(done.stderr)")
        let late = try Binary.cairn("signal", r, "go", spool: t.spool)
        #expect(late.code == 1 && late.stderr.contains("run \(r) is completed: nothing will read an event; nothing was written"), "\(late.stderr)")
        #expect(try Binary.cairn("approve", r, "issue-refund", spool: t.spool).code == 1, "a decision on a finished run is refused")

        // A failed run whose retry is pending (no daemon takes it): not the old failure.
        let f = try t.submit("demo-refund", input: ["order": "A"] as JSONValue)
        _ = try Binary.cairn("advance", f, spool: t.spool)
        #expect(try t.state(f).status == .failed)
        #expect(try Binary.cairn("retry", f, spool: t.spool).code == 0)
        let pending = try Binary.cairn("wait", f, "--timeout", "1s", spool: t.spool)
        #expect(pending.code == 4 && pending.stderr.contains("a retry is pending"), "\(pending.code) \(pending.stdout) \(pending.stderr)")
    }

    /// Issue 20: `ls` as people who live in kubectl expect it — a header and aligned columns
    /// with ages on a terminal (a real pty, through script(1)), plain lines when piped,
    /// several --status, --since, --limit, -o wide.
    @Test func lsIsATableOnATerminalAndPlainLinesWhenPiped() async throws {
        let t = try TempSpool()
        let a = try t.submit("demo-refund", input: ["order": "A", "amount": 1, "reason": "x"] as JSONValue)
        _ = try Binary.cairn("advance", a, spool: t.spool)
        let f = try t.submit("demo-refund", input: ["order": "B"] as JSONValue)
        _ = try Binary.cairn("advance", f, spool: t.spool)
        let q = try t.submit("demo-refund", input: ["order": "C", "amount": 2, "reason": "y"] as JSONValue)
        let piped = try Binary.cairn("ls", spool: t.spool)
        #expect(piped.stdout.split(separator: "\n").count == 3 && !piped.stdout.contains("STATUS"), "\(piped.stdout)")
        let tty = try Binary.run("/usr/bin/script", ["-qec", "\(Binary.path("cairn")) ls --spool \(t.spool.root.string)", "/dev/null"], env: ["NO_COLOR": "1"])
        let lines = tty.stdout.replacingOccurrences(of: "\r", with: "").split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("RUN") == true && lines.first?.contains("STATUS") == true && lines.count == 4, "\(tty.stdout)")
        let col = lines.first.flatMap { $0.range(of: "STATUS")?.lowerBound.utf16Offset(in: $0) } ?? 0
        #expect(col > 2 && lines.allSatisfy { l in
            let u = Array(l.utf16)
            return u.count > col && u[col - 1] == 32 && u[col - 2] == 32 && u[col] != 32
        }, "the columns line up: \(lines)")
        #expect(lines.dropFirst().allSatisfy { $0.contains("just now") || $0.contains("s ago") }, "ages: \(lines)")
        let two = try Binary.cairn("ls", "--status", "waiting", "--status", "failed", spool: t.spool)
        #expect(two.stdout.contains(a) && two.stdout.contains(f) && !two.stdout.contains(q), "\(two.stdout)")
        let newest = try Binary.cairn("ls", "--limit", "1", spool: t.spool)
        #expect(newest.stdout.split(separator: "\n").count == 1, "\(newest.stdout)")
        #expect(try Binary.cairn("ls", "--since", "1h", spool: t.spool).stdout.split(separator: "\n").count == 3)
        let wide = try Binary.cairn("ls", "-o", "wide", spool: t.spool)
        #expect(wide.stdout.hasPrefix("RUN") && wide.stdout.contains("TOKENS") && wide.stdout.contains("SUBMITTED"), "\(wide.stdout)")
        let json = try JSONValue.parse(try Binary.cairn("ls", "-o", "json", spool: t.spool).stdout)
        #expect(json.arrayValue?.count == 3)
    }

    /// Issue 20: help at 80 columns (what a pipe gets) broke hand-wrapped paragraphs twice,
    /// leaving single words on lines of their own ("for", "cancelled"). No line but USAGE
    /// may be over 80 columns, and no line of a paragraph may be one word.
    @Test func helpReadsWellAt80Columns() async throws {
        for cmd in ["", "submit", "ls", "show", "why", "wait", "approve", "signal", "fsck", "gc", "daemon", "doctor", "advance", "demo", "bench", "step", "approval", "llm", "result"] {
            let r = try Binary.run("cairn", cmd.isEmpty ? ["--help"] : [cmd, "--help"], env: ["COLUMNS": "80"])
            let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            for (i, l) in lines.enumerated() where !l.hasPrefix("USAGE") && !(i > 0 && lines[i - 1].hasPrefix("USAGE")) {
                #expect(l.count <= 80, "cairn \(cmd) --help: a line of \(l.count) columns: \(l)")
                // A lone word in the middle of a paragraph (the text goes on after it), or
                // the tail of an example (an indented line) wrapped onto its own line.
                let lone = !l.isEmpty && !l.hasPrefix(" ") && !l.contains(" ") && i > 0 && !lines[i - 1].isEmpty && !l.hasSuffix(":")
                let next = i + 1 < lines.count ? lines[i + 1] : ""
                let orphan = lone && ((!next.isEmpty && !next.hasPrefix(" ")) || lines[i - 1].hasPrefix("  "))
                #expect(!orphan, "cairn \(cmd) --help: a word alone on its line: '\(l)' after '\(lines[i - 1])'")
            }
        }
    }

    /// Issue 20: `cairn status` says whether a daemon serves the spool (pid, since,
    /// concurrency), runs by status and the oldest wait for a person; why and approve warn
    /// when no daemon serves it; a daemon killed -9 shows as dead until the next one starts.
    @Test func statusTellsWhetherADaemonServesTheSpool() async throws {
        let t = try TempSpool()
        let r = try t.submit("demo-refund", input: ["order": "A", "amount": 1, "reason": "x"] as JSONValue)
        _ = try Binary.cairn("advance", r, spool: t.spool)
        let none = try Binary.cairn("status", spool: t.spool)
        #expect(none.code == 1 && none.stdout.contains("daemon   none") && none.stdout.contains("1 waiting"), "\(none.stdout)")
        #expect(none.stdout.contains("oldest wait for a person: \(r) approval:issue-refund"), "\(none.stdout)")
        let approve = try Binary.cairn("approve", r, "issue-refund", "--early", spool: t.spool)
        #expect(approve.stderr.contains("no daemon serves"), "\(approve.stderr)")

        var d = try await DaemonProcess(spool: t.spool, args: ["--concurrency", "3"])
        try await t.waitFor(r, .completed, timeout: 15)
        let serving = try Binary.cairn("status", "--json", spool: t.spool)
        #expect(serving.code == 0, "\(serving.stdout) \(serving.stderr)")
        let daemons = try JSONValue.parse(serving.stdout)["daemons"]?.arrayValue ?? []
        #expect(daemons.count == 1 && daemons.first?["pid"] == .int(Int64(d.pid)) && daemons.first?["alive"] == true && daemons.first?["concurrency"] == 3, "\(daemons)")
        let announcement = t.spool.root.appending("daemons/\(d.pid).json").string
        await d.kill9()
        // Anyone who may read the announcement can hold a shared lock on it (an attack did, to
        // make a dead daemon look alive): the lock counts only with the process there. And a
        // FIFO or a directory in daemons/ neither blocks status nor passes for a daemon.
        let forger = open(announcement, O_RDONLY)
        #expect(forger >= 0 && flock(forger, LOCK_SH | LOCK_NB) == 0)
        defer { close(forger) }
        #expect(mkfifo(t.spool.root.appending("daemons/333.json").string, 0o600) == 0)
        #expect(mkdir(t.spool.root.appending("daemons/555.json").string, 0o700) == 0)
        let dead = try Binary.cairn("status", spool: t.spool)
        #expect(dead.code == 1 && dead.stdout.contains("dead") && !dead.stdout.contains("333") && !dead.stdout.contains("555"), "\(dead.stdout)")
        d = try await DaemonProcess(spool: t.spool)
        let again = try JSONValue.parse(try Binary.cairn("status", "--json", spool: t.spool).stdout)["daemons"]?.arrayValue ?? []
        #expect(again.count == 1 && again.first?["pid"] == .int(Int64(d.pid)), "the dead daemon's announcement is gone: \(again)")
        await d.stop()
        #expect((try JSONValue.parse(try Binary.cairn("status", "--json", spool: t.spool).stdout)["daemons"]?.arrayValue ?? [1]).isEmpty, "a daemon that stops withdraws")
    }

    @Test func helpHasExamples() async throws {
        for cmd in ["submit", "ls", "show", "why", "wait", "approve", "reject", "signal", "cancel", "fsck", "gc", "daemon", "demo", "step", "approval", "llm"] {
            let r = try Binary.run("cairn", [cmd, "--help"])
            #expect(r.code == 0, "\(cmd)")
            #expect(r.stdout.contains("Example"), "cairn \(cmd) --help has no examples")
            #expect(r.stdout.contains("--spool") || ["step", "approval", "llm"].contains(cmd), "cairn \(cmd) --help has no --spool")
        }
        let root = try Binary.run("cairn", ["--help"])
        #expect(root.stdout.hasPrefix("OVERVIEW: Durable execution for AI agents on a plain directory."))
    }

    /// docs/cli.md: `cairn --help` groups the commands; a bad option value is refused by the
    /// parser (exit 2) with a message naming the option (and, for a list, its values).
    @Test func groupedHelpAndTypedOptionValues() async throws {
        let root = try Binary.run("cairn", ["--help"])
        for group in ["RUN SUBCOMMANDS:", "DECISION AND EVENT SUBCOMMANDS:", "CONTROL SUBCOMMANDS:", "SPOOL SUBCOMMANDS:", "SCRIPT HELPER SUBCOMMANDS:"] {
            #expect(root.stdout.contains(group), "cairn --help has no \(group)\n\(root.stdout)")
        }
        #expect(!root.stdout.contains("__supervise"))
        let t = try TempSpool()
        let refusals: [([String], [String])] = [
            (["wait", "r1", "--timeout", "soon"], ["'soon'", "--timeout"]),
            (["wait", "r1", "--for", "done"], ["'done'", "--for", "'terminal'"]),
            (["wait", "r1", "--rescan-interval", "0s"], ["--rescan-interval"]),
            (["gc", "--older-than", "7"], ["'7'", "--older-than"]),
            (["advance", "r1", "--max-sleep", "1x"], ["'1x'", "--max-sleep"]),
            (["daemon", "--shutdown-grace", "1.5"], ["'1.5'", "--shutdown-grace"]),
            (["daemon", "--log-format", "xml"], ["'xml'", "--log-format", "'json'"]),
            (["daemon", "--log-level", "loud"], ["'loud'", "--log-level", "- critical"]),
        ]
        for (args, words) in refusals {
            let r = try Binary.run("cairn", args + ["--spool", t.spool.root.string])
            #expect(r.code == 2, "\(args): \(r.code) \(r.stderr)")
            for w in words { #expect(r.stderr.contains(w), "\(args): \(r.stderr)") }
        }
        let sleep = try Binary.run("cairn", ["sleep", "forever"])
        #expect(sleep.code == 2 && sleep.stderr.contains("'forever'"), "\(sleep.stderr)")
        // The accepted syntax is unchanged: decimals, milliseconds, days.
        let gc = try Binary.cairn("gc", "--older-than", "1.5d", "--dry-run", spool: t.spool)
        #expect(gc.code == 0, "\(gc.stderr)")
        let w = try Binary.cairn("wait", "no-such", "--timeout", "250ms", "--rescan-interval", "0.5s", spool: t.spool)
        #expect(w.code == 3, "\(w.stderr)")
    }

    @Test func submitLsShowWhyGolden() async throws {
        let t = try TempSpool()
        let sub = try Binary.cairn("submit", "gate", "--id", "golden-1", "--input", "-", spool: t.spool, stdin: #"{"who": "g"}"#)
        #expect(sub.code == 0 && sub.stdout == "golden-1\n")
        // No daemon for `gate` in the stock binary: advance with the fixtures binary.
        let adv = try Binary.run("cairn-fixtures", ["advance", "golden-1", "--spool", t.spool.root.string])
        #expect(adv.stdout == "golden-1  waiting  approval:go\n", "\(adv.stdout)\(adv.stderr)")
        let ls = try Binary.cairn("ls", "--json", spool: t.spool)
        let rows = try JSONValue.parse(ls.stdout)
        #expect(rows.arrayValue?.count == 1)
        #expect(rows.arrayValue?[0]["run"] == "golden-1" && rows.arrayValue?[0]["status"] == "waiting")
        #expect(rows.arrayValue?[0]["waiting_for"] == ["kind": "approval", "gate": "go", "drop": "approvals/go.approved", "reject": "approvals/go.rejected"])
        let plain = try Binary.cairn("ls", "--status", "waiting", spool: t.spool)
        #expect(plain.stdout.hasPrefix("golden-1  waiting  gate  "))
        #expect(plain.stdout.hasSuffix("  approval:go\n"))
        let why = try Binary.cairn("why", "golden-1", spool: t.spool)
        let dir = t.spool.run("golden-1").directory.string
        #expect(why.stdout == """
            golden-1: waiting for approval 'go'
              request: Go?
              approve: touch \(dir)/approvals/go.approved
                   or: cairn approve golden-1 go --spool \(t.spool.root.string)
               reject: touch \(dir)/approvals/go.rejected
                   or: cairn reject golden-1 go --spool \(t.spool.root.string)
              (approve takes --comment C and --value FILE; reject takes --reason R)
              no daemon serves \(t.spool.root.string) now (cairn status): what you drop is taken when one starts (cairn daemon --spool \(t.spool.root.string)) or with cairn advance golden-1 --spool \(t.spool.root.string)

            """)
        let show = try Binary.cairn("show", "golden-1", spool: t.spool)
        let lines = show.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines[0] == "run golden-1")
        #expect(lines.contains { $0.hasPrefix("  workflow   gate (version 1)") })
        #expect(lines.contains { $0.contains("  1  ") && $0.hasSuffix("start                         version 1") })
        #expect(lines.contains { $0.contains("step prepare") && $0.contains("ok  attempt 1") })
        #expect(lines.contains { $0.contains("approval go") && $0.hasSuffix("requested") })
        #expect(show.stdout.contains("waiting for approval 'go'"))
    }

    @Test func uncertainStepRecordedDoneThroughCairnApprove() async throws {
        let t = try TempSpool()
        let effects = t.path.appending("fx").string
        let r = try t.submit("crashy", input: ["steps": 2, "effects": .string(effects)] as JSONValue)
        // Kill right after the payment's side effect, before its record.
        let killed = try Binary.run("cairn-fixtures", ["advance", r, "--spool", t.spool.root.string], env: ["CAIRN_CRASH_AT": "step.after-body:4"])
        #expect(killed.signal == SIGKILL)
        _ = try Binary.run("cairn-fixtures", ["advance", r, "--spool", t.spool.root.string])
        #expect(try t.state(r).waitingFor?["kind"] == "uncertain")
        let v = t.path.appending("v.json").string
        try #"{"action": "done", "value": true}"#.write(toFile: v, atomically: true, encoding: .utf8)
        let ok = try Binary.cairn("approve", r, "uncertain-pay", "--value", v, spool: t.spool)
        #expect(ok.code == 0, "\(ok.stderr)")
        let done = try Binary.run("cairn-fixtures", ["advance", r, "--spool", t.spool.root.string])
        #expect(done.stdout.contains("completed"), "\(done.stdout)\(done.stderr)")
        let pays = ((try? String(contentsOfFile: effects, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("pay ") }
        #expect(pays.count == 1, "the at-most-once step ran \(pays.count) times")
    }
}
