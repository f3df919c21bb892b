import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

// The operational promises of README.md, docs/operations.md, docs/cli.md and
// docs/spool-format.md that had no test (issue 19, "Promises in the docs with no test"),
// each tested the way the docs tell an operator to do it.

/// Installs an executable script workflow.
private func installScript(_ t: TempSpool, _ name: String, _ text: String) throws {
    let p = t.spool.workflowsDirectory.appending(name).string
    try text.write(toFile: p, atomically: true, encoding: .utf8)
    chmod(p, 0o755)
}

/// Drops `events/go.json` into a run of `spool` that waits for it (and has none yet).
private func releaseEvent(_ spool: Spool, _ run: String) throws {
    guard (try? spool.readState(run))??.waitingFor?["kind"] == "event" else { return }
    let dir = spool.run(run).directory.appending("events")
    guard !DurableFile.exists(dir.appending("go.json")) else { return }
    try DurableFile.drop(Data("true".utf8), to: dir.appending("go.json"))
}

private func lines(_ path: String) -> [String] {
    ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
}

private func exists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}

/// Processes whose command line contains `token` (pgrep must answer: 0 found, 1 none).
private func processes(matching token: String) throws -> [String] {
    let r = try Binary.run("/usr/bin/pgrep", ["-f", token])
    #expect(r.code == 0 || r.code == 1, "pgrep failed: \(r.code) \(r.stderr)")
    return r.stdout.split(separator: "\n").map(String.init)
}

/// Waits for a daemon process to exit on its own, failing at the deadline.
private func waitForExit(_ d: DaemonProcess, timeout: Double) async throws {
    try await waitUntil("daemon \(d.pid) to exit", timeout: timeout) { !d.process.isRunning }
    d.process.waitUntilExit()
}

private func status(_ s: Spool, _ run: String) -> RunStatus? { (try? s.readState(run))??.status }

/// A person at an uncertain gate who chooses "run it again" (an empty file, renamed in).
private func rerunUncertain(_ s: Spool, _ run: String) throws {
    guard let state = try? s.readState(run), state.status == .waiting, state.waitingFor?["kind"] == "uncertain",
          let gate = state.waitingFor?["gate"]?.stringValue else { return }
    let target = s.run(run).approvalsDirectory.appending("\(gate).approved").string
    guard !exists(target) else { return }
    let tmp = s.root.removingLastComponent().appending("decision-\(UUID().uuidString)").string
    _ = FileManager.default.createFile(atPath: tmp, contents: nil)
    #expect(rename(tmp, target) == 0)
}

/// Step names recorded more than once in the run's effective journal.
private func stepsRecordedTwice(_ s: Spool, _ run: String) throws -> [String] {
    let names = Journal.effective(try s.journal(run).load()).filter { $0.kind == "step" }.compactMap(\.name)
    var seen: Set<String> = []
    return names.filter { !seen.insert($0).inserted }
}

// MARK: - Backup and restore with rsync

@Suite(.serialized) struct BackupRestoreTests {
    static let script = """
        #!/bin/sh
        set -e
        for i in 1 2 3 4; do cairn step add -- sh -c 'sleep 0.05; echo 1' > /dev/null; done
        cairn sleep 100ms
        cairn event go > /dev/null
        out=$(cairn step last -- echo '"tallied"')
        printf '%s' "$out" | cairn result -
        """

    /// README: `rsync -a spool/ backup/` while the daemon runs; restore with
    /// `rsync -a --delete backup/ spool/ && cairn fsck --repair`. operations.md: the same with
    /// a second pass, restore as `rsync -a --delete` then `cairn fsck --repair --spool`.
    /// Each copy is restored into a fresh directory, repaired, and finished by a new daemon:
    /// every run completes with the result the original spool got.
    @Test func aCopyTakenWhileRunsRunIsRestoredRepairedAndFinished() async throws {
        let t = try TempSpool()
        let fx = t.path.appending("fx").string
        try installScript(t, "tally", Self.script)
        let root = t.spool.root.string
        let d = try await DaemonProcess(spool: t.spool)
        var runs: [String] = []
        // Long enough (8 × 250 ms) that a loaded machine's first rsync cannot outlast them all.
        for _ in 0..<5 { runs.append(try t.submit("crashy", input: ["steps": 8, "effects": .string(fx), "delay_ms": 250] as JSONValue)) }
        for _ in 0..<3 { runs.append(try t.submit("tally", input: JSONValue.null)) }
        try await waitUntil("runs under way") { lines(fx).count >= 12 }

        // The copies, taken mid-flight. rsync may report files that vanished while it ran
        // (temp files renamed into place): exit 24, harmless.
        let readmeCopy = t.path.appending("backup").string
        let opsCopy = t.path.appending("backup-ops").string
        var rsyncCodes: [Int32] = []
        // README, from the directory holding spool/: `rsync -a spool/ backup/`.
        // operations.md: `rsync -a SPOOL/ BACKUP/`, twice.
        var unfinishedAtFirstCopy = 0
        for command in ["cd '\(t.path.string)' && rsync -a spool/ backup/", "rsync -a '\(root)/' '\(opsCopy)/'", "rsync -a '\(root)/' '\(opsCopy)/'"] {
            // Counted as the first copy starts: a loaded machine's rsync may outlast the runs.
            if rsyncCodes.isEmpty { unfinishedAtFirstCopy = runs.filter { t.status($0) != .completed }.count }
            let r = Binary.runShell(command)
            #expect(r.code == 0 || r.code == 24, "\(command): \(r.code) \(r.stderr)")
            rsyncCodes.append(r.code)
        }
        #expect(unfinishedAtFirstCopy >= 3, "the tally runs wait for an event until the copies are taken: \(unfinishedAtFirstCopy) unfinished")
        let midFlight = runs.filter { t.status($0) != .completed }.count
        print("backup: rsync exit codes \(rsyncCodes); \(midFlight) of \(runs.count) runs still unfinished after the copies")
        for r in runs.suffix(3) { try t.drop("events/go.json", in: r, content: "true") }

        try await waitUntil("the original spool finishes", timeout: 30) { runs.allSatisfy { t.status($0) == .completed } }
        var expected: [String: JSONValue] = [:]
        for r in runs { expected[r] = try t.result(r) }
        #expect(await d.stop() == 0)

        for (n, copy) in [readmeCopy, opsCopy].enumerated() {
            let base = t.path.appending("restored-\(n)")
            mkdir(base.string, 0o755)
            let fresh = base.appending("spool").string
            // README: `rsync -a --delete backup/ spool/ && cairn fsck --repair` (./spool).
            // operations.md: `rsync -a --delete BACKUP/ SPOOL/`, `cairn fsck --repair --spool SPOOL`.
            let command = n == 0
                ? "cd '\(base.string)' && rsync -a --delete '\(copy)/' spool/ && '\(Binary.path("cairn"))' fsck --repair"
                : "rsync -a --delete '\(copy)/' '\(fresh)/' && '\(Binary.path("cairn"))' fsck --repair --spool '\(fresh)'"
            let repair = Binary.runShell(command)
            #expect(repair.code == 0, "\(command): \(repair.stdout)\(repair.stderr)")
            let check = try Binary.run("cairn", ["fsck", "--spool", fresh])
            #expect(check.code == 0, "fsck after the repair of \(copy): \(check.stdout)\(check.stderr)")

            let restored = try Spool.open(at: FilePath(fresh))
            let unfinished = runs.filter { status(restored, $0) != .completed }
            print("restore \(n): \(unfinished.count) run(s) to finish; repair said: \(repair.stdout.split(separator: "\n").last ?? "")")
            let d2 = try await DaemonProcess(spool: restored, name: "restored")
            try await waitUntil("restored runs finish (\(copy))", timeout: 30) {
                for r in runs { try rerunUncertain(restored, r) }
                for r in runs.suffix(3) { try releaseEvent(restored, r) }
                return runs.allSatisfy { status(restored, $0) == .completed }
            }
            #expect(await d2.stop() == 0)
            for r in runs {
                #expect(try DurableFile.readJSON(restored.run(r).resultFile) == expected[r], "\(r) restored from \(copy) finished differently")
                // The script's "add" repeats in a loop (matched by position): four of them.
                let twice = try stepsRecordedTwice(restored, r)
                #expect(twice.isEmpty || twice == ["add", "add", "add"], "\(r): a step recorded twice after the restore: \(twice)")
            }
            let final = try Binary.run("cairn", ["fsck", "--spool", fresh])
            #expect(final.code == 0, "fsck after finishing the restored runs: \(final.stdout)")
        }
    }
}

// MARK: - SIGTERM with executions and scripts in flight

@Suite(.serialized) struct ShutdownTests {
    /// operations.md: SIGTERM → stop taking work, give running executions the grace period to
    /// reach their next wait, kill what is left (scripts by process group), exit 0;
    /// interrupted operations have no record and run again on the next start.
    @Test func sigtermGivesTheGraceThenInterruptsExitsZeroAndTheNextDaemonResumes() async throws {
        let t = try TempSpool()
        let fx = t.path.appending("fx").string
        let holdA = t.path.appending("hold-a").string   // released during the grace period
        let holdB = t.path.appending("hold-b").string   // held past it
        let holdS = t.path.appending("hold-script").string
        for h in [holdA, holdB, holdS] { _ = FileManager.default.createFile(atPath: h, contents: nil) }
        try installScript(t, "longstep", """
            #!/bin/sh
            cairn step long -- sh -c 'echo "start script" >> \(fx); while [ -e \(holdS) ]; do sleep 0.05; done; echo "end script" >> \(fx); echo ok' > /dev/null
            cairn event go > /dev/null
            echo '"script done"' | cairn result -
            """)
        // Ample for A to record its step and reach its wait even with the whole suite running.
        let grace = 6.0
        let d = try await DaemonProcess(spool: t.spool, args: ["--shutdown-grace", "6s"])
        let a = try t.submit("hold", input: ["effects": .string(fx), "tag": "a", "ms": 60_000, "while_exists": .string(holdA), "then_event": "go"] as JSONValue)
        let b = try t.submit("hold", input: ["effects": .string(fx), "tag": "b", "ms": 60_000, "while_exists": .string(holdB), "then_event": "go"] as JSONValue)
        let s = try t.submit("longstep", input: JSONValue.null)
        try await waitUntil("all three executions in their steps") { Set(lines(fx)).isSuperset(of: ["start a", "start b", "start script"]) }
        #expect(try processes(matching: holdS).count >= 1, "the script's step is not running")

        let sent = Date()
        #expect(kill(d.pid, SIGTERM) == 0)
        // A reaches its next wait within the grace period: released at once, not after the
        // test has seen the shutdown in the log (on a loaded machine that took most of the
        // grace, and A was interrupted with B).
        unlink(holdA)
        try await waitUntil("shutdown begins") { d.log.contains("shutting down") }
        // Stops taking work: a run submitted now waits for the next daemon.
        let late = try t.submit("nap", input: 0.01)
        try await waitForExit(d, timeout: grace + 10)
        let took = Date().timeIntervalSince(sent)
        print("shutdown took \(String(format: "%.2f", took)) s with a grace of \(grace) s")
        #expect(d.process.terminationReason == .exit && d.process.terminationStatus == 0, "exit status \(d.process.terminationStatus)")
        #expect(took >= grace - 0.1, "exited after \(took) s, before the grace period was over")
        #expect(d.log.contains("grace period over"), "\(d.log)")

        // A: its step recorded, waiting for its event.
        #expect(try t.state(a).status == .waiting && t.state(a).waitingFor?["kind"] == "event")
        #expect(try t.journalSummary(a).contains("step:hold"))
        // B and the script: interrupted, nothing recorded for the operation in flight.
        #expect(try !t.journalSummary(b).contains("step:hold"))
        #expect(try !t.journalSummary(s).contains("step:long"))
        #expect(!lines(fx).contains("end b") && !lines(fx).contains("end script"))
        // The script's process group is gone with the daemon.
        #expect(try processes(matching: holdS).isEmpty, "the script's step outlived the shutdown")
        let lateJournal = try t.journalSummary(late)
        #expect(lateJournal.isEmpty, "a run submitted after SIGTERM was started: \(lateJournal)")

        // The next daemon resumes everything.
        unlink(holdB)
        unlink(holdS)
        let d2 = try await DaemonProcess(spool: t.spool, name: "next")
        for r in [b, s] {
            try await waitUntil("\(r) back at its event wait", timeout: 15) { (try? t.state(r).waitingFor?["kind"]) == "event" }
        }
        try await t.waitFor(late, .completed)
        for r in [a, b, s] { try t.drop("events/go.json", in: r, content: "true") }
        for r in [a, b, s] { try await t.waitFor(r, .completed) }
        #expect(try t.result(a) == "a" && t.result(b) == "b" && t.result(s) == "script done")
        let log = lines(fx)
        #expect(log.filter { $0 == "start a" }.count == 1 && log.filter { $0 == "end a" }.count == 1, "\(log)")
        #expect(log.filter { $0 == "start b" }.count == 2, "B's interrupted step ran again: \(log)")
        #expect(log.filter { $0 == "start script" }.count == 2, "the script's interrupted step ran again: \(log)")
        #expect(await d2.stop() == 0)
    }
}

// MARK: - cairn step --retries, --timeout, --at-most-once from a script

@Suite(.serialized) struct ScriptStepOptionTests {
    @Test func retriesTimeoutAndAtMostOnceFromAScript() async throws {
        let t = try TempSpool()
        let fx = t.path.appending("fx").string
        let hold = t.path.appending("hold-pay").string
        _ = FileManager.default.createFile(atPath: hold, contents: nil)
        try installScript(t, "opts", """
            #!/bin/sh
            cairn step flaky --retries 2 -- sh -c 'echo "flaky $CAIRN_STEP_ATTEMPT $CAIRN_IDEMPOTENCY_KEY" >> \(fx); [ "$CAIRN_STEP_ATTEMPT" -ge 2 ] || exit 9; echo fine' > /dev/null
            echo "flaky exit $?" >&2
            cairn step slow --timeout 300ms -- sh -c 'echo "slow $CAIRN_STEP_ATTEMPT" >> \(fx); sleep 5'
            echo "slow exit $?" >&2
            cairn step giveup --retries 1 -- sh -c 'echo "giveup $CAIRN_STEP_ATTEMPT" >> \(fx); exit 7'
            echo "giveup exit $?" >&2
            cairn step pay --at-most-once -- sh -c 'echo "pay $CAIRN_IDEMPOTENCY_KEY" >> \(fx); while [ -e \(hold) ]; do sleep 0.05; done; echo paid'
            echo "pay exit $?" >&2
            echo '"end"' | cairn result -
            """)
        var d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("opts", input: JSONValue.null)
        // --retries: the first attempt's failure is a durable wait, the script stopped.
        // The retry wait lasts about a second: watched from a thread of its own, so a busy
        // cooperative pool (the whole suite running) cannot make the test miss it.
        let spool = t.spool, script = t.spool.workflowsDirectory.appending("opts").string
        let duringRetry = await onOwnThread { () -> [String]? in
            let deadline = Date().addingTimeInterval(30 * testTimeScale)
            while Date() < deadline {
                if (try? spool.readState(r))??.waitingFor?["kind"] == "retry" { return (try? processes(matching: script)) ?? ["pgrep failed"] }
                usleep(2_000)
            }
            return nil
        }
        guard let duringRetry else { throw TimedOut(what: "the retry wait (after \(30 * testTimeScale) s)") }
        #expect(duringRetry.isEmpty, "the script runs during its retry wait")
        // --at-most-once: the daemon dies while the payment runs.
        try await waitUntil("the payment running", timeout: 20) { lines(fx).contains { $0.hasPrefix("pay ") } }
        await d.kill9()
        try await waitUntil("the payment's command killed with its daemon", timeout: 5) { try processes(matching: hold).isEmpty }
        unlink(hold)
        d = try await DaemonProcess(spool: t.spool, name: "second")
        try await waitUntil("the uncertain gate", timeout: 10) { (try? t.state(r).waitingFor?["kind"]) == "uncertain" }
        #expect(try t.state(r).waitingFor?["step"] == "pay")
        usleep(200_000)
        #expect(lines(fx).filter { $0.hasPrefix("pay ") }.count == 1, "the at-most-once step ran again without a person: \(lines(fx))")
        // cli.md: `why` suggests `cairn approve … --value v.json`; a "done" value that does
        // not decode as the step's type is refused with an error file, the gate stays open.
        let why = try Binary.cairn("why", r, spool: t.spool)
        #expect(why.stdout.contains("cairn approve \(r) uncertain-pay --spool \(t.spool.root.string) --value v.json"), "\(why.stdout)")
        let bad = t.path.appending("bad.json").string
        try #"{"action": "done", "value": "paid"}"#.write(toFile: bad, atomically: true, encoding: .utf8)
        #expect(try Binary.cairn("approve", r, "uncertain-pay", "--value", bad, spool: t.spool).code == 0)
        let approvals = t.spool.run(r).approvalsDirectory
        try await waitUntil("the refusal") {
            exists(approvals.appending("uncertain-pay.approved.error.json").string) && !exists(approvals.appending("uncertain-pay.approved").string)
        }
        try await waitUntil("back at the uncertain gate after the refusal") { t.status(r) == .waiting && (try? t.state(r).waitingFor?["kind"]) == "uncertain" }
        #expect(lines(fx).filter { $0.hasPrefix("pay ") }.count == 1)
        // A person checks the outbox: it was paid. Record it as done.
        let v = t.path.appending("v.json").string
        try #"{"action": "done", "value": {"stdout": "paid\n", "exit_code": 0}}"#.write(toFile: v, atomically: true, encoding: .utf8)
        let ok = try Binary.cairn("approve", r, "uncertain-pay", "--value", v, spool: t.spool)
        #expect(ok.code == 0, "\(ok.stderr)")
        try await t.waitFor(r, .completed, timeout: 15)
        await d.stop()
        #expect(try t.result(r) == "end")

        let log = lines(fx)
        let flaky = log.filter { $0.hasPrefix("flaky ") }
        #expect(flaky.count == 2 && flaky[0].hasPrefix("flaky 1 ") && flaky[1].hasPrefix("flaky 2 "), "\(log)")
        #expect(Set(flaky.map { $0.split(separator: " ")[2] }).count == 1, "the idempotency key changed between attempts: \(flaky)")
        #expect(log.filter { $0.hasPrefix("slow ") } == ["slow 1"], "a timed-out step without --retries ran again: \(log)")
        #expect(log.filter { $0.hasPrefix("giveup ") } == ["giveup 1", "giveup 2"], "\(log)")
        #expect(log.filter { $0.hasPrefix("pay ") }.count == 1, "\(log)")

        let stderr = (try? String(contentsOfFile: t.spool.run(r).logsDirectory.appending("stderr.log").string, encoding: .utf8)) ?? ""
        for line in ["flaky exit 0", "slow exit 124", "giveup exit 7", "pay exit 0"] {
            #expect(stderr.contains(line), "stderr.log lacks '\(line)': \(stderr)")
        }
        let journal = Journal.effective(try t.spool.journal(r).load())
        func step(_ name: String) -> JournalEntry? { journal.last { $0.kind == "step" && $0.name == name } }
        #expect(step("flaky")?.attempt == 2 && step("flaky")?.value?["exit_code"] == 0 && step("flaky")?.value?["stdout"] == "fine\n")
        #expect(step("slow")?.error?.type == "timeout", "\(String(describing: step("slow")))")
        #expect(step("giveup")?.attempt == 2 && step("giveup")?.value?["exit_code"] == 7)
        #expect(step("pay")?.decision == "done" && step("pay")?.value == ["stdout": "paid\n", "exit_code": 0], "\(String(describing: step("pay")))")
        #expect(journal.contains { $0.kind == "intent" && $0.name == "pay" })
        #expect(journal.filter { $0.kind == "retry" }.compactMap(\.name) == ["flaky", "giveup"])
    }
}

// MARK: - Compensations after a crash

@Suite(.serialized) struct CompensationCrashTests {
    /// workflows.md: undo actions run in reverse, each recorded, retried in process, "so a
    /// crash during compensation never undoes twice" — what was recorded is not undone
    /// again; the undo in flight at the crash runs again (at least once, like a step).
    @Test func aProcessKilledDuringCompensationNeverUndoesARecordedOneAgain() async throws {
        let t = try TempSpool()
        let fx = t.path.appending("fx").string
        let r = try t.submit("saga", input: ["effects": .string(fx), "crash": true] as JSONValue)
        func counts() -> [String: Int] {
            var c: [String: Int] = [:]
            for l in lines(fx) { c[String(l.split(separator: " ")[0]), default: 0] += 1 }
            return c
        }
        let first = try Binary.run("cairn-fixtures", ["advance", r, "--spool", t.spool.root.string])
        #expect(first.signal == SIGKILL, "the undo did not crash the process: \(first.code) \(first.stderr)")
        #expect(try t.journalSummary(r).suffix(3) == ["step:charge", "compensate:undo-c", "compensate:undo-b"])
        #expect(counts() == ["book-a": 1, "book-b": 1, "book-c": 1, "undo-c": 1, "undo-b": 2, "undo-a": 1])

        let second = try Binary.run("cairn-fixtures", ["advance", r, "--spool", t.spool.root.string])
        #expect(second.code == 1 && second.signal == nil, "\(second.stdout)\(second.stderr)")
        #expect(try t.state(r).status == .failed)
        #expect(try t.state(r).error?.message.contains("card declined") == true)
        // undo-c and undo-b were recorded before the crash: not undone again. undo-a was in
        // flight: it ran again. Nothing was booked again.
        #expect(counts() == ["book-a": 1, "book-b": 1, "book-c": 1, "undo-c": 1, "undo-b": 2, "undo-a": 2])
        let comp = try t.spool.journal(r).load().filter { $0.kind == "compensate" }
        #expect(comp.map { $0.name ?? "" } == ["undo-c", "undo-b", "undo-a"])
        #expect(comp.map { $0.attempt ?? 0 } == [1, 2, 1], "undo-b's retry is recorded as its second attempt")
        #expect(comp.allSatisfy { $0.error == nil })
        #expect(try t.journalSummary(r).last == "fail")

        _ = try Binary.run("cairn-fixtures", ["advance", r, "--spool", t.spool.root.string])
        #expect(counts()["undo-a"] == 2 && counts()["undo-c"] == 1, "a finished run undid again")
    }
}

// MARK: - A half-made run is never visible

@Suite(.serialized) struct HalfMadeRunTests {
    /// cli.md: "The run directory is built in tmp/ and appears whole." Killed at the last
    /// moment before the rename (`run.before-rename`), a submission leaves no run anyone can
    /// see; submitting again (same key) makes it, and a daemon finishes it.
    @Test func aSubmissionKilledBeforeItsRunAppearsLeavesNothingVisible() async throws {
        let t = try TempSpool()
        let root = t.spool.root.string
        let killed = try Binary.run("cairn", ["submit", "nap", "--id", "half-1", "--idempotency-key", "k-half", "--input", "-", "--spool", root], env: ["CAIRN_CRASH_AT": "run.before-rename"], stdin: "0.01")
        #expect(killed.signal == SIGKILL, "the crash point was not reached: \(killed.code) \(killed.stderr)")
        #expect(!exists(t.spool.runDirectory("half-1").string))
        #expect(try t.spool.runIDs().isEmpty)
        #expect(try Binary.cairn("ls", spool: t.spool).stdout.isEmpty)
        #expect(try Binary.cairn("ls", "--status", "queued", spool: t.spool).stdout.isEmpty, "the index entry made before the rename is listed")
        #expect(try Binary.cairn("show", "half-1", spool: t.spool).code == 3)
        // What it left is in tmp/ only (the staging directory).
        #expect(try Spool.list(t.spool.tmpDirectory).contains { $0.contains("half-1") })
        let d = try await DaemonProcess(spool: t.spool)
        usleep(200_000)
        #expect(try t.spool.runIDs().isEmpty)
        let fsck = try Binary.cairn("fsck", "--repair", spool: t.spool)
        #expect(fsck.code == 0, "\(fsck.stdout)\(fsck.stderr)")
        let again = try Binary.run("cairn", ["submit", "nap", "--id", "half-1", "--idempotency-key", "k-half", "--input", "-", "--spool", root], stdin: "0.01")
        #expect(again.code == 0 && again.stdout == "half-1\n", "\(again.stdout)\(again.stderr)")
        try await t.waitFor("half-1", .completed)
        #expect(try t.result("half-1") == "woke")
        #expect(await d.stop() == 0)
        #expect(try Binary.cairn("fsck", spool: t.spool).code == 0)
    }

    /// The same point reached by a daemon accepting an inbox file: the file stays in the
    /// inbox, no run is visible, and the next daemon makes exactly one run of it.
    @Test func aDaemonKilledWhileMakingARunFromTheInboxMakesItOnceOnRestart() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool, env: ["CAIRN_CRASH_AT": "run.before-rename"])
        try dropIntoInbox(t, "sub.json", #"{"workflow": "nap", "input": 0.01}"#)
        try await waitForExit(d, timeout: 10)
        #expect(d.process.terminationReason == .uncaughtSignal && d.process.terminationStatus == SIGKILL)
        #expect(try t.spool.runIDs().isEmpty)
        #expect(try Spool.list(t.spool.inboxDirectory) == ["sub.json"])
        let d2 = try await DaemonProcess(spool: t.spool, name: "second")
        try await waitUntil("inbox taken") { try Spool.list(t.spool.inboxDirectory).isEmpty }
        let runs = try t.spool.runIDs()
        #expect(runs.count == 1)
        for r in runs { try await t.waitFor(r, .completed) }
        #expect(await d2.stop() == 0)
    }
}

/// Drops a file into the inbox as a program should: written elsewhere in the spool, then renamed.
private func dropIntoInbox(_ t: TempSpool, _ name: String, _ content: String) throws {
    let tmp = t.spool.tmpDirectory.appending("drop-\(UUID().uuidString)").string
    try content.write(toFile: tmp, atomically: false, encoding: .utf8)
    guard rename(tmp, t.spool.inboxDirectory.appending(name).string) == 0 else { throw SpoolError(.io, path: name, errno: errno, "cannot drop into inbox/") }
}

// MARK: - The inbox rules

@Suite(.serialized) struct InboxRuleTests {
    /// spool-format.md: without `id` and `idempotency_key` the daemon uses the file itself as
    /// the key, "so a daemon killed between creating the run and removing the file does not
    /// make a second run of it".
    @Test func theImplicitKeyMakesOneRunWhenADaemonDiesBeforeRemovingTheFile() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool, env: ["CAIRN_CRASH_AT": "inbox.before-unlink"])
        try dropIntoInbox(t, "order.json", #"{"workflow": "nap", "input": 0.01}"#)
        try await waitForExit(d, timeout: 10)
        #expect(d.process.terminationStatus == SIGKILL, "the crash point was not reached")
        #expect(try Spool.list(t.spool.inboxDirectory) == ["order.json"])
        let made = try t.spool.runIDs()
        #expect(made.count == 1, "the run was not made before the crash: \(made)")
        let d2 = try await DaemonProcess(spool: t.spool, name: "second")
        try await waitUntil("inbox taken") { try Spool.list(t.spool.inboxDirectory).isEmpty }
        for r in made { try await t.waitFor(r, .completed) }
        #expect(try t.spool.runIDs() == made, "a second run was made of the same inbox file")
        #expect(try t.spool.readRun(made[0]).idempotencyKey?.hasPrefix("inbox:order.json:") == true)
        #expect(await d2.stop() == 0)
    }

    /// Dot-files, `*.tmp` and `*~` are ignored (left alone); over 1 MiB, symlinks and
    /// directories are rejected with an error file; just under 1 MiB is accepted.
    @Test func ignoredNamesSizeLimitSymlinksAndDirectories() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        let valid = #"{"workflow": "nap", "input": 0.01}"#
        for name in [".hidden.json", "draft.json.tmp", "backup.json~"] { try dropIntoInbox(t, name, valid) }
        // Exactly 1 MiB (accepted) and one byte more (rejected).
        let payload = { (id: String, size: Int) -> String in
            let head = #"{"workflow": "gate", "id": "\#(id)", "input": ""#, tail = #""}"#
            return head + String(repeating: "x", count: size - head.utf8.count - tail.utf8.count) + tail
        }
        try dropIntoInbox(t, "under.json", payload("big-ok", 1 << 20))
        try dropIntoInbox(t, "over.json", payload("big-no", (1 << 20) + 1))
        let target = t.path.appending("target.json").string
        try valid.write(toFile: target, atomically: true, encoding: .utf8)
        #expect(symlink(target, t.spool.inboxDirectory.appending("link.json").string) == 0)
        #expect(mkdir(t.spool.tmpDirectory.appending("dir.json").string, 0o755) == 0)
        #expect(rename(t.spool.tmpDirectory.appending("dir.json").string, t.spool.inboxDirectory.appending("dir.json").string) == 0)
        try dropIntoInbox(t, "last.json", #"{"workflow": "nap", "input": 0.01, "id": "barrier"}"#)

        try await t.waitFor("barrier", .completed)
        do {
            try await waitUntil("three rejections") { try Spool.list(t.spool.rejectedDirectory).count == 6 }
        } catch {
            Issue.record("rejected/: \(try Spool.list(t.spool.rejectedDirectory)), inbox/: \(try Spool.list(t.spool.inboxDirectory)), runs: \(try t.spool.runIDs())\n\(d.log.suffix(3000))")
            throw error
        }
        usleep(200_000)
        #expect(try Set(Spool.list(t.spool.inboxDirectory)) == [".hidden.json", "draft.json.tmp", "backup.json~"], "ignored files must be left alone")
        #expect(try Set(t.spool.runIDs()) == ["barrier", "big-ok"])
        try await t.waitFor("big-ok", .waiting)
        func error(_ stem: String) throws -> String { try DurableFile.readJSON(t.spool.rejectedDirectory.appending("\(stem).error.json"))["error"]?.stringValue ?? "" }
        let over = try error("over"), link = try error("link"), dir = try error("dir")
        #expect(over.contains("1 MiB"), "\(over)")
        #expect(link.contains("symbolic link"), "\(link)")
        #expect(dir.contains("not a regular file") || dir.contains("directory"), "\(dir)")
        // The symlink itself was moved aside; what it pointed to is untouched.
        var st = stat()
        #expect(lstat(t.spool.rejectedDirectory.appending("link.json").string, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK)
        #expect(try String(contentsOfFile: target, encoding: .utf8) == valid)
        #expect(await d.stop() == 0)
    }
}

// MARK: - cairn gc

@Suite(.serialized) struct GCTests {
    /// cli.md and operations.md: `gc --older-than D` removes finished runs (completed, failed,
    /// cancelled) last updated more than D ago, skips runs a process holds, keeps their
    /// idempotency keys; `--dry-run` only lists.
    @Test func gcRemovesOldFinishedRunsOnlyAndKeepsTheirKeys() async throws {
        let t = try TempSpool()
        let root = t.spool.root.string
        func advance(_ r: String) throws { _ = try Binary.run("cairn-fixtures", ["advance", r, "--spool", root]) }
        func backdate(_ r: String) throws {
            var s = try DurableFile.readJSON(t.spool.run(r).stateFile).objectValue!
            s["updated_at"] = .string(Timestamp.format(Date().addingTimeInterval(-40 * 86400)))
            try t.spool.durable.write(json: .object(s), to: t.spool.run(r).stateFile)
        }
        let done = try t.submit("nap", input: 0.01, id: "old-done", key: "k-old")
        let failed = try t.submit("nap", input: "not a number", id: "old-failed")
        let cancelled = try t.submit("gate", input: ["who": "x"] as JSONValue, id: "old-cancelled")
        let waiting = try t.submit("gate", input: ["who": "y"] as JSONValue, id: "old-waiting")
        let recent = try t.submit("nap", input: 0.01, id: "new-done")
        let held = try t.submit("nap", input: 0.01, id: "old-held")
        for r in [done, failed, cancelled, waiting, recent, held] { try advance(r) }
        try t.drop("cancel", in: cancelled)
        try advance(cancelled)
        #expect(t.status(done) == .completed && t.status(failed) == .failed && t.status(cancelled) == .cancelled && t.status(waiting) == .waiting && t.status(held) == .completed)
        for r in [done, failed, cancelled, waiting, held] { try backdate(r) }

        let dry = try Binary.cairn("gc", "--older-than", "30d", "--dry-run", spool: t.spool)
        #expect(dry.code == 0)
        #expect(Set(dry.stdout.split(separator: "\n").map(String.init)) == [done, failed, cancelled, held], "\(dry.stdout)")
        #expect(try t.spool.runIDs().count == 6, "--dry-run removed something")

        let gc: Binary.Result
        do {
            let lock = try RunLock.tryAcquire(t.spool.runDirectory(held))
            #expect(lock != nil)
            gc = try Binary.cairn("gc", "--older-than", "30d", spool: t.spool)
            withExtendedLifetime(lock) {}
        }
        #expect(gc.code == 0, "\(gc.stderr)")
        #expect(Set(gc.stdout.split(separator: "\n").map(String.init)) == [done, failed, cancelled], "\(gc.stdout)")
        #expect(gc.stderr.contains("removed 3 runs"), "\(gc.stderr)")
        #expect(try Set(t.spool.runIDs()) == [waiting, recent, held])
        for (r, s) in [(done, "completed"), (failed, "failed"), (cancelled, "cancelled")] {
            #expect(!exists(t.spool.indexDirectory.appending(s).appending(r).string), "index entry of \(r) left")
        }
        #expect(try !Spool.list(t.spool.tmpDirectory).contains { $0.contains("gc-") }, "a removed run left something in tmp/")
        #expect(t.spool.runForKey("k-old") == done, "the idempotency key of a removed run is kept")
        let fsck = try Binary.cairn("fsck", spool: t.spool)
        #expect(fsck.code == 0, "\(fsck.stdout)")

        // Released, the held run goes too.
        let again = try Binary.cairn("gc", "--older-than", "30d", spool: t.spool)
        #expect(again.stdout == "\(held)\n", "\(again.stdout)\(again.stderr)")
        #expect(try Set(t.spool.runIDs()) == [waiting, recent])

        // The kept key still names the removed id: submitting with it makes that run again.
        let resubmit = try Binary.cairn("submit", "nap", "--idempotency-key", "k-old", "--input", "-", spool: t.spool, stdin: "0.01")
        #expect(resubmit.code == 0 && resubmit.stdout == "\(done)\n", "\(resubmit.stdout)\(resubmit.stderr)")
        #expect(t.status(done) == .queued)
    }
}

// MARK: - Smaller operational promises

@Suite(.serialized) struct OperationalPromiseTests {
    /// scripts.md: "when an execution starts, a stdout.log/stderr.log over script_log_limit
    /// bytes is renamed *.log.1".
    @Test func scriptLogsOverTheLimitAreRotatedWhenTheNextExecutionStarts() async throws {
        let t = try TempSpool()
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["script_log_limit"] = 1000
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        try installScript(t, "chatty", """
            #!/bin/sh
            head -c 1500 /dev/zero | tr '\\0' 'o'
            head -c 1500 /dev/zero | tr '\\0' 'e' >&2
            cairn approval go > /dev/null
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("chatty", input: JSONValue.null)
        try await t.waitFor(r, .waiting)
        let logs = t.spool.run(r).logsDirectory
        #expect(!exists(logs.appending("stderr.log.1").string), "rotated before the limit mattered")
        try t.drop("approvals/go.approved", in: r)
        try await t.waitFor(r, .completed)
        #expect(await d.stop() == 0)
        for name in ["stdout", "stderr"] {
            let old = (try? String(contentsOfFile: logs.appending("\(name).log.1").string, encoding: .utf8)) ?? ""
            let new = (try? String(contentsOfFile: logs.appending("\(name).log").string, encoding: .utf8)) ?? ""
            #expect(old.utf8.count >= 1500, "\(name).log.1 holds \(old.utf8.count) bytes")
            #expect(new.utf8.count >= 1500 && new.utf8.count < old.utf8.count + 200, "\(name).log was not started afresh: \(new.utf8.count) bytes")
        }
        let stderrNow = (try? String(contentsOfFile: logs.appending("stderr.log").string, encoding: .utf8)) ?? ""
        #expect(stderrNow.hasPrefix("--- "), "the new stderr.log starts with the execution line: \(stderrNow.prefix(80))")
    }

    /// operations.md: run directories made before the permission model (mode 2775, no sticky
    /// bit) get it when the daemon next advances the run; `cairn fsck` lists the others.
    @Test func oldRunDirectoriesGetTheStickyBitWhenAdvancedAndFsckListsTheOthers() async throws {
        let t = try TempSpool()
        let waiting = try t.submit("gate", input: ["who": "w"] as JSONValue)
        let done = try t.submit("nap", input: 0.01)
        _ = try Binary.run("cairn-fixtures", ["advance", done, "--spool", t.spool.root.string])
        #expect(t.status(done) == .completed)
        func dropDirs(_ r: String) -> [String] {
            let p = t.spool.run(r)
            return [p.directory.string, p.approvalsDirectory.string, p.eventsDirectory.string]
        }
        func sticky(_ path: String) -> Bool {
            var st = stat()
            return lstat(path, &st) == 0 && (st.st_mode & S_ISVTX) != 0
        }
        for r in [waiting, done] { for dir in dropDirs(r) { #expect(chmod(dir, 0o2775) == 0) } }
        let before = try Binary.cairn("fsck", spool: t.spool)
        #expect(before.code == 1 && before.stdout.contains("runs/\(waiting)/approvals: is writable by others but not sticky"), "\(before.stdout)")
        let d = try await DaemonProcess(spool: t.spool)
        try await t.waitFor(waiting, .waiting)
        try await waitUntil("the sticky bit restored") { dropDirs(waiting).allSatisfy(sticky) }
        #expect(await d.stop() == 0)
        #expect(!dropDirs(done).contains(where: sticky), "a finished run was changed")
        let after = try Binary.cairn("fsck", spool: t.spool)
        #expect(after.code == 1 && after.stdout.contains("runs/\(done)") && !after.stdout.contains("runs/\(waiting)"), "\(after.stdout)")
    }

    /// operations.md: "`cairn fsck --repair` … safe while the daemon runs (skips runs it
    /// holds)"; cli.md: "Runs a daemon holds are skipped (listed as busy)."
    @Test func fsckRepairSkipsARunSomeoneHolds() async throws {
        let t = try TempSpool()
        let r = try t.submit("nap", input: 0.01)
        _ = try Binary.run("cairn-fixtures", ["advance", r, "--spool", t.spool.root.string])
        #expect(t.status(r) == .completed)
        unlink(t.spool.run(r).stateFile.string)
        do {
            let lock = try RunLock.tryAcquire(t.spool.runDirectory(r))
            #expect(lock != nil)
            let held = try Binary.cairn("fsck", "--repair", "--json", spool: t.spool)
            withExtendedLifetime(lock) {}
            #expect(try JSONValue.parse(held.stdout)["busy"] == [.string(r)], "\(held.stdout)")
            #expect(!exists(t.spool.run(r).stateFile.string), "a held run was repaired")
        }
        let free = try Binary.cairn("fsck", "--repair", spool: t.spool)
        #expect(free.code == 0, "\(free.stdout)")
        #expect(t.status(r) == .completed)
    }

    /// operations.md: "Restoring a single run: stop the daemon, copy runs/RUN/ back, `cairn
    /// fsck --repair`, start." A restore rewinds: a decision dropped after the backup must be
    /// dropped again.
    @Test func aSingleRunRestoredRewindsToItsCopy() async throws {
        let t = try TempSpool()
        var d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("gate", input: ["who": "one"] as JSONValue)
        try await t.waitFor(r, .waiting)
        let copy = t.path.appending("run-backup").string
        let dir = t.spool.runDirectory(r).string
        #expect(Binary.runShell("rsync -a '\(dir)/' '\(copy)/'").code == 0)
        try t.drop("approvals/go.approved", in: r)
        try await t.waitFor(r, .completed)
        #expect(await d.stop() == 0)

        let restore = Binary.runShell("rsync -a --delete '\(copy)/' '\(dir)/' && '\(Binary.path("cairn"))' fsck --repair --spool '\(t.spool.root.string)'")
        #expect(restore.code == 0, "\(restore.stdout)\(restore.stderr)")
        #expect(t.status(r) == .waiting)
        #expect(try t.spool.indexedRuns(.waiting) == [r] && t.spool.indexedRuns(.completed).isEmpty, "the index was not rebuilt")
        #expect(try Binary.cairn("fsck", spool: t.spool).code == 0)
        d = try await DaemonProcess(spool: t.spool, name: "after-restore")
        usleep(200_000)
        #expect(t.status(r) == .waiting, "the decision made after the backup counted")
        try t.drop("approvals/go.approved", in: r)
        try await t.waitFor(r, .completed)
        #expect(try t.result(r)["approved"] == true)
        #expect(await d.stop() == 0)
    }

    /// cli.md: `--concurrency N` caps executions at once over all workflows; cairn.json's
    /// `concurrency.workflows` caps one workflow.
    @Test func concurrencyCapsHoldOverAllWorkflowsAndPerWorkflow() async throws {
        func mostAtOnce(_ path: String) -> Int {
            var open = 0, most = 0
            for l in lines(path) {
                open += l.hasPrefix("start ") ? 1 : -1
                most = max(most, open)
            }
            return most
        }
        let t = try TempSpool()
        let fx = t.path.appending("fx").string
        var d = try await DaemonProcess(spool: t.spool, args: ["--concurrency", "2"])
        var runs: [String] = []
        for i in 0..<5 { runs.append(try t.submit("hold", input: ["effects": .string(fx), "tag": .string("g\(i)"), "ms": 250] as JSONValue)) }
        try await waitUntil("all done", timeout: 20) { runs.allSatisfy { t.status($0) == .completed } }
        #expect(await d.stop() == 0)
        #expect(mostAtOnce(fx) == 2, "--concurrency 2: \(lines(fx))")

        let fx2 = t.path.appending("fx2").string
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["concurrency"] = ["workflows": ["hold": 1]]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        d = try await DaemonProcess(spool: t.spool, name: "capped")
        runs = []
        for i in 0..<3 { runs.append(try t.submit("hold", input: ["effects": .string(fx2), "tag": .string("w\(i)"), "ms": 250] as JSONValue)) }
        try await waitUntil("all done", timeout: 20) { runs.allSatisfy { t.status($0) == .completed } }
        #expect(await d.stop() == 0)
        #expect(mostAtOnce(fx2) == 1, "concurrency.workflows.hold = 1: \(lines(fx2))")
    }

    /// operations.md, "Upgrades with runs in flight": stop (SIGTERM), change the code, start;
    /// a run that no longer matches fails with `nondeterminism`, the documented jq line finds
    /// it, and after a fix `cairn retry` finishes it.
    @Test func anUpgradeThatChangesARunsPathIsFoundByTheDocumentedQueryAndRetried() async throws {
        let t = try TempSpool()
        try installScript(t, "ship", "#!/bin/sh\ncairn step pack -- echo packed > /dev/null\ncairn approval go > /dev/null\necho '\"shipped\"' | cairn result -\n")
        var d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("ship", input: JSONValue.null)
        let other = try t.submit("nap", input: "not a number")  // failed for another reason
        try await t.waitFor(r, .waiting)
        try await t.waitFor(other, .failed)
        #expect(await d.stop() == 0)
        // The new version drops the step before the gate: a different sequence of operations.
        try installScript(t, "ship", "#!/bin/sh\ncairn approval go > /dev/null\necho '\"shipped\"' | cairn result -\n")
        d = try await DaemonProcess(spool: t.spool, name: "upgraded")
        try t.drop("approvals/go.approved", in: r)
        try await t.waitFor(r, .failed)
        let query = Binary.runShell("'\(Binary.path("cairn"))' ls --status failed --json --spool '\(t.spool.root.string)' | jq -r '.[] | select(.error.type == \"nondeterminism\") | .run'")
        #expect(query.code == 0 && query.stdout == "\(r)\n", "\(query.stdout)\(query.stderr)")
        // Fix the code (back to a compatible version), deploy, retry.
        try installScript(t, "ship", "#!/bin/sh\ncairn step pack -- echo packed > /dev/null\ncairn approval go > /dev/null\necho '\"shipped\"' | cairn result -\n")
        #expect(try Binary.cairn("retry", r, spool: t.spool).code == 0)
        try await t.waitFor(r, .completed)
        #expect(try t.result(r) == "shipped")
        #expect(await d.stop() == 0)
    }
}
