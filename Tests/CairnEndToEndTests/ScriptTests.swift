import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Script workflows in bash and Python under a real daemon (SPEC §4).
@Suite(.serialized) struct ScriptTests {
    static let bash = """
        #!/usr/bin/env bash
        set -euo pipefail
        input=$(cat)
        n=$(printf '%s' "$input" | jq -r .n)
        total=0
        for i in $(seq 1 "$n"); do
          # Repeated step names in a loop are matched by position.
          out=$(cairn step add -- bash -c 'sleep 0.15; echo "add $CAIRN_IDEMPOTENCY_KEY" >> "$EFFECTS"; echo 1' )
          total=$((total + out))
        done
        if cairn approval ship --request <(printf '{"summary": "ship %s?"}' "$total") > decision.json; then
          shipped=true
        else
          shipped=false
        fi
        event=$(cairn event label)
        cairn sleep 1s
        stamp=$(cairn now)
        printf '{"total": %s, "shipped": %s, "label": %s, "stamp": "%s"}' "$total" "$shipped" "$event" "$stamp" | cairn result -
        """

    static let python = """
        #!/usr/bin/env python3
        import json, os, subprocess, sys
        data = json.load(sys.stdin)
        def cairn(*args, check=True):
            return subprocess.run(["cairn", *args], capture_output=True, text=True, check=check)
        words = []
        for w in data["words"]:
            out = cairn("step", "upper", "--", "python3", "-c", f"import os; open(os.environ['EFFECTS'], 'a').write('upper ' + os.environ['CAIRN_IDEMPOTENCY_KEY'] + '\\\\n'); print({w!r}.upper())")
            words.append(out.stdout.strip())
        ok = cairn("approval", "publish", check=False).returncode == 0
        result = {"words": words, "published": ok}
        subprocess.run(["cairn", "result", "-"], input=json.dumps(result), text=True, check=True)
        """

    func install(_ t: TempSpool, _ name: String, _ text: String) throws {
        let p = t.spool.workflowsDirectory.appending(name).string
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
    }

    func effects(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    @Test func bashWorkflowWithStepsApprovalEventAndSleep() async throws {
        let t = try TempSpool()
        let fx = t.path.appending("effects").string
        try install(t, "count", Self.bash)
        let d = try await DaemonProcess(spool: t.spool, env: ["EFFECTS": fx])
        let r = try t.submit("count", input: ["n": 3] as JSONValue)
        try await t.waitFor(r, .waiting, timeout: 20)
        #expect(try t.state(r).waitingFor?["gate"] == "ship")
        let req = try DurableFile.readJSON(t.spool.run(r).approvalsDirectory.appending("ship.request.json"))
        #expect(req["summary"] == "ship 3?")
        try t.drop("approvals/ship.approved", in: r)
        try await waitUntil("event wait") { (try? t.state(r).waitingFor?["kind"]) == "event" }
        let sig = try Binary.cairn("signal", r, "label", "--data", "-", spool: t.spool, stdin: #""fragile""#)
        #expect(sig.code == 0, "\(sig.stderr)")
        try await t.waitFor(r, .completed, timeout: 20)
        let out = try t.result(r)
        #expect(out["total"] == 3 && out["shipped"] == true && out["label"] == "fragile")
        #expect(effects(fx).count == 3, "each step ran once: \(effects(fx))")
        #expect(Set(effects(fx)).count == 3, "distinct idempotency keys per position")
        #expect(try t.journalSummary(r).filter { $0 == "step:add" }.count == 3)
        await d.stop()
    }

    @Test func pythonWorkflowWithRejection() async throws {
        let t = try TempSpool()
        let fx = t.path.appending("effects").string
        try install(t, "shout", Self.python)
        let d = try await DaemonProcess(spool: t.spool, env: ["EFFECTS": fx])
        let r = try t.submit("shout", input: ["words": ["a", "b"]] as JSONValue)
        try await t.waitFor(r, .waiting, timeout: 20)
        try t.drop("approvals/publish.rejected", in: r)
        try await t.waitFor(r, .completed, timeout: 20)
        #expect(try t.result(r) == ["words": ["A", "B"], "published": false])
        #expect(effects(fx).count == 2)
        await d.stop()
    }

    @Test func daemonKilledMidScriptResumesWithoutRerunningSteps() async throws {
        let t = try TempSpool()
        let fx = t.path.appending("effects").string
        try install(t, "count", Self.bash)
        var d = try await DaemonProcess(spool: t.spool, env: ["EFFECTS": fx])
        // 20 steps of 0.15 s: the script is certainly still mid-way when pgrep looks, even
        // on a loaded machine (with 6, it had reached its approval gate and exited once).
        let r = try t.submit("count", input: ["n": 20] as JSONValue)
        try await waitUntil("two steps done") { effects(fx).count >= 2 }
        // The script runs (pgrep finds it: the check below can tell running from gone)…
        let script = t.spool.workflowsDirectory.appending("count").string
        let before = try Binary.run("/usr/bin/pgrep", ["-f", script])
        #expect(before.code == 0 && !before.stdout.isEmpty, "pgrep did not find the running script: \(before)")
        await d.kill9()
        // …and does not outlive its daemon (pgrep exits 1 for "no process"; 2 or 3 is an error).
        var stragglers = Binary.Result(code: -1, stdout: "", stderr: "")
        try await waitUntil("the script to die with its daemon", timeout: 5) {
            stragglers = try Binary.run("/usr/bin/pgrep", ["-f", script])
            return stragglers.code != 0
        }
        #expect(stragglers.code == 1, "pgrep failed or the script still runs: \(stragglers)")
        let recorded = try t.journalSummary(r).filter { $0 == "step:add" }.count
        d = try await DaemonProcess(spool: t.spool, env: ["EFFECTS": fx])
        try await t.waitFor(r, .waiting, timeout: 20)
        try t.drop("approvals/ship.approved", in: r)
        try await waitUntil("event wait") { (try? t.state(r).waitingFor?["kind"]) == "event" }
        try t.drop("events/label.json", in: r, content: #""x""#)
        try await t.waitFor(r, .completed, timeout: 20)
        #expect(try t.result(r)["total"] == 20)
        // Steps recorded before the kill ran once; at most the one in flight ran twice.
        let n = effects(fx).count
        #expect(n >= 20 && n <= 21, "\(n) step executions for 20 steps (\(recorded) recorded before the kill)")
        #expect(try t.journalSummary(r).filter { $0 == "step:add" }.count == 20)
        await d.stop()
    }
}

@Suite(.serialized) struct ScriptHelperConcurrencyTests {
    @Test func helpersInAPipelineOrTheBackgroundNeverShareAPosition() async throws {
        let t = try TempSpool()
        let p = t.spool.workflowsDirectory.appending("pipe").string
        try """
            #!/usr/bin/env bash
            cairn step a -- echo one | cairn step b -- cat > /dev/null
            cairn step bg -- sh -c 'sleep 1' &
            cairn step c -- echo three > /dev/null
            echo '"done"' | cairn result -
            """.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("pipe", input: 0)
        try await waitUntil("finished", timeout: 20) { t.status(r)?.isTerminal == true }
        // Usually `cairn step c` and `cairn result` are called while the background helper
        // runs (it sleeps 1 s): refused, so the script exits non-zero and the run fails,
        // saying why. On a loaded machine the background helper may start only after them:
        // then the run completes with its result. Nothing else is right.
        let state = try t.state(r)
        switch state.status {
        case .failed:
            #expect(state.error?.type == "ScriptFailed", "\(String(describing: state.error))")
            #expect(state.error?.message.contains("was called while another helper of this execution was running") == true, "\(String(describing: state.error))")
            #expect(!(try t.journalSummary(r)).contains("result"))
        case .completed:
            #expect(try t.result(r) == "done")
        default:
            Issue.record("ended \(state.status): \(String(describing: state.error))")
        }
        try await Task.sleep(for: .microseconds(1_500_000))  // a background helper, if it survived, would write now (not a poll)
        await d.stop()
        // Whatever the order, the journal stays a valid sequence of positions.
        #expect(try t.spool.journal(r).loadPrefix().damage.isEmpty)
        #expect(try Repair.run(t.spool, repair: false).findings.filter { !$0.file.hasPrefix("tmp/") }.isEmpty)
    }
}

@Suite(.serialized) struct ScriptRetryPolicyTests {
    @Test func aFailingScriptIsRunAgainPerItsPolicyWithoutRerunningSteps() async throws {
        let t = try TempSpool()
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["script_retries"] = ["flaky": ["max_attempts": 3, "initial_delay": "200ms"]]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        let state = t.path.appending("tries").string
        let p = t.spool.workflowsDirectory.appending("flaky").string
        try """
            #!/usr/bin/env bash
            set -e
            cairn step once -- sh -c 'echo ran >> \(state).steps; echo ok' > /dev/null
            n=$(cat \(state) 2>/dev/null || echo 0); n=$((n + 1)); echo $n > \(state)
            [ "$n" -ge 3 ] || { echo "attempt $n fails" >&2; exit 3; }
            echo '"third time"' | cairn result -
            """.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("flaky", input: 0)
        try await t.waitFor(r, .completed, timeout: 20)
        await d.stop()
        #expect(try t.result(r) == "third time")
        let steps = try String(contentsOfFile: state + ".steps", encoding: .utf8).split(separator: "\n")
        #expect(steps.count == 1, "the recorded step ran \(steps.count) times")
        let retries = try t.spool.journal(r).load().filter { $0.kind == "retry" && $0.name == "run" }
        #expect(retries.count == 2)
        #expect(retries.allSatisfy { $0.error?.message.contains("exited with code 3") == true })

        // Without a policy (another name), the first non-zero exit fails the run.
        let q = t.spool.workflowsDirectory.appending("fragile").string
        try "#!/bin/sh\necho 'early noise' >&2\necho 'the disk is on fire' >&2\nexit 5\n".write(toFile: q, atomically: true, encoding: .utf8)
        chmod(q, 0o755)
        let d2 = try await DaemonProcess(spool: t.spool)
        let r2 = try t.submit("fragile", input: 0)
        try await t.waitFor(r2, .failed, timeout: 20)
        await d2.stop()
        // Failed at once (no retry record), saying how, with the end of its stderr.
        let error = try #require(try t.state(r2).error)
        #expect(error.type == "ScriptFailed", "\(error)")  // as docs/scripts.md says
        #expect(error.message.contains("exited with code 5"), "\(error)")
        #expect(error.message.contains("the disk is on fire"), "\(error)")
        #expect(try t.journalSummary(r2).filter { $0 == "retry:run" }.isEmpty)
    }
}

/// What a script's helper call costs in processes (issue: script steps cost 31 ms each).
@Suite(.serialized) struct ScriptHelperCostTests {
    /// `cairn step NAME -- CMD` starts CMD once: the helper finds it on PATH itself instead of
    /// forking a child to try execve in each directory before the right one (each fork of the
    /// large helper process cost about a millisecond, and PATH often has a dozen entries).
    @Test func aStepsCommandIsStartedOnceNotTriedInEachPathDirectory() async throws {
        let t = try TempSpool()
        let p = t.spool.workflowsDirectory.appending("one").string
        try """
            #!/bin/sh
            cairn step s -- true
            echo '"ok"' | cairn result -
            """.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
        let trace = t.path.appending("trace").string
        let missing = (1...6).map { t.path.appending("nothing-\($0)").string }
        let daemon = try Binary.start("/usr/bin/strace", ["-f", "-e", "trace=execve", "-o", trace, "--", Binary.path("cairn-fixtures"), "daemon", "--spool", t.spool.root.string, "--log-level", "warning"],
                                      env: ["PATH": (missing + ["/usr/bin", "/bin"]).joined(separator: ":")])
        let r = try t.submit("one", input: 0)
        do {
            try await t.waitFor(r, .completed, timeout: 30)
        } catch {
            kill(daemon.0.processIdentifier, SIGTERM)
            _ = await Binary.finish(daemon)
            throw error
        }
        let children = (try? String(contentsOfFile: "/proc/\(daemon.0.processIdentifier)/task/\(daemon.0.processIdentifier)/children", encoding: .utf8)) ?? ""
        for c in children.split(separator: " ").compactMap({ Int32($0) }) { kill(c, SIGTERM) }
        _ = await Binary.finish(daemon)
        let lines = try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n")
        let tries = lines.filter { $0.contains("execve(\"") && $0.contains("/nothing-") && $0.contains("/true\"") }
        #expect(tries.isEmpty, "the step's command was tried in \(tries.count) PATH directories where it is not:\n\(tries.prefix(3).joined(separator: "\n"))")
        #expect(lines.contains { $0.contains("execve(\"/usr/bin/true\"") }, "the command ran")
    }
}
