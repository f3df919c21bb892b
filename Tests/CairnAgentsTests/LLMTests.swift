import Cairn
import CairnAgents
import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

func reply(_ content: String, tools: [(String, JSONValue)] = [], usage: (Int, Int) = (11, 7)) -> JSONValue {
    var r: [String: JSONValue] = ["content": .string(content), "usage": ["input": .int(Int64(usage.0)), "output": .int(Int64(usage.1))]]
    if !tools.isEmpty { r["tool_calls"] = .array(tools.map { ["name": .string($0.0), "arguments": $0.1] }) }
    return ["reply": .object(r)]
}

/// Runs one workflow in process against the fake server.
func runLLM(_ t: TempSpool, clock: ManualClock = ManualClock(autoAdvance: true), capture: LogCapture? = nil, _ body: @escaping @Sendable (WorkflowContext) async throws -> JSONValue) async throws -> (String, AdvanceOutcome) {
    let wf = AnyWorkflow(name: "w") { ctx, _ in try await body(ctx) }
    let id = try t.submit("w", input: 0)
    let out = try await t.engine([wf], clock: clock, capture: capture).drive(id)
    return (id, out)
}

@Suite struct ProviderTests {
    func client(_ fake: FakeLLM, timeout: Duration = .seconds(5)) -> LLMClient {
        LLMClient(providers: [
            OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: "sk-test-secret", timeout: timeout),
            AnthropicProvider(name: "an", baseURL: fake.baseURL, apiKey: "sk-ant-secret", timeout: timeout),
        ])
    }

    @Test(arguments: [true, false])
    func bothShapesWithToolCallsAndUsage(stream: Bool) async throws {
        let fake = try await FakeLLM.start(queue: [reply("Looking it up", tools: [("lookup", ["id": 7])], usage: (100, 20)), reply("Done", usage: (150, 5))])
        let t = try TempSpool()
        var opts = LLMOptions()
        opts.stream = stream
        let options = opts
        let c = client(fake)
        let log = LogCapture()
        let (id, out) = try await runLLM(t, capture: log) { ctx in
            let a = try await ctx.llm("first", model: "oa:gpt-test", messages: [.user("hi")], tools: [ToolSpec(name: "lookup", description: "d", parameters: ["type": "object"])], options: options, client: c)
            let b = try await ctx.llm("second", model: "an:claude-test", messages: [.user("hi"), .assistant(a.content, toolCalls: a.toolCalls), .tool(a.toolCalls[0].id, "found")], options: options, client: c)
            return ["a": try JSONValue(encoding: a), "b": try JSONValue(encoding: b)]
        }
        guard case .completed(let v) = out else { Issue.record("\(out)"); return }
        let a = try v["a"]!.decode(as: LLMResponse.self), b = try v["b"]!.decode(as: LLMResponse.self)
        #expect(a.content.trimmingCharacters(in: .whitespaces) == "Looking it up")
        #expect(a.toolCalls.count == 1 && a.toolCalls[0].name == "lookup" && a.toolCalls[0].parsedArguments == ["id": 7])
        #expect(a.usage == TokenUsage(input: 100, output: 20) && a.model == "oa:gpt-test")
        #expect(b.content.trimmingCharacters(in: .whitespaces) == "Done" && b.model == "an:claude-test")
        let reqs = fake.requests
        #expect(reqs.count == 2)
        #expect(reqs[0]["path"] == "/v1/chat/completions" && reqs[1]["path"] == "/v1/messages")
        #expect(reqs.allSatisfy { $0["auth"] == true })
        // Anthropic: the tool result travels as a tool_result block in a user message.
        let msgs = reqs[1]["body"]?["messages"]?.arrayValue ?? []
        #expect(msgs.last?["content"]?.arrayValue?.first?["type"] == "tool_result")
        // Tokens are accounted; keys never reach the spool or the log.
        let state = try t.state(id)
        #expect(state.tokens?["input"] == 250 && state.tokens?["output"] == 25)
        let everything = try spoolText(t) + log.text
        #expect(!everything.contains("sk-test-secret") && !everything.contains("sk-ant-secret"))
        if stream {
            let log = try String(contentsOfFile: t.spool.run(id).logsDirectory.appending("first.stream.jsonl").string, encoding: .utf8)
            #expect(log.contains(#""delta":"Looking "#))
        }
    }

    /// A model with no name is a configuration error (an outside attack: `--model fake:` was
    /// sent to the provider as model ""); a colon inside a default provider's model name
    /// (`qwen2.5:7b`) stays the model's.
    @Test func aModelWithNoNameIsAConfigurationError() throws {
        let c = LLMClient(providers: [ScriptedProvider(name: "fake", responses: [])])
        for bad in ["fake:", ":", "", ":m", "m:"] {
            do {
                _ = try c.resolve(bad)
                Issue.record("'\(bad)' resolved")
            } catch let e as LLMError {
                #expect(e.kind == .configuration, "\(bad): \(e)")
            }
        }
        let (p, model) = try c.resolve("qwen2.5:7b")
        #expect(p.name == "fake" && model == "qwen2.5:7b")
        #expect(try c.resolve("fake:m").1 == "m")
    }

    @Test func retryAfterIsHonouredAndCapped() async throws {
        let fake = try await FakeLLM.start(queue: [["status": 429, "retry_after": "2"], ["status": 429, "retry_after": "100000"], reply("finally")])
        let t = try TempSpool()
        let clock = ManualClock(autoAdvance: true)
        var opts = LLMOptions()
        opts.maxRetryAfter = .seconds(30)
        let options = opts
        let c = client(fake)
        let (id, out) = try await runLLM(t, clock: clock) { ctx in
            .string(try await ctx.llm("call", model: "oa:m", messages: [.user("x")], options: options, client: c).content)
        }
        #expect(out == .completed("finally"))
        let t0 = clock.sleepDeadlines
        #expect(t0.count == 2)
        let record = try #require(try t.spool.journal(id).load().first { $0.kind == "llm" })
        let attempts = record.data?["attempts"]?.arrayValue ?? []
        #expect(attempts.count == 3)
        #expect(attempts[0]["status"] == "rate_limited" && attempts[0]["next_attempt_in_s"] == 2)
        #expect(attempts[1]["retry_after_s"] == 100000 && attempts[1]["next_attempt_in_s"] == 30)
        #expect(attempts[2]["status"] == "ok")
        #expect(record.attempt == 3)
    }

    @Test func serverErrorsThenFallbackToTheNextModel() async throws {
        let fake = try await FakeLLM.start(queue: [["status": 500], ["status": 503], ["status": 502], reply("from the fallback")])
        let t = try TempSpool()
        let c = client(fake)
        let (id, out) = try await runLLM(t) { ctx in
            let r = try await ctx.llm("call", models: ["oa:primary", "an:fallback"], messages: [.user("x")], client: c)
            return .string(r.model + " " + r.content)
        }
        #expect(out == .completed("an:fallback from the fallback"))
        let record = try #require(try t.spool.journal(id).load().first { $0.kind == "llm" })
        #expect(record.data?["model"] == "an:fallback")
        #expect(fake.requests.map { $0["body"]?["model"]?.stringValue ?? "" } == ["primary", "primary", "primary", "fallback"])
    }

    @Test func timeoutsAndMalformedResponsesAreRetried() async throws {
        // The timeout is long enough for a loaded machine to answer the other requests in
        // time (the attempt list is exact); the late reply comes far after it.
        let fake = try await FakeLLM.start(queue: [["delay": 30, "reply": ["content": "late"]], ["malformed": true], reply("good")])
        let t = try TempSpool()
        let c = client(fake, timeout: .seconds(3))
        var opts = LLMOptions()
        opts.stream = false
        let options = opts
        let (id, out) = try await runLLM(t) { ctx in
            .string(try await ctx.llm("call", model: "oa:m", messages: [.user("x")], options: options, client: c).content)
        }
        #expect(out == .completed("good"))
        let attempts = try t.spool.journal(id).load().first { $0.kind == "llm" }?.data?["attempts"]?.arrayValue ?? []
        #expect(attempts.map { $0["status"]?.stringValue ?? "" } == ["timeout", "malformed_response", "ok"])
    }

    @Test func refusalsAndMalformedToolCallsGoToTheNextModel() async throws {
        let fake = try await FakeLLM.start(queue: [
            ["reply": ["refusal": "I can't help with that", "content": ""]],
            ["reply": ["content": "x", "tool_calls": [["name": "t", "arguments": [:]]], "bad_arguments": true]],
            reply("third model answers"),
        ])
        let t = try TempSpool()
        let c = client(fake)
        var opts = LLMOptions()
        opts.stream = false
        let options = opts
        let (id, out) = try await runLLM(t) { ctx in
            let r = try await ctx.llm("call", models: ["oa:a", "oa:b", "an:c"], messages: [.user("x")], options: options, client: c)
            return .string(r.model)
        }
        #expect(out == .completed("an:c"))
        // One attempt per model, each with what went wrong, in order.
        #expect(fake.requests.map { $0["body"]?["model"]?.stringValue ?? "" } == ["a", "b", "c"])
        let attempts = try t.spool.journal(id).load().first { $0.kind == "llm" }?.data?["attempts"]?.arrayValue ?? []
        #expect(attempts.map { $0["status"]?.stringValue ?? "" } == ["refusal", "malformed_tool_call", "ok"], "\(attempts)")
        #expect(attempts.map { $0["model"]?.stringValue ?? "" } == ["oa:a", "oa:b", "an:c"], "\(attempts)")
    }

    @Test func everyModelFailingFailsTheCallAndTheRecordReplays() async throws {
        let fake = try await FakeLLM.start(queue: [], default: ["status": 401])
        let t = try TempSpool()
        let c = client(fake)
        let clock = ManualClock()
        // The failure is caught, then the run sleeps: the second advance replays the call.
        let wf = AnyWorkflow(name: "w") { ctx, _ in
            let type: String
            do {
                _ = try await ctx.llm("call", models: ["oa:a", "an:b"], messages: [.user("x")], client: c)
                type = "unexpected"
            } catch let e as StepFailedError {
                type = e.error.type + ": " + e.error.message
            }
            try await ctx.sleep(for: .seconds(60))
            return .string(type)
        }
        let id = try t.submit("w", input: 0)
        guard case .waiting = try await t.engine([wf], clock: clock).advance(id) else { Issue.record("not waiting"); return }
        #expect(fake.requests.count == 2)  // 401 is not retried; the chain is walked once
        #expect(try t.journalSummary(id).contains("llm:call"))
        clock.advance(by: .seconds(61))
        // A fresh engine (as after a restart): the recorded failure is replayed, not re-sent.
        guard case .completed(let v) = try await t.engine([wf], clock: clock).advance(id) else { Issue.record("not completed"); return }
        #expect(v.stringValue?.hasPrefix("llm_client_error: ") == true, "\(v)")
        #expect(fake.requests.count == 2, "the failed call was sent again on replay")
        #expect(try t.journalSummary(id).filter { $0 == "llm:call" }.count == 1)
    }

    @Test func replaySendsNothing() async throws {
        let fake = try await FakeLLM.start(queue: [reply("one", usage: (40, 2)), reply("two", usage: (60, 3))])
        let t = try TempSpool()
        let c = client(fake)
        let clock = ManualClock()
        let wf = AnyWorkflow(name: "w") { ctx, _ in
            let a = try await ctx.llm("a", model: "oa:m", messages: [.user("x")], client: c)
            try await ctx.sleep(for: .seconds(60))
            let b = try await ctx.llm("b", model: "oa:m", messages: [.user("x"), .assistant(a.content), .user("more")], client: c)
            return .string(b.content)
        }
        let id = try t.submit("w", input: 0)
        let engine = t.engine([wf], clock: clock)
        _ = try await engine.advance(id)
        #expect(fake.requests.count == 1)
        clock.advance(by: .seconds(61))
        let second = try await engine.advance(id)
        #expect(second == .completed(.string("two")), "\(second)")
        #expect(fake.requests.count == 2)
        let tokens = try t.state(id).tokens
        #expect(tokens?["input"] == 100 && tokens?["output"] == 5)
        #expect(tokens?["saved"] == 42)  // call "a" replayed once instead of re-sent
    }
}

func spoolText(_ t: TempSpool) throws -> String {
    var all = ""
    let e = FileManager.default.enumerator(atPath: t.spool.root.string)
    while let rel = e?.nextObject() as? String {
        if let s = try? String(contentsOfFile: t.spool.root.appending(rel).string, encoding: .utf8) { all += s }
    }
    return all
}

@Suite struct AgentLoopTests {
    @Test func toolApprovalWithEditedArgumentsReachesTheTool() async throws {
        let fake = try await FakeLLM.start(queue: [
            reply("sending", tools: [("send", ["to": "bob", "text": "draft"])]),
            reply("done"),
        ])
        let t = try TempSpool()
        let c = LLMClient(providers: [OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: nil)])
        let got = KeyBox()
        let tools = [Tool("send", description: "send", parameters: ["type": "object"], needsApproval: true, semantics: .atMostOnce) { args, key in
            got.set(args.compactText() + " " + key)
            return "sent"
        }]
        let wf = AnyWorkflow(name: "agent") { ctx, _ in
            let r = try await ctx.agent("a", models: ["oa:m"], messages: [.user("go")], tools: tools, client: c)
            return ["content": .string(r.content), "turns": .int(Int64(r.turns))]
        }
        let id = try t.submit("agent", input: 0)
        let engine = t.engine([wf])
        guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("not waiting"); return }
        let gate = try #require(w["gate"]?.stringValue)
        let req = try DurableFile.readJSON(t.spool.run(id).approvalsDirectory.appending("\(gate).request.json"))
        #expect(req["details"]?["arguments"] == ["to": "bob", "text": "draft"])
        try t.drop("approvals/\(gate).approved", in: id, content: #"{"value": {"to": "bob", "text": "edited by a human"}}"#)
        guard case .completed(let v) = try await engine.advance(id) else { Issue.record("not completed"); return }
        #expect(v["content"] == "done" && v["turns"] == 2)
        #expect(got.value?.hasPrefix(#"{"text":"edited by a human","to":"bob"}"#) == true)
        // The model saw the tool's result.
        let second = fake.requests[1]["body"]?["messages"]?.arrayValue ?? []
        #expect(second.last?["role"] == "tool" && second.last?["content"] == "sent")
    }

    @Test func rejectedToolCallIsReportedToTheModel() async throws {
        let fake = try await FakeLLM.start(queue: [reply("sending", tools: [("send", ["to": "bob"])]), reply("ok, not sending")])
        let t = try TempSpool()
        let c = LLMClient(providers: [OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: nil)])
        let ran = KeyBox()
        let tools = [Tool("send", description: "send", parameters: ["type": "object"], needsApproval: true) { _, key in ran.set(key); return "sent" }]
        let wf = AnyWorkflow(name: "agent") { ctx, _ in .string(try await ctx.agent("a", models: ["oa:m"], messages: [.user("go")], tools: tools, client: c).content) }
        let id = try t.submit("agent", input: 0)
        let engine = t.engine([wf])
        guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("not waiting"); return }
        try t.drop("approvals/\(w["gate"]!.stringValue!).rejected", in: id, content: #"{"reason": "wrong person"}"#)
        #expect(try await engine.advance(id) == .completed("ok, not sending"))
        #expect(ran.value == nil)
        let last = fake.requests[1]["body"]?["messages"]?.arrayValue?.last
        #expect(last?["content"]?.stringValue?.contains("wrong person") == true)
    }

    @Test func hundredTurnConversationGrowsLinearlyOnDisk() async throws {
        let t = try TempSpool()
        let responses: [JSONValue] = (0..<100).map { ["content": .string("answer \($0): " + String(repeating: "a", count: 600))] }
        let c = LLMClient(providers: [ScriptedProvider(name: "s", responses: responses)])
        let wf = AnyWorkflow(name: "chat") { ctx, _ in
            var messages: [ChatMessage] = [.system("You are terse.")]
            for turn in 0..<100 {
                messages.append(.user("question \(turn): " + String(repeating: "q", count: 600)))
                let r = try await ctx.llm("turn-\(turn)", model: "s:m", messages: messages, client: c)
                messages.append(.assistant(r.content))
            }
            return .int(Int64(messages.count))
        }
        let id = try t.submit("chat", input: 0)
        #expect(try await t.engine([wf]).drive(id) == .completed(201))
        let run = t.spool.run(id)
        func bytes(_ dir: FilePath) throws -> Int {
            try Spool.list(dir).reduce(0) { total, n in
                var st = stat()
                _ = stat(dir.appending(n).string, &st)
                return total + Int(st.st_size)
            }
        }
        let blobs = try bytes(run.blobsDirectory), journal = try bytes(run.journalDirectory)
        let messageBytes = 201 * 640
        print("100-turn conversation through ctx.llm: blobs \(blobs) bytes, journal \(journal) bytes, for ~\(messageBytes) bytes of messages (a copy per record would be ~\(100 * messageBytes / 2) bytes)")
        #expect(blobs + journal < messageBytes * 4)
    }
}

final class KeyBox: @unchecked Sendable {
    private let lock = NSLock()
    private var v: String?
    func set(_ s: String) { lock.withLock { v = s } }
    var value: String? { lock.withLock { v } }
}
