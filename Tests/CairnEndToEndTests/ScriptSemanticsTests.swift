import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Script workflows where the docs' promises were silently broken (issue "Semantics…",
/// items 8–12 and 14): concurrent and nested helpers, helper calls removed from a script,
/// a step timeout that left children running, and what `show` and the helpers say.
@Suite(.serialized) struct ScriptSemanticsTests {
    func install(_ t: TempSpool, _ name: String, _ text: String) throws {
        let p = t.spool.workflowsDirectory.appending(name).string
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
    }

    func stderrLog(_ t: TempSpool, _ r: String) -> String {
        (try? String(contentsOfFile: t.spool.run(r).logsDirectory.appending("stderr.log").string, encoding: .utf8)) ?? ""
    }

    @Test func sameNameHelpersCalledConcurrentlyAreRefusedNotSwapped() async throws {
        let t = try TempSpool()
        let out = t.path.appending("out").string
        mkdir(out, 0o755)
        try install(t, "fanout", """
            #!/usr/bin/env bash
            for u in a b c d; do cairn step fetch -- sh -c "sleep 0.3; echo $u" > \(out)/$u & done
            wait
            exit 0
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("fanout", input: JSONValue.null)
        try await waitUntil("finished", timeout: 20) { t.status(r)?.isTerminal == true }
        #expect(t.status(r) == .completed, "the script exits 0 whatever its helpers said: \(String(describing: try? t.state(r).error))")
        await d.stop()
        #expect(stderrLog(t, r).contains("called while another helper of this execution was running"), "\(stderrLog(t, r))")
        // Whatever ran recorded its own output: no file holds another caller's letter.
        for u in ["a", "b", "c", "d"] {
            let text = ((try? String(contentsOfFile: "\(out)/\(u)", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(text.isEmpty || text == u, "\(u) got \(text)")
        }
    }

    @Test func aHelperInsideAStepsCommandIsRefusedAtOnce() async throws {
        let t = try TempSpool()
        try install(t, "nested", """
            #!/bin/sh
            cairn step outer -- sh -c 'cairn step inner -- echo hi'
            echo "outer exit $?" >&2
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("nested", input: JSONValue.null)
        try await waitUntil("finished", timeout: 10) { t.status(r)?.isTerminal == true }
        #expect(t.status(r) == .completed, "the script exits 0 whatever its helpers said: \(String(describing: try? t.state(r).error))")
        await d.stop()
        #expect(stderrLog(t, r).contains("inside the command of `cairn step outer`"), "\(stderrLog(t, r))")
        #expect(try !t.journalSummary(r).contains("step:inner"))
    }

    @Test func helperCallsRemovedFromAWaitingScriptAreNoticed() async throws {
        let t = try TempSpool()
        try install(t, "edit", "#!/bin/sh\ncairn step a -- echo 1 >/dev/null\ncairn approval go >/dev/null\ncairn step b -- echo 2 >/dev/null\n")
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("edit", input: JSONValue.null)
        try await t.waitFor(r, .waiting)
        // The gate and what follows are deleted while the run waits; then it is approved.
        try install(t, "edit", "#!/bin/sh\nexit 0\n")
        try t.drop("approvals/go.approved", in: r)
        try await t.waitFor(r, .failed)
        let e = try t.state(r).error
        #expect(e?.type == "nondeterminism" && e?.message.contains("step 'a'") == true, "\(String(describing: e))")
        await d.stop()
    }

    @Test func aStepTimeoutKillsEverythingTheCommandStarted() async throws {
        let t = try TempSpool()
        let late = t.path.appending("late").string
        try install(t, "slowstep", """
            #!/bin/sh
            cairn step slow --timeout 1s -- sh -c 'sh -c "sleep 5; touch \(late)" & wait'
            echo "step exit $?" >&2
            sleep 6
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("slowstep", input: JSONValue.null)
        // The script goes on for 6 s after the step (so its process group lives on): only
        // killing the command's whole tree stops the child.
        try await waitUntil("finished", timeout: 15) { t.status(r)?.isTerminal == true }
        #expect(t.status(r) == .completed, "the script exits 0 whatever its helpers said: \(String(describing: try? t.state(r).error))")
        #expect(!FileManager.default.fileExists(atPath: late), "a child of the timed-out command wrote after the timeout")
        #expect(stderrLog(t, r).contains("step exit 124"), "\(stderrLog(t, r))")
        await d.stop()
    }

    @Test func showSaysExitCodesAndHelpersSayWhatIsWrong() async throws {
        let t = try TempSpool()
        let flag = t.path.appending("second").string
        try install(t, "codes", """
            #!/bin/sh
            cairn step fails -- sh -c 'exit 3'
            cairn step flaky --retries 1 -- sh -c 'test -e \(flag) || { touch \(flag); exit 7; }'
            cairn result /no/such/file
            echo "result exit $?" >&2
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("codes", input: JSONValue.null)
        try await waitUntil("finished", timeout: 20) { t.status(r)?.isTerminal == true }
        #expect(t.status(r) == .completed, "the script exits 0 whatever its helpers said: \(String(describing: try? t.state(r).error))")
        await d.stop()
        let show = try Binary.cairn("show", r, spool: t.spool)
        let failsLine = show.stdout.split(separator: "\n").first { $0.contains("step") && $0.contains("fails") } ?? ""
        #expect(failsLine.contains("exit 3") && !failsLine.contains(" ok"), "\(show.stdout)")
        let log = stderrLog(t, r)
        #expect(log.contains("step failed, will retry"), "\(log)")
        #expect(log.contains("/no/such/file: cannot read the result") && !log.contains("not valid JSON"), "\(log)")
    }

    @Test func aDaemonStartDoesNotReRunAScriptWaitingOnSomethingThatHasNotHappened() async throws {
        let t = try TempSpool()
        let runs = t.path.appending("runs").string
        try install(t, "patient", "#!/bin/sh\necho x >> \(runs)\ncairn sleep 1h\n")
        try install(t, "asking", "#!/bin/sh\necho y >> \(runs).ask\ncairn approval go >/dev/null\n")
        var d = try await DaemonProcess(spool: t.spool)
        let a = try t.submit("patient", input: JSONValue.null)
        let b = try t.submit("asking", input: JSONValue.null)
        try await t.waitFor(a, .waiting)
        try await t.waitFor(b, .waiting)
        for _ in 0..<2 {
            await d.stop()
            d = try await DaemonProcess(spool: t.spool)
            try await Task.sleep(for: .microseconds(300_000))
        }
        #expect(try String(contentsOfFile: runs, encoding: .utf8) == "x\n", "the sleeping script ran again")
        #expect(try String(contentsOfFile: runs + ".ask", encoding: .utf8) == "y\n", "the asking script ran again")
        // A decision dropped while no daemon ran still counts at the next start.
        await d.stop()
        try t.drop("approvals/go.approved", in: b)
        d = try await DaemonProcess(spool: t.spool)
        try await t.waitFor(b, .completed)
        await d.stop()
    }

    @Test func aScriptThatCannotBeExecutedSaysWhyAndChmodIsNoticed() async throws {
        let t = try TempSpool()
        let p = t.spool.workflowsDirectory.appending("later").string
        try "#!/bin/sh\necho '\"ok\"' | cairn result -\n".write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o644)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("later", input: JSONValue.null)
        try await waitUntil("the daemon parks it") { (try? t.state(r))?.error?.type == "unknown_workflow" }
        let why = try Binary.cairn("why", r, spool: t.spool)
        #expect(why.stdout.contains("not executable"), "\(why.stdout)")
        chmod(p, 0o755)
        try await t.waitFor(r, .completed, timeout: 10)
        // No #! line: the error says so instead of an empty stderr.
        try install(t, "noshebang", "echo hi\n")
        let q = try t.submit("noshebang", input: JSONValue.null)
        try await t.waitFor(q, .failed)
        let message = try t.state(q).error?.message ?? ""
        #expect(message.contains("#! line"), "\(message)")
        await d.stop()
    }

    @Test func cancelStopsAScriptThatNeverCallsAHelper() async throws {
        let t = try TempSpool()
        let pidFile = t.path.appending("pid").string
        try install(t, "busy", "#!/bin/sh\ncairn step first -- true\necho $$ > \(pidFile)\nexec sleep 300\n")
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("busy", input: JSONValue.null)
        try await waitUntil("started") { FileManager.default.fileExists(atPath: pidFile) }
        #expect(try Binary.cairn("cancel", r, spool: t.spool).code == 0)
        try await t.waitFor(r, .cancelled, timeout: 10)
        let pid = Int32((try String(contentsOfFile: pidFile, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines))!
        try await waitUntil("the script is gone", timeout: 5) { kill(pid, 0) != 0 }
        await d.stop()
    }

    /// Issue 20: Ctrl-C of a daemon with work running says which runs it waits for; a
    /// second Ctrl-C interrupts them at once instead of waiting out the grace period, and
    /// the interrupted step runs again on the next start (nothing recorded for it).
    @Test func aSecondCtrlCStopsTheDaemonAtOnce() async throws {
        let t = try TempSpool()
        let started = t.path.appending("started").string
        try install(t, "long-step", "#!/bin/sh\ncairn step long -- sh -c 'echo x >> \(started); sleep 60'\n")
        let d = try await DaemonProcess(spool: t.spool, args: ["--shutdown-grace", "60s"])
        let r = try t.submit("long-step", input: JSONValue.null)
        try await waitUntil("the step runs") { FileManager.default.fileExists(atPath: started) }
        kill(d.pid, SIGINT)
        try await waitUntil("it says what it waits for") { d.log.contains("shutting down: waiting up to 60s") && d.log.contains(r) }
        let t0 = Date()
        kill(d.pid, SIGINT)
        await d.exited()
        #expect(Date().timeIntervalSince(t0) < 15, "the second Ctrl-C did not stop it at once")
        #expect(d.log.contains("interrupting running executions"), "\(d.log)")
        #expect(try t.state(r).status != .completed)
        #expect(!(try t.journalSummary(r)).contains("step:long"), "nothing recorded for the interrupted step")
    }

    /// A cancel that comes between the script's start and the moment the daemon learns its
    /// pid (microseconds, wide on a loaded machine) still ends it: the kill is remembered.
    @Test func cancelStopsAScriptWhosePidIsNotKnownYet() async throws {
        let t = try TempSpool()
        let pidFile = t.path.appending("pid").string
        try install(t, "busy-early", "#!/bin/sh\necho $$ > \(pidFile)\nexec sleep 300\n")
        let d = try await DaemonProcess(spool: t.spool, env: ["CAIRN_SIMULATE_SLOW": "script.spawned:3000"])
        let r = try t.submit("busy-early", input: JSONValue.null)
        try await waitUntil("started") { FileManager.default.fileExists(atPath: pidFile) }
        #expect(try Binary.cairn("cancel", r, spool: t.spool).code == 0)
        try await t.waitFor(r, .cancelled, timeout: 15)
        let pid = Int32((try String(contentsOfFile: pidFile, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines))!
        try await waitUntil("the script is gone", timeout: 5) { kill(pid, 0) != 0 }
        await d.stop()
    }

    /// A script waiting (its process stopped) at a sleep, an approval or an event: `cairn
    /// cancel` must end it at once. An outside attack found it stuck at `running`: the wake
    /// for the cancel file started an execution, and the same event then cancelled that
    /// execution as if it were a script that never calls a helper (the run ended only when its
    /// timer fired, its event came, or the daemon restarted).
    @Test(arguments: ["cairn sleep 60s", "cairn approval go", "cairn event ping"])
    func cancelEndsAWaitingScriptAtOnce(_ wait: String) async throws {
        let t = try TempSpool()
        try install(t, "waits", "#!/bin/sh\ncairn step first -- true\n\(wait)\ncairn step after -- true\n")
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("waits", input: JSONValue.null)
        try await t.waitFor(r, .waiting)
        #expect(try Binary.cairn("cancel", r, spool: t.spool).code == 0)
        do { try await t.waitFor(r, .cancelled, timeout: 10) } catch { Issue.record("\(wait): \(error); journal \(try t.journalSummary(r)); log \(d.log.suffix(1500))") }
        let cancels = try t.spool.journal(r).load().filter { $0.kind == .cancel && $0.name == "requested" }
        #expect(cancels.count <= 1, "cancel requested recorded \(cancels.count) times")
        await d.stop()
    }

    /// A waiting script is not run again from the top for a drop its helper would only refuse:
    /// an outside attack re-ran one once per refused drop (7 executions for one gate), so a
    /// group member could make the script's own code run at will. Such a drop is refused and set
    /// aside by the daemon without starting the script; a good one still wakes it.
    @Test func aRefusedDropDoesNotRunAWaitingScriptAgain() async throws {
        let t = try TempSpool()
        try install(t, "gated", "#!/bin/sh\ncairn step first -- true\ncairn approval go\ncairn event ping > /dev/null\n")
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        let r = try t.submit("gated", input: JSONValue.null)
        try await t.waitFor(r, .waiting)
        let executions = { (try? t.state(r).counters.executions) ?? -1 }
        let before = executions()
        let approvals = t.spool.run(r).approvalsDirectory
        for (i, content) in ["not json", "[" + String(repeating: "[", count: 70) + String(repeating: "]", count: 71)].enumerated() {
            try t.drop("approvals/go.approved", in: r, content: content)
            try await waitUntil("refused drop \(i) set aside") { !DurableFile.exists(approvals.appending("go.approved")) }
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(executions() == before, "the script ran again for refused drops: \(before) → \(executions()) executions")
        #expect(t.status(r) == .waiting)
        try t.drop("approvals/go.approved", in: r)
        try await waitUntil("at the event") { (try? t.state(r).waitingFor?["kind"]) == "event" }
        let atEvent = executions()
        try t.drop("events/ping.json", in: r, content: "{")  // not JSON: refused too
        try await waitUntil("refused event set aside") { !DurableFile.exists(t.spool.run(r).directory.appending("events/ping.json")) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(executions() == atEvent, "the script ran again for a refused event")
        try t.drop("events/ping.json", in: r, content: "1")
        try await t.waitFor(r, .completed)
        #expect(executions() == atEvent + 1)
    }

    @Test func aHelperWithItsStdoutClosedDoesNotCrash() async throws {
        let t = try TempSpool()
        try install(t, "closed", "#!/bin/sh\nexec 1>&-\ncairn step b -- echo hi\necho \"step exit $?\" >&2\n")
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("closed", input: JSONValue.null)
        try await t.waitFor(r, .completed)
        await d.stop()
        #expect(stderrLog(t, r).contains("step exit 0"), "\(stderrLog(t, r))")
        #expect(!stderrLog(t, r).contains("Fatal error"))
    }
}
