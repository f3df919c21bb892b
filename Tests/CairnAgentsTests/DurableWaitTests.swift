import Cairn
import CairnAgents
import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// Long waits between attempts are durable waits of the run, not sleeps in the process.
@Suite struct DurableWaitTests {
    @Test func aLongRetryAfterBecomesADurableWaitAndTheCallCarriesOnAfterIt() async throws {
        let fake = try await FakeLLM.start(queue: [["status": 429, "retry_after": "600"], reply("after the wait", usage: (20, 4))])
        let t = try TempSpool()
        let c = LLMClient(providers: [OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: nil)])
        let clock = ManualClock()
        let wf = AnyWorkflow(name: "w") { ctx, _ in
            let a = try await ctx.llm("call", model: "oa:m", messages: [.user("x")], client: c)
            try await ctx.sleep(for: .seconds(10))
            return .string(a.content)
        }
        let id = try t.submit("w", input: 0)
        let engine = t.engine([wf], clock: clock)
        let t0 = clock.now()
        guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("not waiting"); return }
        #expect(w["kind"] == "retry" && w["step"] == "call" && w["operation"] == "llm" && w["attempt"] == 2)
        let until = try #require(w["until"]?.stringValue.flatMap(Timestamp.parse))
        #expect(abs(until.timeIntervalSince(t0) - 600) < 1)
        #expect(clock.sleepDeadlines.isEmpty, "nothing slept in process")
        #expect(try t.state(id).waitingFor == w)
        #expect(try t.journalSummary(id).contains("llm-retry:call"))

        // Woken early (a rescan, a stray file): still waiting, nothing sent, nothing written.
        let records = try t.spool.journal(id).load().count
        #expect(try await engine.advance(id) == .waiting(w))
        #expect(fake.requests.count == 1)
        #expect(try t.spool.journal(id).load().count == records)

        clock.advance(by: .seconds(601))
        guard case .waiting(let w2) = try await engine.advance(id) else { Issue.record("not at the sleep"); return }
        #expect(w2["kind"] == "timer")
        #expect(fake.requests.count == 2)
        let record = try #require(try t.spool.journal(id).load().first { $0.kind == "llm" })
        let attempts = record.data?["attempts"]?.arrayValue ?? []
        #expect(attempts.map { $0["status"]?.stringValue ?? "" } == ["rate_limited", "ok"])
        #expect(attempts.first?["retry_after_s"] == 600 && attempts.first?["next_attempt_in_s"] == 600)
        #expect(record.attempt == 2)
        #expect(try t.state(id).tokens?["input"] == 20)

        // Replayed to the end: the wait and the answer come from the journal.
        clock.advance(by: .seconds(11))
        #expect(try await engine.advance(id) == .completed("after the wait"))
        #expect(fake.requests.count == 2)
    }

    @Test func shortWaitsStayInProcess() async throws {
        let fake = try await FakeLLM.start(queue: [["status": 503, "retry_after": "2"], reply("soon")])
        let t = try TempSpool()
        let c = LLMClient(providers: [OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: nil)])
        let clock = ManualClock(autoAdvance: true)
        let wf = AnyWorkflow(name: "w") { ctx, _ in .string(try await ctx.llm("call", model: "oa:m", messages: [.user("x")], client: c).content) }
        let id = try t.submit("w", input: 0)
        #expect(try await t.engine([wf], clock: clock).advance(id) == .completed("soon"))
        #expect(clock.sleepDeadlines.count == 1)
        #expect(!(try t.journalSummary(id).contains("llm-retry:call")))
    }

    @Test func aLongBackoffAlsoWaitsDurablyAndTheNextModelFollowsWhenItIsOver() async throws {
        let fake = try await FakeLLM.start(queue: [["status": 500], ["status": 500], reply("second model")])
        let t = try TempSpool()
        let c = LLMClient(providers: [OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: nil)])
        var o = LLMOptions()
        o.retry = RetryPolicy(maxAttempts: 2, initialDelay: .seconds(30), multiplier: 2, maxDelay: .seconds(60), jitter: 0)
        let options = o
        let clock = ManualClock()
        let wf = AnyWorkflow(name: "w") { ctx, _ in
            .string(try await ctx.llm("call", models: ["oa:first", "oa:second"], messages: [.user("x")], options: options, client: c).model)
        }
        let id = try t.submit("w", input: 0)
        let engine = t.engine([wf], clock: clock)
        guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("not waiting"); return }
        #expect(w["kind"] == "retry" && w["model"] == "oa:first")
        clock.advance(by: .seconds(31))
        #expect(try await engine.advance(id) == .completed("oa:second"))
        #expect(fake.requests.map { $0["body"]?["model"]?.stringValue ?? "" } == ["first", "first", "second"])
        let record = try #require(try t.spool.journal(id).load().first { $0.kind == "llm" })
        #expect((record.data?["attempts"]?.arrayValue ?? []).map { $0["status"]?.stringValue ?? "" } == ["server_error", "server_error", "ok"])
    }
}
