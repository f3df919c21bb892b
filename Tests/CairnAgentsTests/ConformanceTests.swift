import Cairn
import CairnAgents
import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// The providers' documented response shapes, replayed byte for byte from
/// `Fixtures/conformance/` by the loopback server, streaming and not; and every early end of
/// every fixture (generated, not hand-picked), which must be a retry, never a recorded answer.
enum Conformance {
    static let root = FilePath(#filePath).removingLastComponent().appending("Fixtures/conformance")

    /// fixture (`api/file`) → `{"answer": RESPONSE}` or `{"error": STATUS}`.
    static let expected: [String: JSONValue] = {
        let data = FileManager.default.contents(atPath: root.appending("expected.json").string) ?? Data()
        let all = (try? JSONValue.parse(data))?.objectValue ?? [:]
        return all.filter { !$0.key.hasPrefix("_") }
    }()

    static var fixtures: [String] { expected.keys.sorted() }
    static var streaming: [String] { fixtures.filter { $0.hasSuffix(".sse") } }
    static var plain: [String] { fixtures.filter { $0.hasSuffix(".json") } }

    static func path(_ fixture: String) -> String { root.appending(fixture).string }
    static func bytes(_ fixture: String) -> [UInt8] { Array(FileManager.default.contents(atPath: path(fixture)) ?? Data()) }

    /// Where the stream may end early: before anything, and after each complete event
    /// (its blank line) except the last one.
    static func eventBoundaries(_ fixture: String) -> [Int] {
        let b = bytes(fixture)
        var cuts = [0]
        var i = 0
        while i + 1 < b.count {
            if b[i] == 0x0A && b[i + 1] == 0x0A, i + 2 < b.count { cuts.append(i + 2) }
            i += 1
        }
        return cuts
    }

    /// Where a JSON body may end early: before anything, and after every `{ [ , :`
    /// (no such prefix is a complete JSON value).
    static func jsonBoundaries(_ fixture: String) -> [Int] {
        let b = bytes(fixture)
        return [0] + b.indices.filter { [UInt8(ascii: "{"), UInt8(ascii: "["), UInt8(ascii: ","), UInt8(ascii: ":")].contains(b[$0]) }.map { $0 + 1 }
    }

    /// A client whose provider `p` speaks the fixture's API.
    static func client(_ fixture: String, _ fake: FakeLLM) -> LLMClient {
        fixture.hasPrefix("anthropic/")
            ? LLMClient(providers: [AnthropicProvider(name: "p", baseURL: fake.baseURL, apiKey: "sk-ant-conformance", timeout: .seconds(10))])
            : LLMClient(providers: [OpenAICompatibleProvider(name: "p", baseURL: fake.baseURL, apiKey: "sk-conformance", timeout: .seconds(10))])
    }

    static func options(_ fixture: String, attempts: Int) -> LLMOptions {
        var o = LLMOptions()
        o.stream = fixture.hasSuffix(".sse")
        o.retry = RetryPolicy(maxAttempts: attempts, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(4), jitter: 0)
        o.onRefusal = .accept
        return o
    }

    /// Compares a recorded response with the expected one.
    static func check(_ r: LLMResponse, _ want: JSONValue, _ what: String) {
        #expect(r.content == want["content"]?.stringValue, "\(what): content")
        #expect(r.finishReason == want["finish_reason"]?.stringValue, "\(what): finish_reason")
        #expect(r.usage == TokenUsage(input: Int(want["usage"]?["input"]?.intValue ?? -1), output: Int(want["usage"]?["output"]?.intValue ?? -1)), "\(what): usage")
        let calls = want["tool_calls"]?.arrayValue ?? []
        #expect(r.toolCalls.count == calls.count, "\(what): tool calls \(r.toolCalls)")
        for (got, exp) in zip(r.toolCalls, calls) {
            #expect(got.id == exp["id"]?.stringValue && got.name == exp["name"]?.stringValue, "\(what): tool call \(got)")
            #expect(got.parsedArguments == exp["arguments"], "\(what): arguments \(got.arguments)")
        }
    }

    /// The `llm` records of a run, in order.
    static func llmRecords(_ t: TempSpool, _ id: String) throws -> [JournalEntry] {
        try t.spool.journal(id).load().filter { $0.kind == "llm" }
    }
}

@Suite struct ConformanceTests {
    /// Each fixture, whole: the documented answer is recorded, or the documented error fails
    /// the attempt with the status its HTTP equivalent gets.
    @Test(arguments: Conformance.fixtures)
    func fixtureIsRecordedAsDocumented(_ fixture: String) async throws {
        let want = try #require(Conformance.expected[fixture])
        let fake = try await FakeLLM.start(queue: [["raw": .string(Conformance.path(fixture))]], default: ["status": 500])
        let t = try TempSpool()
        let c = Conformance.client(fixture, fake), options = Conformance.options(fixture, attempts: 1)
        let (id, _) = try await runLLM(t) { ctx in
            do {
                return try JSONValue(encoding: try await ctx.llm("call", model: "p:m", messages: [.user("hi")], options: options, client: c))
            } catch let e as StepFailedError {
                return .string(e.error.type)
            }
        }
        let record = try #require(try Conformance.llmRecords(t, id).first)
        let attempts = record.data?["attempts"]?.arrayValue ?? []
        #expect(fake.requests.count == 1)
        #expect(fake.requests.first?["body"]?["stream"] == (fixture.hasSuffix(".sse") ? true : nil))
        if let answer = want["answer"] {
            #expect(record.error == nil, "\(fixture): \(String(describing: record.error))")
            #expect(attempts.map { $0["status"]?.stringValue ?? "" } == ["ok"])
            Conformance.check(try (record.value ?? .null).decode(as: LLMResponse.self), answer, fixture)
        } else {
            #expect(record.error != nil)
            #expect(attempts.first?["status"] == want["error"], "\(fixture): \(attempts)")
        }
    }

    /// A stream cut after any event but the last is incomplete: the attempt fails and is
    /// retried, and the whole stream that follows is what gets recorded.
    @Test(arguments: Conformance.streaming)
    func earlyEOFAtEveryEventBoundaryIsARetry(_ fixture: String) async throws {
        let want = try #require(Conformance.expected[fixture])
        let cuts = Conformance.eventBoundaries(fixture)
        #expect(!cuts.isEmpty)
        let p = JSONValue.string(Conformance.path(fixture))
        let fake = try await FakeLLM.start(queue: cuts.flatMap { [["raw": p, "cut": .int(Int64($0))], ["raw": p]] as [JSONValue] }, default: ["status": 500])
        let t = try TempSpool()
        let c = Conformance.client(fixture, fake), options = Conformance.options(fixture, attempts: 2)
        let (id, _) = try await runLLM(t) { ctx in
            for cut in cuts {
                do { _ = try await ctx.llm("cut-\(cut)", model: "p:m", messages: [.user("hi")], options: options, client: c) } catch is StepFailedError {}
            }
            return .int(Int64(cuts.count))
        }
        let records = try Conformance.llmRecords(t, id)
        #expect(records.count == cuts.count)
        for (cut, record) in zip(cuts, records) {
            let what = "\(fixture) cut at byte \(cut)"
            let attempts = record.data?["attempts"]?.arrayValue ?? []
            #expect(attempts.count == 2, "\(what): \(attempts)")
            #expect(attempts.first?["status"] == "incomplete_response", "\(what): \(attempts.first ?? .null)")
            if let answer = want["answer"] {
                #expect(record.error == nil, "\(what): \(String(describing: record.error))")
                Conformance.check(try (record.value ?? .null).decode(as: LLMResponse.self), answer, what)
            } else {
                #expect(attempts.last?["status"] == want["error"], "\(what): \(attempts)")
            }
        }
        #expect(fake.requests.count == cuts.count * 2)
    }

    /// A JSON body cut anywhere is never an answer either.
    @Test(arguments: Conformance.plain)
    func earlyEOFInsideAJSONBodyIsARetry(_ fixture: String) async throws {
        let want = try #require(Conformance.expected[fixture]?["answer"])
        let cuts = Conformance.jsonBoundaries(fixture)
        let p = JSONValue.string(Conformance.path(fixture))
        let fake = try await FakeLLM.start(queue: cuts.flatMap { [["raw": p, "cut": .int(Int64($0))], ["raw": p]] as [JSONValue] }, default: ["status": 500])
        let t = try TempSpool()
        let c = Conformance.client(fixture, fake), options = Conformance.options(fixture, attempts: 2)
        let (id, _) = try await runLLM(t) { ctx in
            for cut in cuts {
                do { _ = try await ctx.llm("cut-\(cut)", model: "p:m", messages: [.user("hi")], options: options, client: c) } catch is StepFailedError {}
            }
            return .null
        }
        let records = try Conformance.llmRecords(t, id)
        #expect(records.count == cuts.count)
        for (cut, record) in zip(cuts, records) {
            let what = "\(fixture) cut at byte \(cut)"
            let attempts = record.data?["attempts"]?.arrayValue ?? []
            #expect(attempts.count == 2, "\(what): \(attempts)")
            #expect(["malformed_response", "incomplete_response", "transport"].contains(attempts.first?["status"]?.stringValue ?? ""), "\(what): \(attempts.first ?? .null)")
            Conformance.check(try (record.value ?? .null).decode(as: LLMResponse.self), want, what)
        }
    }

    /// The issue's case, end to end: a stream that stops before `[DONE]` on every attempt
    /// is never recorded; the chain falls back, and what arrived stays in the stream log.
    @Test func truncatedStreamIsRetriedThenFallsBackAndIsKeptInTheLog() async throws {
        let fixture = "openai/stream-text.sse"
        let cut = Conformance.eventBoundaries(fixture)[4]  // after " today.", before finish_reason
        let p = JSONValue.string(Conformance.path(fixture))
        let fake = try await FakeLLM.start(queue: [["raw": p, "cut": .int(Int64(cut))], ["raw": p, "cut": .int(Int64(cut))], ["raw": p, "cut": .int(Int64(cut))], reply("from the fallback")])
        let t = try TempSpool()
        let c = LLMClient(providers: [OpenAICompatibleProvider(name: "p", baseURL: fake.baseURL, apiKey: nil), AnthropicProvider(name: "q", baseURL: fake.baseURL, apiKey: nil)])
        let (id, out) = try await runLLM(t) { ctx in
            let r = try await ctx.llm("call", models: ["p:first", "q:second"], messages: [.user("x")], client: c)
            return .string(r.model + " " + r.content)
        }
        #expect(out == .completed("q:second from the fallback"))
        let record = try #require(try Conformance.llmRecords(t, id).first)
        #expect((record.data?["attempts"]?.arrayValue ?? []).map { $0["status"]?.stringValue ?? "" } == ["incomplete_response", "incomplete_response", "incomplete_response", "ok"])
        let log = try String(contentsOfFile: t.spool.run(id).logsDirectory.appending("call.stream.jsonl").string, encoding: .utf8)
        #expect(log.components(separatedBy: #""delta":"Your lamp""#).count - 1 == 3, "each attempt's partial text is in the log")
    }
}
