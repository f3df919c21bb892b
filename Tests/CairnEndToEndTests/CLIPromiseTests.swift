import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// docs/cli.md's promises about exit codes and refusals that no test checked (issue 19).
@Suite struct CLIPromiseTests {
    func advance(_ t: TempSpool, _ r: String) throws -> Binary.Result {
        try Binary.run("cairn-fixtures", ["advance", r, "--spool", t.spool.root.string])
    }

    /// "The same --id or --idempotency-key submitted twice yields one run: the second call
    /// prints the first run's id (and a warning on stderr) and exits 0."
    @Test func submittingTheSameIdOrKeyTwiceYieldsOneRunAndAWarning() async throws {
        let t = try TempSpool()
        // A workflow the stock binary knows (else submit warns about that).
        let script = t.spool.workflowsDirectory.appending("nap").string
        try "#!/bin/sh\nexit 0\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let first = try Binary.cairn("submit", "nap", "--id", "twice", "--input", "-", spool: t.spool, stdin: "0.01")
        #expect(first.code == 0 && first.stdout == "twice\n" && first.stderr.isEmpty, "\(first.stderr)")
        let second = try Binary.cairn("submit", "nap", "--id", "twice", "--input", "-", spool: t.spool, stdin: "0.02")
        #expect(second.code == 0 && second.stdout == "twice\n", "\(second.stdout)\(second.stderr)")
        #expect(second.stderr.hasPrefix("cairn: "), "no warning: \(second.stderr)")
        #expect(try t.spool.readRun("twice").input == 0.01, "the second submission changed the run")

        let k1 = try Binary.cairn("submit", "nap", "--idempotency-key", "order-1", "--input", "-", spool: t.spool, stdin: "0.01")
        let k2 = try Binary.cairn("submit", "nap", "--idempotency-key", "order-1", "--input", "-", spool: t.spool, stdin: "0.01")
        #expect(k1.code == 0 && k2.code == 0 && k1.stdout == k2.stdout && !k1.stdout.isEmpty, "\(k1.stdout) \(k2.stdout)")
        #expect(k1.stderr.isEmpty && k2.stderr.hasPrefix("cairn: "), "no warning: \(k2.stderr)")
        #expect(try t.spool.runIDs().count == 2)
    }

    /// approve/reject: exit 1 when the gate already has a decision file. cancel and pause
    /// refuse finished runs, retry anything but a failed run, resume a run without pause.
    @Test func decisionAndControlCommandsRefuseWhatTheDocsSay() async throws {
        let t = try TempSpool()
        let r = try t.submit("gate", input: ["who": "x"] as JSONValue)
        #expect(try advance(t, r).stdout.contains("waiting"))
        #expect(try Binary.cairn("resume", r, spool: t.spool).code == 1, "resume without pause")
        #expect(try Binary.cairn("retry", r, spool: t.spool).code == 1, "retry of a waiting run")
        #expect(try Binary.cairn("pause", r, spool: t.spool).code == 0)
        #expect(DurableFile.exists(t.spool.run(r).pauseFile))
        #expect(try Binary.cairn("resume", r, spool: t.spool).code == 0)
        #expect(!DurableFile.exists(t.spool.run(r).pauseFile))

        #expect(try Binary.cairn("approve", r, "go", spool: t.spool).code == 0)
        let twice = try Binary.cairn("approve", r, "go", spool: t.spool)
        #expect(twice.code == 1 && twice.stderr.contains("already exists"), "\(twice.stderr)")
        let other = try Binary.cairn("reject", r, "go", spool: t.spool)
        #expect(other.code == 1 && other.stderr.contains("another decision"), "\(other.stderr)")
        #expect(try advance(t, r).stdout.contains("completed"))
        for cmd in ["cancel", "pause", "retry"] {
            let refused = try Binary.cairn(cmd, r, spool: t.spool)
            #expect(refused.code == 1, "\(cmd) of a completed run: \(refused.code) \(refused.stderr)")
        }
        #expect(!DurableFile.exists(t.spool.run(r).cancelFile) && !DurableFile.exists(t.spool.run(r).pauseFile))

        let f = try t.submit("nap", input: "not a number")
        _ = try advance(t, f)
        #expect(t.status(f) == .failed)
        #expect(try Binary.cairn("retry", f, spool: t.spool).code == 0)
        #expect(DurableFile.exists(t.spool.run(f).retryFile))
    }

    /// The `wait --for` table: terminal (default) exits 0 on any terminal status,
    /// completed exits 1 on failed, waiting exits 0 on waiting and 1 on a terminal status.
    /// A duration too large for any clock (an outside attack: `1e308h`, `99999999999999999999d`,
    /// `1e18s`) trapped converting to Int64 — every command, and a running daemon reading
    /// cairn.json on a submission, died of SIGILL. Now it is refused like any bad duration:
    /// exit 2 from an option, a named configuration error from cairn.json, and the daemon lives.
    @Test func aDurationTooLargeIsRefusedNotATrap() async throws {
        let t = try TempSpool()
        let root = t.spool.root.string
        for bad in ["1e308h", "99999999999999999999d", "1e18s", "0x10s", "+5s", "1e3s", "5.s", "inf s", "nans"] {
            let r = try Binary.run("cairn", ["wait", "nope", "--timeout", bad, "--spool", root])
            #expect(r.code == 2, "--timeout \(bad): \(r.code) \(r.stderr.prefix(300))")
        }
        // Its neighbour: a rescan interval of zero was a busy loop (95,140 scans in 3 s).
        // (Under `timeout`: a daemon that accepts it runs until killed, and logs to a file.)
        for bad in ["0s", "1e-9ms", "5ms"] {
            let err = t.path.appending("daemon-\(bad).err").string
            let r = Binary.runShell("timeout -s KILL 5 '\(Binary.path("cairn"))' daemon --rescan-interval \(bad) --spool '\(root)' > /dev/null 2> '\(err)'")
            let stderr = (try? String(contentsOfFile: err, encoding: .utf8)) ?? ""
            #expect(r.code == 2 && stderr.contains("rescan-interval"), "daemon --rescan-interval \(bad): \(r.code) \(stderr.prefix(300))")
        }
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["script_timeout"] = ["*": "1e308h"]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        let ls = try Binary.run("cairn", ["ls", "--spool", root])
        #expect(ls.code == 1 && ls.stderr.contains("script_timeout"), "ls under a cairn.json with 1e308h: \(ls.code) \(ls.stderr.prefix(300))")
        try DurableFile.drop(Data(#"{"workflow": "gate", "input": {}}"#.utf8), to: t.spool.root.appending("inbox/x1.json"))
        try await waitUntil("the daemon reports the setting") { d.log.contains("script_timeout") }
        #expect(d.process.isRunning, "the daemon died: \(d.log.suffix(800))")
    }

    /// cli.md: "Without it, every directory in runs/ is read." A run whose state.json is
    /// garbage, missing or unreadable was left out of `ls` without a word (exit 0; an outside
    /// attack listed 13 of 16 runs), and `show` printed no status line. Now `ls` lists it as
    /// `unknown`, says why on stderr and exits 1; `show` says the state is missing.
    @Test func lsAndShowSayWhatTheyCannotRead() async throws {
        let t = try TempSpool()
        let root = t.spool.root.string
        let ids = try (0..<3).map { try t.submit("gate", input: JSONValue.null, id: "r\($0)") }
        try "garbage".write(toFile: t.spool.run(ids[0]).stateFile.string, atomically: true, encoding: .utf8)
        #expect(unlink(t.spool.run(ids[1]).stateFile.string) == 0)
        let ls = try Binary.run("cairn", ["ls", "--spool", root])
        #expect(ls.code == 1, "\(ls.code) \(ls.stdout) \(ls.stderr)")
        for id in ids { #expect(ls.stdout.contains(id), "\(id) missing from: \(ls.stdout)") }
        #expect(ls.stderr.contains("runs/r0/state.json") && ls.stderr.contains("runs/r1/state.json"), "\(ls.stderr)")
        let json = try Binary.run("cairn", ["ls", "--json", "--spool", root])
        let listed = try JSONValue.parse(json.stdout).arrayValue?.count
        #expect(json.code == 1 && listed == 3, "\(json.stdout)")
        let show = try Binary.run("cairn", ["show", ids[1], "--spool", root])
        #expect(show.stdout.contains("state.json") && show.stdout.contains("fsck --repair"), "\(show.stdout)")
    }

    @Test func waitExitCodesFollowTheTable() async throws {
        let t = try TempSpool()
        let done = try t.submit("nap", input: 0.01)
        let failed = try t.submit("nap", input: "not a number")
        let waiting = try t.submit("gate", input: ["who": "w"] as JSONValue)
        for r in [done, failed, waiting] { _ = try advance(t, r) }
        func wait(_ r: String, _ extra: String...) throws -> Binary.Result {
            try Binary.run("cairn", ["wait", r, "--timeout", "5s"] + extra + ["--spool", t.spool.root.string])
        }
        let d = try wait(done)
        #expect(d.code == 0 && d.stdout == "\(done)  completed\n", "\(d.stdout)")
        #expect(try wait(done, "--for", "waiting").code == 1)
        #expect(try wait(failed).code == 0)
        #expect(try wait(failed, "--for", "completed").code == 1)
        let w = try wait(waiting, "--for", "waiting")
        #expect(w.code == 0 && w.stdout == "\(waiting)  waiting\n", "\(w.stdout)")
        let j = try wait(done, "--json")
        #expect(try JSONValue.parse(j.stdout)["status"] == "completed")
    }

    /// operations.md: `--log-format json` writes one object per line with `at`, `level`,
    /// `message`, `label`, and the metadata as strings.
    @Test func jsonLogsAreOneObjectPerLine() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool, args: ["--log-format", "json"])
        let r = try t.submit("nap", input: 0.01)
        try await t.waitFor(r, .completed)
        #expect(await d.stop() == 0)
        let logLines = d.log.split(separator: "\n").map(String.init)
        #expect(logLines.count >= 3)
        for line in logLines {
            guard let o = (try? JSONValue.parse(line))?.objectValue else {
                Issue.record("not a JSON object: \(line)")
                continue
            }
            for k in ["at", "level", "message", "label"] { #expect(o[k]?.stringValue != nil, "\(k) missing in \(line)") }
            // Text as strings, numbers as numbers (issue 20: pid, ms and counts were quoted).
            #expect(o.values.allSatisfy { $0.stringValue != nil || $0.intValue != nil || $0.doubleValue != nil }, "a value that is neither text nor a number: \(line)")
            if let pid = o["pid"] { #expect(pid.intValue != nil, "pid is a number: \(line)") }
        }
        #expect(logLines.contains { $0.contains(#""message":"daemon stopped""#) })
    }
}
