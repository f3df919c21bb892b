import Cairn
import CairnAgents
import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// A run's token budget: a call that would exceed it waits at a gate a person decides.
@Suite struct BudgetTests {
    static let long = String(repeating: "Please summarise the ticket thread above in two lines. ", count: 2)  // ~110 chars: ~28 tokens

    func workflow(_ c: LLMClient, _ options: LLMOptions, sleep: Bool = false) -> AnyWorkflow {
        AnyWorkflow(name: "w") { ctx, _ in
            let a = try await ctx.llm("a", model: "oa:m", messages: [.user("x")], options: options, client: c)
            do {
                let b = try await ctx.llm("b", model: "oa:m", messages: [.user(Self.long)], options: options, client: c)
                if sleep { try await ctx.sleep(for: .seconds(10)) }
                return .string(a.content + " / " + b.content)
            } catch let e as StepFailedError {
                return .string(e.error.type + ": " + e.error.message)
            }
        }
    }

    @Test func aCallThatWouldExceedTheBudgetWaitsUntilAPersonRaisesIt() async throws {
        let fake = try await FakeLLM.start(queue: [reply("first", usage: (70, 20)), reply("second", usage: (40, 5))])
        let t = try TempSpool()
        let c = LLMClient(providers: [OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: nil)])
        var o = LLMOptions()
        o.tokenBudget = 100
        let clock = ManualClock()
        let engine = t.engine([workflow(c, o, sleep: true)], clock: clock)
        let id = try t.submit("w", input: 0)
        guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("not waiting"); return }
        #expect(w["kind"] == "budget" && w["gate"] == "budget-b-1" && w["step"] == "b")
        #expect(w["spent"] == 90 && w["budget"] == 100 && (w["estimate"]?.intValue ?? 0) > 10)
        #expect(fake.requests.count == 1, "the call over budget was not sent")
        let request = try DurableFile.readJSON(t.spool.run(id).approvalsDirectory.appending("budget-b-1.request.json"))
        #expect(request["summary"]?.stringValue?.contains("token budget") == true)
        // Woken without a decision: the same wait, nothing written.
        let n = try t.spool.journal(id).load().count
        #expect(try await engine.advance(id) == .waiting(w))
        #expect(try t.spool.journal(id).load().count == n)

        // A value that is no budget (an outside attack: -5 and 0 were recorded as budgets,
        // Int64.max set up an overflow) is refused and set aside; the gate still waits.
        for bad in [#"{"value": {"tokens": -5}}"#, "0", #"{"tokens": 9223372036854775807}"#, #"{"tokens": "abc"}"#, "1.5"] {
            try t.drop("approvals/budget-b-1.approved", in: id, content: bad)
            #expect(try await engine.advance(id) == .waiting(w), "\(bad)")
            #expect(!DurableFile.exists(t.spool.run(id).approvalsDirectory.appending("budget-b-1.approved")), "\(bad) was not set aside")
        }
        #expect(try t.spool.journal(id).load().count == n, "a refused value recorded nothing")
        try t.drop("approvals/budget-b-1.approved", in: id, content: #"{"value": {"tokens": 1000}}"#)
        guard case .waiting(let sleeping) = try await engine.advance(id) else { Issue.record("not at the sleep"); return }
        #expect(sleeping["kind"] == "timer")
        #expect(fake.requests.count == 2)
        // Replayed (the budget decision included) to the end; nothing sent again.
        clock.advance(by: .seconds(11))
        #expect(try await engine.advance(id) == .completed("first / second"))
        #expect(fake.requests.count == 2)
        #expect(!DurableFile.exists(t.spool.run(id).approvalsDirectory.appending("budget-b-1.approved")))
        #expect(DurableFile.exists(t.spool.run(id).directory.appending("decisions/budget-b-1.approved")))
        let decision = try #require(try t.spool.journal(id).load().first { $0.kind == "llm-budget" })
        #expect(decision.value?["decision"] == "approved" && decision.value?["budget"] == 1000)
    }

    @Test func aRejectedRaiseFailsTheCallAndTheBudgetComesFromCairnJSON() async throws {
        let fake = try await FakeLLM.start(queue: [reply("first", usage: (70, 20))])
        let t = try TempSpool()
        _ = try configureLLM(t, ["token_budget": 100, "providers": [:]])
        let c = LLMClient(providers: [OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: nil)])
        let engine = t.engine([workflow(c, LLMOptions())])
        let id = try t.submit("w", input: 0)
        guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("not waiting"); return }
        #expect(w["kind"] == "budget")
        try t.drop("approvals/budget-b-1.rejected", in: id, content: #"{"reason": "too expensive"}"#)
        guard case .completed(let v) = try await engine.advance(id) else { Issue.record("not completed"); return }
        #expect(v.stringValue?.hasPrefix("llm_budget_exceeded") == true && v.stringValue?.contains("too expensive") == true, "\(v)")
        #expect(fake.requests.count == 1)
        #expect(try t.journalSummary(id).contains("llm-budget:b"))
    }

    @Test func withoutABudgetNothingWaits() async throws {
        let fake = try await FakeLLM.start(queue: [reply("first", usage: (7000, 2000)), reply("second")])
        _ = fake.port
        let t = try TempSpool()
        let c = LLMClient(providers: [OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: nil)])
        let id = try t.submit("w", input: 0)
        #expect(try await t.engine([workflow(c, LLMOptions())]).advance(id) == .completed("first / second"))
    }
}
