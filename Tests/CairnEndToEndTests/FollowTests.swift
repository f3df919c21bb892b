import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Issue 20: following work as it happens — `cairn logs -f`, `cairn show --follow`,
/// `cairn ls --watch` — against a real daemon, and shell completion in a real bash.
@Suite(.serialized) struct FollowTests {
    /// A script that prints, waits for the event `go`, and prints again.
    static func chattySpool() throws -> TempSpool {
        let t = try TempSpool(prefix: "cairn-follow")
        let p = t.spool.workflowsDirectory.appending("chatty").string
        try "#!/bin/sh\necho \"line 1\"\necho \"thinking\" >&2\ncairn event go >/dev/null\necho \"line 2\"\n".write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
        return t
    }

    static func stillRunning(_ p: Process, for seconds: Double) async throws -> Bool {
        try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
        return p.isRunning
    }

    @Test func logsAndShowFollowARunUntilItEnds() async throws {
        let t = try Self.chattySpool()
        let daemon = try await DaemonProcess(spool: t.spool)
        defer { daemon.stopBlocking() }
        let run = try Binary.cairn("submit", "chatty", spool: t.spool).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        // show --follow from before the run has done anything.
        let show = try Binary.start("cairn", ["show", run, "--follow", "--spool", t.spool.root.string])
        try await t.waitFor(run, .waiting)
        let logs = try Binary.start("cairn", ["logs", run, "-f", "--spool", t.spool.root.string])
        let logsOne = try Binary.start("cairn", ["logs", run, "stdout", "--follow", "--spool", t.spool.root.string])
        #expect(try await Self.stillRunning(logs.0, for: 0.5), "logs -f ends only with the run")
        #expect(show.0.isRunning && logsOne.0.isRunning)
        #expect(try Binary.cairn("signal", run, "go", spool: t.spool).code == 0)
        try await t.waitFor(run, .completed)
        let l = await Binary.finish(logs)
        let one = await Binary.finish(logsOne)
        let s = await Binary.finish(show)
        #expect(l.code == 0 && one.code == 0 && s.code == 0, "\(l.stderr)\(one.stderr)\(s.stderr)")
        // Both parts, headed as tail heads several files; the second execution's output too.
        #expect(l.stdout.contains("==> stdout <==") && l.stdout.contains("==> stderr <==") && l.stdout.contains("line 2") && l.stdout.contains("thinking"), "\(l.stdout)")
        #expect(one.stdout.hasSuffix("line 2\n") && !one.stdout.contains("==>") && !one.stdout.contains("thinking"), "\(one.stdout)")
        // Each record once, in order, the wait announced, and the end.
        let lines = s.stdout.split(separator: "\n").map(String.init)
        let positions = lines.compactMap { l -> Int? in
            let f = l.split(separator: " ", omittingEmptySubsequences: true)
            return f.count > 2 && f[1].contains("T") ? Int(f[0]) : nil
        }
        let journal = try t.spool.journal(run).load()
        #expect(positions == journal.map(\.seq), "every record once, in order: \(positions) vs \(journal.map(\.seq))\n\(s.stdout)")
        #expect(s.stdout.contains("… waiting for event:go"), "\(s.stdout)")
        #expect(lines.last == "result: null", "\(s.stdout)")
        // A log the run does not have: exit 3, naming those it has; a finished run's -f returns.
        let missing = try Binary.cairn("logs", run, "draft", spool: t.spool)
        #expect(missing.code == 3 && missing.stderr.contains("it has stdout, stderr"), "\(missing.stderr)")
        let after = try Binary.run("/usr/bin/timeout", ["20", Binary.path("cairn"), "logs", run, "-f", "--spool", t.spool.root.string])
        #expect(after.code == 0 && after.stdout.contains("line 2"), "at once, for a finished run: \(after.stdout)")
    }

    @Test func lsWatchPrintsEachChangeOnce() async throws {
        let t = try Self.chattySpool()
        let daemon = try await DaemonProcess(spool: t.spool)
        defer { daemon.stopBlocking() }
        let old = try Binary.cairn("submit", "chatty", spool: t.spool).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try await t.waitFor(old, .waiting)
        let json = try Binary.start("cairn", ["ls", "--watch", "--json", "--spool", t.spool.root.string])
        let plain = try Binary.start("cairn", ["ls", "-w", "--status", "completed", "--spool", t.spool.root.string])
        try await Task.sleep(for: .milliseconds(500))
        let run = try Binary.cairn("submit", "chatty", spool: t.spool).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try await t.waitFor(run, .waiting)
        #expect(try Binary.cairn("signal", run, "go", spool: t.spool).code == 0)
        try await t.waitFor(run, .completed)
        try await Task.sleep(for: .milliseconds(700))
        #expect(json.0.isRunning && plain.0.isRunning, "--watch goes on until stopped")
        json.0.terminate()
        plain.0.terminate()
        let j = await Binary.finish(json)
        let p = await Binary.finish(plain)
        let rows = j.stdout.split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
        #expect(rows.count == j.stdout.split(separator: "\n").count, "one JSON object a line: \(j.stdout)")
        #expect(rows.first?["run"]?.stringValue == old && rows.first?["status"] == "waiting", "the list first: \(j.stdout)")
        let mine = rows.filter { $0["run"]?.stringValue == run }.compactMap { $0["status"]?.stringValue }
        #expect(mine.last == "completed" && mine.contains("waiting"), "\(mine)")
        #expect(zip(mine, mine.dropFirst()).allSatisfy { $0 != $1 } || mine.count < 2, "a change once: \(mine)")
        #expect(!rows.dropFirst().contains { $0["run"]?.stringValue == old }, "a run that did not change is not printed again")
        // --status completed: nothing listed at first, then the run once it completed.
        let plainLines = p.stdout.split(separator: "\n").map(String.init)
        #expect(plainLines.count == 1 && plainLines[0].hasPrefix("\(run)  completed  chatty  "), "\(p.stdout)")
    }

    /// TAB in a real bash, through the script argument-parser generates: run ids, the
    /// gate a run waits at, statuses, logs.
    @Test func completionOffersRunsGatesAndStatuses() async throws {
        let t = try TempSpool()
        let run = try Binary.cairn("submit", "demo-refund", "--input", "-", spool: t.spool, stdin: #"{"order": "A", "amount": 1, "reason": "x"}"#).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        _ = try Binary.cairn("advance", run, spool: t.spool)
        let script = t.path.appending("cairn.bash").string
        let gen = try Binary.run("cairn", ["--generate-completion-script", "bash"])
        try gen.stdout.write(toFile: script, atomically: true, encoding: .utf8)
        func complete(_ line: String) throws -> [String] {
            // COMP_* as bash sets them when TAB is pressed at the end of `line`.
            let words = line.split(separator: " ", omittingEmptySubsequences: false).map { "'\($0)'" }.joined(separator: " ")
            let bash = """
                source \(script)
                COMP_LINE='\(line)'; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(\(words)); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
                _cairn cairn "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
                printf '%s\\n' "${COMPREPLY[@]}"
                """
            let r = try Binary.run("/bin/bash", ["-c", bash], env: ["PATH": Binary.directory + ":/usr/bin:/bin", "CAIRN_SPOOL": t.spool.root.string])
            return r.stdout.split(separator: "\n").map(String.init)
        }
        #expect(try complete("cairn approve ").contains(run))
        #expect(try complete("cairn approve \(run) ") == ["issue-refund"])
        #expect(try complete("cairn why \(String(run.prefix(8)))") == [run])
        #expect(try complete("cairn ls --status wa") == ["waiting"])
        #expect(try complete("cairn logs \(run) std").sorted() == ["stderr", "stdout"])
        #expect(try complete("cairn submit demo-").contains("demo-refund"))
        // Another spool named on the line: its runs, not $CAIRN_SPOOL's.
        let other = try TempSpool()
        #expect(try complete("cairn show --spool \(other.spool.root.string) ").isEmpty)
    }
}

/// Issue 20: `show` and `logs` page on a terminal (as git does), never when piped.
@Suite struct PagerTests {
    @Test func showPagesOnATerminalOnly() async throws {
        let t = try TempSpool()
        let run = try Binary.cairn("submit", "demo-refund", "--input", "-", spool: t.spool, stdin: #"{"order": "A", "amount": 1, "reason": "x"}"#).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        _ = try Binary.cairn("advance", run, spool: t.spool)
        let cairn = Binary.path("cairn")
        func tty(_ args: String, pager: String) throws -> String {
            let r = try Binary.run("/usr/bin/script", ["-qec", "\(cairn) \(args) --spool \(t.spool.root.string)", "/dev/null"], env: ["CAIRN_PAGER": pager, "NO_COLOR": "1"])
            #expect(r.code == 0, "\(r.stdout)\(r.stderr)")
            return r.stdout.replacingOccurrences(of: "\r", with: "")
        }
        // A pager that marks every line: each line of show went through it.
        let paged = try tty("show \(run)", pager: "sed 's/^/PAGED /'")
        let lines = paged.split(separator: "\n")
        #expect(lines.count > 5 && lines.allSatisfy { $0.hasPrefix("PAGED ") }, "\(paged)")
        #expect(!(try tty("show \(run) --no-pager", pager: "sed 's/^/PAGED /'")).contains("PAGED"))
        #expect(!(try tty("show \(run)", pager: "cat")).contains("PAGED"))
        #expect(!(try tty("why \(run)", pager: "sed 's/^/PAGED /'")).contains("PAGED"), "why is short: never paged")
        // Piped: never.
        let piped = try Binary.run("cairn", ["show", run, "--spool", t.spool.root.string], env: ["CAIRN_PAGER": "sed 's/^/PAGED /'"])
        #expect(piped.code == 0 && !piped.stdout.contains("PAGED"))
        // A pager that quits at once (q in less): show still exits 0 and says nothing.
        let quit = try Binary.run("/usr/bin/script", ["-qec", "\(cairn) show \(run) --spool \(t.spool.root.string)", "/dev/null"], env: ["CAIRN_PAGER": "true"])
        #expect(quit.code == 0 && !quit.stdout.contains("rror"), "\(quit.stdout)")
    }
}

/// Issue 20: the daemon's log writes times as the CLI does (UTC, milliseconds, `Z`).
@Suite struct DaemonLogFormatTests {
    @Test func humanLogLinesStartWithTheCLIsTimeFormat() async throws {
        let t = try TempSpool()
        let daemon = try await DaemonProcess(spool: t.spool)
        _ = await daemon.stop()
        let lines = daemon.log.split(separator: "\n").map(String.init)
        #expect(lines.count >= 3, "\(daemon.log)")
        for l in lines {
            let time = String(l.prefix(24))
            #expect(Timestamp.parse(time) != nil && time.hasSuffix("Z") && l.dropFirst(24).hasPrefix(" "), "\(l)")
        }
        #expect(lines.contains { $0.contains(" scanned spool ") && $0.contains("reason=start") }, "\(daemon.log)")
    }
}

/// Issue 20 (found trying the CLI): `cairn why` offers "cancel the run" for a run whose
/// workflow is not installed, and the cancel was ignored — the run stayed queued through
/// restarts. A run that never started ends cancelled at once; one that started waits for
/// its workflow (its compensations are in its code), and says so.
@Suite struct UnknownWorkflowCancelTests {
    @Test func aRunThatNeverStartedIsCancelledWithoutItsWorkflow() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        let r = try Binary.cairn("submit", "not-installed", "--id", "nowf-1", spool: t.spool)
        #expect(r.code == 0)
        try await waitUntil("the unknown workflow noted") { (try? t.state("nowf-1").error?.type) == "unknown_workflow" }
        #expect(try t.state("nowf-1").error?.message.contains("it ends cancelled at once") == true)
        #expect(try Binary.cairn("cancel", "nowf-1", spool: t.spool).code == 0)
        try await t.waitFor("nowf-1", .cancelled)
        #expect(try t.journalSummary("nowf-1") == ["start", "cancel"])
        // fsck agrees with what was written.
        let fsck = try Binary.cairn("fsck", spool: t.spool)
        #expect(fsck.code == 0, "\(fsck.stdout)\(fsck.stderr)")
        // Without a daemon too: advance does the same.
        _ = try Binary.cairn("submit", "not-installed", "--id", "nowf-2", spool: t.spool)
        try await waitUntil("the unknown workflow noted") { (try? t.state("nowf-2").error?.type) == "unknown_workflow" }
        _ = await d.stop()
        #expect(try Binary.cairn("cancel", "nowf-2", spool: t.spool).code == 0)
        let adv = try Binary.cairn("advance", "nowf-2", spool: t.spool)
        #expect(adv.stdout.contains("cancelled"), "\(adv.stdout)\(adv.stderr)")
    }
}

/// Issue 20 (found trying the CLI): what a script prints reaches the terminal escaped —
/// colour codes included, which used to pass as if they were Cairn's own and colour every
/// line after them; bidirectional overrides too. Log names that cannot be a log's are
/// usage errors; a huge log is read a chunk at a time.
@Suite struct LogSafetyTests {
    @Test func scriptOutputCannotColourOrReorderTheTerminal() async throws {
        let t = try TempSpool()
        let p = t.spool.workflowsDirectory.appending("loud").string
        try "#!/bin/sh\nprintf 'start \\033[31m red\\n\\342\\200\\256reversed\\tcol\\n'\nprintf '%3000000s\\n' '' | tr ' ' x\n".write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
        _ = try Binary.cairn("submit", "loud", "--id", "loud-1", spool: t.spool)
        _ = try Binary.cairn("advance", "loud-1", spool: t.spool)
        // In a terminal, where Cairn's own colours are on.
        let tty = try Binary.run("/usr/bin/script", ["-qec", "\(Binary.path("cairn")) logs loud-1 stdout --no-pager --spool \(t.spool.root.string)", "/dev/null"], env: ["NO_COLOR": "", "TERM": "xterm"])
        let out = tty.stdout.replacingOccurrences(of: "\r", with: "")
        let head = String(out.prefix(300))
        #expect(head.contains("start \\u{1b}[31m red"), "\(head)")
        #expect(!out.contains("\u{1B}[31m"), "no raw colour code")
        #expect(head.contains("\\u{202e}reversed\tcol"), "bidi override escaped, tab kept: \(head)")
        let longest = out.split(separator: "\n").map(\.utf8.count).max() ?? 0
        #expect(longest == 3_000_000, "the long line whole: \(longest)")
        // Names that cannot be logs: exit 2; a name the run does not have: exit 3.
        for bad in ["../../cairn.json", "a/b", ".."] {
            #expect(try Binary.cairn("logs", "loud-1", bad, spool: t.spool).code == 2, "\(bad)")
        }
        #expect(try Binary.cairn("logs", "loud-1", "draft", "--follow", spool: t.spool).code == 3, "a finished run will make no new log")
        #expect(try Binary.cairn("logs", "loud-1", "--follow", "--rescan-interval", "1ms", spool: t.spool).code == 2)
    }
}
