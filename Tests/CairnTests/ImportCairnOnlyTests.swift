import Cairn
import CairnTesting
import Foundation
import Testing

/// `import Cairn` is all a workflow author needs (JSONValue included), and a decision reads
/// the same on replay as when it was made.
@Suite struct ImportCairnOnlyTests {
    @Test func aTimedOutRejectionSaysWhyOnReplayToo() async throws {
        let t = try TempSpool()
        let reasons = Effects()
        let wf = AnyWorkflow(name: "w") { ctx, _ in
            let d = try await ctx.approval("go", request: .init(summary: "?"), timeout: .seconds(60))
            reasons.hit(d.reason ?? "nil")
            let v: JSONValue? = try await ctx.waitForEvent("more")
            return ["approved": .bool(d.approved), "more": v ?? .null]
        }
        let clock = ManualClock()
        let engine = t.engine([wf], clock: clock)
        let id = try t.submit("w", input: 0)
        _ = try await engine.advance(id)
        clock.advance(by: .seconds(61))
        guard case .waiting = try await engine.advance(id) else { Issue.record("expected the event wait"); return }
        try t.drop("events/more.json", in: id, content: "1")
        #expect(try await engine.advance(id) == .completed(["approved": false, "more": 1]))
        #expect(reasons.order == ["timed out", "timed out"], "first execution and replay: \(reasons.order)")
    }
}
