import Cairn
import CairnAgents
import CairnSpool
import CairnTesting
import Foundation
import Synchronization
import SystemPackage
import Testing

/// Issue 16: an answer that is well-formed but wrong (not the JSON the workflow needs, or one
/// its validator rejects) is a failure too: repaired, then the next model, then the declared
/// end — against the fake server on loopback.
@Suite struct AnswerValidationTests {
    final class Counter: Sendable {
        private let n = Mutex(0)
        func add() { n.withLock { $0 += 1 } }
        var value: Int { n.withLock { $0 } }
    }

    struct Triage: Codable, Sendable, Equatable {
        var priority: String
        var ticket: String
    }

    static let schema: JSONValue = [
        "type": "object",
        "properties": ["priority": ["type": "string", "enum": ["low", "high"]], "ticket": ["type": "string"]],
        "required": ["priority", "ticket"], "additionalProperties": false,
    ]

    func client(_ fake: FakeLLM) -> LLMClient {
        LLMClient(providers: [
            OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: "sk-test-secret", timeout: .seconds(5)),
            AnthropicProvider(name: "an", baseURL: fake.baseURL, apiKey: "sk-ant-secret", timeout: .seconds(5)),
        ])
    }

    /// Must name ticket T-1.
    static let namesTheTicket: @Sendable (Triage) -> String? = { $0.ticket == "T-1" ? nil : "the ticket is T-1, not \($0.ticket)" }

    @Test func anAnswerThatFailsTheSchemaIsRepairedOnTheSecondAttempt() async throws {
        let fake = try await FakeLLM.start(queue: [reply("Sure! The priority is high.", usage: (50, 9)), reply(#"{"priority": "high", "ticket": "T-1"}"#, usage: (80, 12))])
        let t = try TempSpool()
        let c = client(fake)
        let (id, out) = try await runLLM(t) { ctx in
            let v = try await ctx.llm("classify", models: ["oa:m"], messages: [.user("Classify T-1")], output: Triage.self, schema: Self.schema, client: c, validate: Self.namesTheTicket)
            return try JSONValue(encoding: v)
        }
        #expect(out == .completed(["priority": "high", "ticket": "T-1"]), "\(out)")
        let reqs = fake.requests
        #expect(reqs.count == 2)
        #expect(reqs[0]["body"]?["response_format"]?["type"] == "json_schema", "structured output is asked for: \(reqs[0])")
        #expect(reqs[0]["body"]?["response_format"]?["json_schema"]?["schema"] == Self.schema)
        // The repair: the rejected answer, then why.
        let msgs = reqs[1]["body"]?["messages"]?.arrayValue ?? []
        #expect(msgs.count == 3 && msgs[1]["role"] == "assistant" && msgs[1]["content"] == "Sure! The priority is high.", "\(msgs)")
        #expect(msgs[2]["content"]?.stringValue?.contains("not JSON") == true, "\(msgs)")
        // The journal tells the story; only the validated answer is the result.
        let rec = try #require(try t.spool.journal(id).load().last { $0.kind == "llm" })
        #expect(rec.data?["repairs"] == 1)
        #expect(rec.data?["tokens_rejected"] == ["input": 50, "output": 9])
        let attempts = rec.data?["attempts"]?.arrayValue ?? []
        #expect(attempts.first?["status"] == "invalid_answer" && attempts.first?["answer"] == "Sure! The priority is high.", "\(attempts)")
        let tokens = try t.state(id).tokens
        #expect(tokens?["rejected"] == 59 && tokens?["total"] == 151, "\(String(describing: tokens))")
    }

    /// Anthropic: the schema travels as a forced tool whose input is the answer; the
    /// validator's reason goes back in the repair.
    @Test func anthropicsForcedToolCarriesTheSchemaAndTheValidatorsReasonIsRepaired() async throws {
        let fake = try await FakeLLM.start(queue: [
            reply("", tools: [("answer", ["priority": "low", "ticket": "T-9"])]),
            reply("", tools: [("answer", ["priority": "low", "ticket": "T-1"])]),
        ])
        let t = try TempSpool()
        let c = client(fake)
        let (_, out) = try await runLLM(t) { ctx in
            try JSONValue(encoding: try await ctx.llm("classify", models: ["an:claude"], messages: [.user("Classify T-1")], output: Triage.self, schema: Self.schema, client: c, validate: Self.namesTheTicket))
        }
        #expect(out == .completed(["priority": "low", "ticket": "T-1"]), "\(out)")
        let reqs = fake.requests
        #expect(reqs[0]["body"]?["tool_choice"] == ["type": "tool", "name": "answer"], "\(reqs[0])")
        #expect(reqs[0]["body"]?["tools"]?.arrayValue?.first?["input_schema"] == Self.schema)
        #expect(reqs.count == 2 && (reqs[1]["body"]?["messages"]?.compactText().contains("the ticket is T-1, not T-9") ?? false), "\(reqs)")
    }

    @Test func anAnswerThatKeepsFailingFallsBackToTheNextModel() async throws {
        let fake = try await FakeLLM.start(queue: [reply("no"), reply("still no"), reply(#"{"priority": "low", "ticket": "T-1"}"#)])
        let t = try TempSpool()
        let c = client(fake)
        var o = LLMOptions()
        o.repairs = 1
        let options = o
        let (id, out) = try await runLLM(t) { ctx in
            try JSONValue(encoding: try await ctx.llm("classify", models: ["oa:first", "oa:second"], messages: [.user("Classify T-1")], output: Triage.self, schema: Self.schema, options: options, client: c))
        }
        #expect(out == .completed(["priority": "low", "ticket": "T-1"]), "\(out)")
        let reqs = fake.requests
        #expect(reqs.map { $0["body"]?["model"] } == ["first", "first", "second"], "\(reqs.map { $0["body"]?["model"] })")
        // The next model starts from the conversation, not from the first model's repairs.
        #expect(reqs[2]["body"]?["messages"]?.arrayValue?.count == 1)
        let rec = try #require(try t.spool.journal(id).load().last { $0.kind == "llm" })
        #expect(rec.data?["model"] == "oa:second" && rec.data?["repairs"] == 1)
    }

    @Test func anAnswerRejectedEverywhereFailsTheCallAsDeclared() async throws {
        let fake = try await FakeLLM.start(default: reply("never JSON"))
        let t = try TempSpool()
        let c = client(fake)
        let (id, out) = try await runLLM(t) { ctx in
            try JSONValue(encoding: try await ctx.llm("classify", models: ["oa:a", "an:b"], messages: [.user("Classify T-1")], output: Triage.self, schema: Self.schema, client: c))
        }
        guard case .failed(let info) = out else { Issue.record("\(out)"); return }
        #expect(info.type == "llm_invalid_answer" || info.message.contains("llm_invalid_answer"), "\(info)")
        #expect(fake.requests.count == 6, "1 + 2 repairs per model: \(fake.requests.count)")
        let rec = try #require(try t.spool.journal(id).load().last { $0.kind == "llm" })
        #expect(rec.error?.type == "llm_invalid_answer" && rec.error?.retryable == false)
        #expect((try t.state(id).tokens?["rejected"]?.intValue ?? 0) == 6 * 18, "the rejected answers' tokens are counted")

        // Declared otherwise: the last answer is accepted as it is.
        let t2 = try TempSpool()
        var o = LLMOptions()
        o.onInvalidAnswer = .accept
        o.repairs = 0
        o.validator = { r in r.content.contains("JSON") ? "mentions JSON" : nil }
        let options = o
        let (id2, out2) = try await runLLM(t2) { ctx in .string(try await ctx.llm("free", models: ["oa:a"], messages: [.user("hi")], options: options, client: c).content) }
        #expect(out2 == .completed("never JSON"), "\(out2)")
        #expect(try t2.spool.journal(id2).load().last { $0.kind == "llm" }?.data?["accepted_invalid"] == true)
    }

    /// Declared `.askPerson`: when every model's answers were rejected, a person decides at
    /// the gate `answer-NAME` — a wrong edited value is refused like a bad drop, a good one
    /// is the answer; a rejection fails the call. Nothing is sent again meanwhile.
    @Test func anAnswerRejectedEverywhereWaitsForAPersonWhenDeclared() async throws {
        let fake = try await FakeLLM.start(default: reply("never JSON"))
        let t = try TempSpool()
        let c = client(fake)
        var o = LLMOptions()
        o.repairs = 0
        o.onInvalidAnswer = .askPerson
        let options = o
        let wf = AnyWorkflow(name: "w") { ctx, _ in
            try JSONValue(encoding: try await ctx.llm("classify", models: ["oa:m"], messages: [.user("Classify T-1")], output: Triage.self, schema: Self.schema, options: options, client: c))
        }
        let engine = t.engine([wf])
        let id = try t.submit("w", input: 0)
        guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("not waiting: \(try t.state(id))"); return }
        #expect(w["kind"] == "answer" && w.gate == "answer-classify", "\(w)")
        let approvals = t.spool.run(id).approvalsDirectory
        let req = try DurableFile.readJSON(approvals.appending("answer-classify.request.json"))
        #expect(req["answer"] == "never JSON" && req["rejected"]?.arrayValue?.first?["reason"]?.stringValue?.contains("not JSON") == true, "\(req)")
        // A value that is wrong too is refused; the gate stays open; nothing is sent.
        try t.drop("approvals/answer-classify.approved", in: id, content: #"{"value": "{\"priority\": \"urgent\"}"}"#)
        guard case .waiting(let w2) = try await engine.advance(id) else { Issue.record("a wrong edit must not end the run"); return }
        #expect(w2.refused?.contains("rejected too") == true, "\(w2)")
        #expect(DurableFile.exists(Drops.errorFile(for: approvals.appending("answer-classify.approved"))))
        try t.drop("approvals/answer-classify.approved", in: id, content: #"{"value": "{\"priority\": \"low\", \"ticket\": \"T-1\"}"}"#)
        #expect(try await engine.advance(id) == .completed(["priority": "low", "ticket": "T-1"]))
        #expect(fake.requests.count == 1, "asking a person sent nothing more")
        let rec = try #require(try t.spool.journal(id).load().last { $0.kind == "llm" })
        #expect(rec.data?["edited_by_person"] == true && rec.data?["decided_by"] != nil)
        #expect(DurableFile.exists(t.spool.run(id).directory.appending("decisions/answer-classify.approved")))

        // Rejected: the call fails.
        let id2 = try t.submit("w", input: 0)
        _ = try await engine.advance(id2)
        try t.drop("approvals/answer-classify.rejected", in: id2, content: #"{"reason": "no good"}"#)
        guard case .failed(let info) = try await engine.advance(id2) else { Issue.record("not failed"); return }
        #expect(info.message.contains("no good"), "\(info)")
    }

    /// An attack found repairs sent past the run's token budget (21 requests against a
    /// budget of 50): a repair is a send like any other, checked with what the rejected
    /// answers cost; and state.json counts those before the call ends.
    @Test func repairsStayWithinTheTokenBudget() async throws {
        let fake = try await FakeLLM.start(default: reply("never JSON", usage: (30, 10)))
        let t = try TempSpool()
        let c = client(fake)
        var o = LLMOptions()
        o.repairs = 10
        o.tokenBudget = 100
        let options = o
        let (id, out) = try await runLLM(t) { ctx in
            try JSONValue(encoding: try await ctx.llm("classify", models: ["oa:m"], messages: [.user("Classify T-1")], output: Triage.self, schema: Self.schema, options: options, client: c))
        }
        guard case .waiting(let w) = out else { Issue.record("\(out)"); return }
        #expect(w["kind"] == "budget", "\(w)")
        #expect(fake.requests.count <= 3, "\(fake.requests.count) requests against a budget of 100 at 40 each")
        let tokens = try t.state(id).tokens
        #expect((tokens?["rejected"]?.intValue ?? 0) == Int64(fake.requests.count * 40), "\(String(describing: tokens))")
    }

    /// Replay returns the recorded answer: nothing is sent, the validator is not called.
    @Test func replaySendsNothingAndDoesNotCallTheValidator() async throws {
        let fake = try await FakeLLM.start(queue: [reply("bad"), reply(#"{"priority": "high", "ticket": "T-1"}"#)])
        let t = try TempSpool()
        let c = client(fake)
        let calls = Counter()
        let wf = AnyWorkflow(name: "w") { ctx, _ in
            let v = try await ctx.llm("classify", models: ["oa:m"], messages: [.user("Classify T-1")], output: Triage.self, schema: Self.schema, client: c) { v in
                calls.add()
                return Self.namesTheTicket(v)
            }
            _ = try await ctx.waitForEvent("go")
            return try JSONValue(encoding: v)
        }
        let engine = t.engine([wf])
        let id = try t.submit("w", input: 0)
        guard case .waiting = try await engine.advance(id) else { Issue.record("not waiting"); return }
        #expect(fake.requests.count == 2 && calls.value == 1)
        try t.drop("events/go.json", in: id)
        #expect(try await engine.advance(id) == .completed(["priority": "high", "ticket": "T-1"]))
        #expect(fake.requests.count == 2, "replay sent nothing")
        #expect(calls.value == 1, "replay did not validate again")
    }
}
