import CairnSpool
import CairnTesting
import Foundation
import Testing

/// `cairn llm` inside script workflows, under a real daemon.
@Suite(.serialized) struct AgentScriptTests {
    func install(_ t: TempSpool, _ name: String, _ text: String) throws {
        let p = t.spool.workflowsDirectory.appending(name).string
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
    }

    func configure(_ t: TempSpool, port: Int) throws {
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["llm"] = ["providers": ["fake": ["type": "openai", "base_url": .string("http://127.0.0.1:\(port)/v1")]]]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
    }

    /// A prompt file that is not there is an error before anything is sent.
    @Test func llmWithAMissingPromptFileFailsAndSendsNothing() async throws {
        let fake = try await FakeLLMProcess(queue: [])
        let t = try TempSpool()
        try configure(t, port: fake.port)
        try install(t, "ask", """
            #!/usr/bin/env bash
            set -u
            cairn llm ask --model fake:m --prompt does-not-exist.txt > answer.txt 2> error.txt
            code=$?
            printf '{"code": %s, "error": %s}' "$code" "$(jq -Rs . < error.txt)" | cairn result -
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("ask", input: [:] as JSONValue)
        try await t.waitFor(r, .completed, timeout: 20)
        await d.stop()
        let out = try t.result(r)
        #expect(out["code"] != 0, "\(out)")
        #expect(out["error"]?.stringValue?.contains("does-not-exist.txt") == true, "\(out)")
        #expect(fake.requests.isEmpty, "nothing was sent: \(fake.requests)")
    }

    /// Issue 16 for scripts: `--schema` asks for structured output and `--validate CMD`
    /// rejects an answer with a reason; the model gets it back and the repaired answer is the
    /// one recorded and printed; a rerun of the script sends and validates nothing.
    @Test func aScriptsValidatorRejectsAnAnswerAndTheRepairIsRecorded() async throws {
        let fake = try await FakeLLMProcess(queue: [["reply": ["content": #"{"ticket": "T-2"}"#]], ["reply": ["content": #"{"ticket": "T-1"}"#]]])
        let t = try TempSpool()
        try configure(t, port: fake.port)
        try #"{"type": "object", "properties": {"ticket": {"type": "string"}}, "required": ["ticket"]}"#.write(toFile: t.spool.root.appending("ticket.schema.json").string, atomically: true, encoding: .utf8)
        let counter = t.path.appending("validations").string
        try install(t, "classify", """
            #!/usr/bin/env bash
            set -euo pipefail
            answer=$(echo "Which ticket is this? T-1" | cairn llm classify --model fake:m --schema "$CAIRN_SPOOL/ticket.schema.json" \\
                --validate 'echo x >> \(counter); jq -e ".ticket == \\"T-1\\"" >/dev/null || { echo "the ticket is T-1" >&2; exit 1; }')
            cairn sleep 1s
            printf '%s' "$answer" | cairn result -
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("classify", input: [:] as JSONValue)
        try await t.waitFor(r, .completed, timeout: 30)
        await d.stop()
        #expect(try t.result(r) == ["ticket": "T-1"])
        let reqs = fake.requests
        #expect(reqs.count == 2, "\(reqs.count) requests")
        #expect(reqs.first?["body"]?["response_format"]?["json_schema"]?["schema"]?["required"] == ["ticket"], "\(String(describing: reqs.first))")
        #expect(reqs.last?["body"]?["messages"]?.compactText().contains("the ticket is T-1") == true)
        let validations = ((try? String(contentsOfFile: counter, encoding: .utf8)) ?? "").split(separator: "\n").count
        #expect(validations == 2, "the script ran again after its sleep: the recorded answer was not validated again (\(validations))")
        let show = try Binary.cairn("show", r, spool: t.spool)
        #expect(show.stdout.contains("repaired: 1 answer rejected"), "\(show.stdout)")
    }

    /// What an attack on `--validate` found: a validator that reads none of the answer
    /// crashed `cairn llm` (SIGILL, nothing recorded) about half the time; one that printed
    /// over 64 KiB failed the call unrecorded; one that cannot run was sent to the model as
    /// the reason. Now: stdin and outputs are files, only the first line is the reason, and
    /// a validator that cannot run fails the call at once (recorded, one request).
    @Test func aValidatorThatIgnoresItsInputOrCannotRunIsHandled() async throws {
        let fake = try await FakeLLMProcess(queue: [], defaultStep: ["reply": ["content": .string(String(repeating: "x", count: 200_000))]])
        let t = try TempSpool()
        try configure(t, port: fake.port)
        try install(t, "validators", """
            #!/usr/bin/env bash
            for i in 1 2 3 4; do
              echo hi | cairn llm quiet-$i --model fake:m --repairs 0 --validate 'exit 0' > /dev/null; echo "quiet $?" >> codes.txt
            done
            echo hi | cairn llm loud --model fake:m --repairs 1 --validate 'seq 1 100000; exit 1' > /dev/null 2> loud.txt; echo "loud $?" >> codes.txt
            echo hi | cairn llm broken --model fake:m --model fake:n --validate 'jqq -e .x' > /dev/null 2> broken.txt; echo "broken $?" >> codes.txt
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("validators", input: [:] as JSONValue)
        try await t.waitFor(r, .completed, timeout: 60)
        await d.stop()
        let work = t.spool.run(r).workDirectory
        let codes = try String(contentsOfFile: work.appending("codes.txt").string, encoding: .utf8)
        #expect(codes == "quiet 0\nquiet 0\nquiet 0\nquiet 0\nloud 1\nbroken 1\n", "\(codes)")
        let journal = try t.spool.journal(r).load()
        let loud = try #require(journal.last { $0.kind == "llm" && $0.name == "loud" })
        #expect(loud.error?.type == "llm_invalid_answer" && loud.data?["attempts"]?.arrayValue?.first?["reason"] == "1", "the first line is the reason: \(String(describing: loud.data?["attempts"]))")
        let broken = try #require(journal.last { $0.kind == "llm" && $0.name == "broken" })
        #expect(broken.error?.type == "llm_validator_failed" && broken.error?.message.contains("cannot run") == true, "\(String(describing: broken.error))")
        let brokenRequests = fake.requests.filter { ($0["body"]?["model"]?.stringValue ?? "") == "n" }
        #expect(brokenRequests.isEmpty, "a validator that cannot run is not the next model's problem")
        #expect(try String(contentsOfFile: work.appending("broken.txt").string, encoding: .utf8).contains("cannot run"))
    }

    static let ask = """
        #!/usr/bin/env bash
        set -euo pipefail
        answer=$(echo "hello" | cairn llm ask --model fake:m)
        printf '%s' "$answer" | jq -Rs . | cairn result -
        """

    /// A 10-minute Retry-After: the run waits durably (kind retry, with its due time), its
    /// slot goes to another run under --concurrency 1, and the wait survives a kill -9.
    @Test func aTenMinuteRetryAfterFreesTheSlotAndSurvivesARestart() async throws {
        let fake = try await FakeLLMProcess(queue: [["status": 429, "retry_after": "600"], ["reply": ["content": "B answered"]]])
        let t = try TempSpool()
        try configure(t, port: fake.port)
        try install(t, "ask", Self.ask)
        var d = try await DaemonProcess(spool: t.spool, args: ["--concurrency", "1"])
        let a = try t.submit("ask", input: [:] as JSONValue)
        let submitted = Date()
        try await t.waitFor(a, .waiting, timeout: 20)
        let w = try #require(try t.state(a).waitingFor)
        #expect(w["kind"] == "retry" && w["step"] == "ask" && w["operation"] == "llm", "\(w)")
        let until = try #require(w["until"]?.stringValue.flatMap(Timestamp.parse))
        #expect(until.timeIntervalSince(submitted) > 590 && until.timeIntervalSince(submitted) < 620, "due \(until)")
        // The slot is free: another run goes through while the first one waits.
        let b = try t.submit("ask", input: [:] as JSONValue)
        try await t.waitFor(b, .completed, timeout: 20)
        #expect(try t.result(b) == "B answered")
        #expect(t.status(a) == .waiting)
        // Killed and restarted: still waiting for the same due time, nothing re-sent.
        await d.kill9()
        d = try await DaemonProcess(spool: t.spool, args: ["--concurrency", "1"])
        // The restarted daemon re-advances waiting runs (the script replays up to the wait,
        // briefly running); it ends waiting on the same thing.
        try await waitUntil("the restarted daemon looked at the run") { d.log.contains(a) }
        do {
            try await waitUntil("waiting again, for the same due time", timeout: 20) {
                let st = try t.state(a)
                return st.status == .waiting && st.waitingFor == w
            }
        } catch {
            Issue.record("\(error): first wait \(w), state \(String(describing: try? t.state(a))), journal \(String(describing: try? t.journalSummary(a))), log \(d.log.suffix(3000))")
        }
        #expect(fake.requests.count == 2)
        let why = try Binary.cairn("why", a, spool: t.spool)
        #expect(why.stdout.contains("ask") && why.stdout.contains(w["until"]?.stringValue ?? "?"), "\(why.stdout)")
        await d.stop()
    }

    /// A shorter durable wait, across a kill -9: the restarted daemon resumes the call when
    /// it is due, and the script gets its answer.
    @Test func aDurableRetryWaitResumesAfterARestart() async throws {
        let fake = try await FakeLLMProcess(queue: [["status": 503, "retry_after": "8"], ["reply": ["content": "after the wait"]]])
        let t = try TempSpool()
        try configure(t, port: fake.port)
        try install(t, "ask", Self.ask)
        var d = try await DaemonProcess(spool: t.spool)
        let a = try t.submit("ask", input: [:] as JSONValue)
        try await t.waitFor(a, .waiting, timeout: 20)
        #expect(try t.state(a).waitingFor?["kind"] == "retry")
        await d.kill9()
        d = try await DaemonProcess(spool: t.spool)
        try await t.waitFor(a, .completed, timeout: 30)
        await d.stop()
        #expect(try t.result(a) == "after the wait")
        #expect(fake.requests.count == 2)
        let record = try #require(try t.spool.journal(a).load().first { $0.kind == "llm" })
        #expect((record.data?["attempts"]?.arrayValue ?? []).map { $0["status"]?.stringValue ?? "" } == ["server_error", "ok"])
    }

    /// `cairn why` at a tool call's approval gate shows the tool and the arguments it
    /// would run with, not only the summary.
    @Test func whyShowsAToolCallsProposedArguments() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("triage-ticket", input: ["ticket": ["id": "T-7", "from": "ann@example.com", "subject": "Broken lamp", "body": "It arrived broken."]] as JSONValue)
        try await t.waitFor(r, .waiting, timeout: 20)
        await d.stop()
        let why = try Binary.cairn("why", r, spool: t.spool)
        #expect(why.code == 0, "\(why.stderr)")
        #expect(why.stdout.contains("send_reply"), "\(why.stdout)")
        #expect(why.stdout.contains(#""to":"ann@example.com""#) && why.stdout.contains("Re: Broken lamp"), "\(why.stdout)")
    }

    /// `cairn llm --token-budget`: the call that would exceed it waits at a gate that
    /// `cairn why` explains and `cairn approve --value` raises.
    @Test func aScriptsTokenBudgetIsAGateAPersonRaises() async throws {
        let fake = try await FakeLLMProcess(queue: [["reply": ["content": "one", "usage": ["input": 40, "output": 20]]], ["reply": ["content": "two"]]])
        let t = try TempSpool()
        try configure(t, port: fake.port)
        try install(t, "two", """
            #!/usr/bin/env bash
            set -euo pipefail
            a=$(echo "first question" | cairn llm a --model fake:m --token-budget 50)
            b=$(echo "second question" | cairn llm b --model fake:m --token-budget 50)
            printf '%s %s' "$a" "$b" | jq -Rs . | cairn result -
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("two", input: [:] as JSONValue)
        try await t.waitFor(r, .waiting, timeout: 20)
        let w = try #require(try t.state(r).waitingFor)
        #expect(w["kind"] == "budget" && w["gate"] == "budget-b-1" && w["spent"] == 60, "\(w)")
        #expect(fake.requests.count == 1)
        let why = try Binary.cairn("why", r, spool: t.spool)
        #expect(why.stdout.contains("token budget") && why.stdout.contains("cairn approve \(r) budget-b-1"), "\(why.stdout)")
        let v = t.path.appending("v.json").string
        try #"{"tokens": 500}"#.write(toFile: v, atomically: true, encoding: .utf8)
        let approve = try Binary.cairn("approve", r, "budget-b-1", "--value", v, spool: t.spool)
        #expect(approve.code == 0, "\(approve.stderr)")
        try await t.waitFor(r, .completed, timeout: 20)
        await d.stop()
        #expect(try t.result(r) == "one two")
        #expect(fake.requests.count == 2)
    }

    /// A script's recorded LLM calls answered from the journal on a later execution count
    /// as tokens saved, as they do for Swift workflows.
    @Test func tokensSavedCountsAScriptsReplayedCalls() async throws {
        let fake = try await FakeLLMProcess(queue: [["reply": ["content": "one", "usage": ["input": 30, "output": 12]]]])
        let t = try TempSpool()
        try configure(t, port: fake.port)
        try install(t, "gated", """
            #!/usr/bin/env bash
            set -euo pipefail
            a=$(echo "question" | cairn llm a --model fake:m)
            cairn approval go > /dev/null
            printf '%s' "$a" | jq -Rs . | cairn result -
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("gated", input: [:] as JSONValue)
        try await t.waitFor(r, .waiting, timeout: 20)
        #expect(try t.state(r).tokens?["input"] == 30)
        try t.drop("approvals/go.approved", in: r)
        try await t.waitFor(r, .completed, timeout: 20)
        await d.stop()
        #expect(try t.result(r) == "one")
        #expect(fake.requests.count == 1)
        let tokens = try t.state(r).tokens
        #expect(tokens?["saved"] == 42, "\(String(describing: tokens))")
    }
}
