import Cairn
import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Waiting, cancellation and nondeterminism are the engine's decisions, not the workflow
/// code's: a workflow that wraps the error carrying them in its own, or swallows it with
/// `try?` or a catch-all, still waits, is cancelled, or stops (issue "Trust", defect 8).
@Suite struct ControlFlowTests {
    struct AppError: Error { var underlying: any Error }

    enum Shape: String, CaseIterable, Sendable { case wrapped, swallowed }

    /// Each operation that can wait, as a workflow that begins that wait with `shape` and
    /// then either throws its own error or carries on and returns.
    static func waiter(_ kind: String, _ shape: Shape, _ fx: Effects) -> AnyWorkflow {
        workflow("w") { ctx, _ in
            ctx.compensate("undo") { fx.hit("compensated") }
            let op: @Sendable () async throws -> Void = {
                switch kind {
                case "approval": _ = try await ctx.approval("go", request: .init(summary: "go?"))
                case "event": _ = try await ctx.waitForEvent("ping")
                case "timer": try await ctx.sleep("nap", for: .seconds(3600))
                case "retry":
                    let _: Int = try await ctx.step("flaky", retry: RetryPolicy(maxAttempts: 3, initialDelay: .seconds(600), maxDelay: .seconds(600), jitter: 0)) { _ in
                        fx.hit("flaky")
                        throw Flaky()
                    }
                case "child": _ = try await ctx.child("kid", CompositionTests.Forever.self, input: 1)
                default: Issue.record("unknown kind \(kind)")
                }
            }
            switch shape {
            case .wrapped:
                do { try await op() } catch { throw AppError(underlying: error) }
            case .swallowed:
                try? await op()
            }
            fx.hit("after")
            return "done"
        }
    }

    @Test(arguments: ["approval", "event", "timer", "retry", "child"], Shape.allCases)
    func aWaitTheWorkflowWrapsOrSwallowsStillWaits(kind: String, shape: Shape) async throws {
        let t = try TempSpool()
        let fx = Effects()
        var reg = WorkflowRegistry([Self.waiter(kind, shape, fx)])
        try reg.register(CompositionTests.Forever())
        let engine = Engine(spool: t.spool, registry: reg, clock: ManualClock())
        let id = try t.submit("w", input: 0)
        let outcome = try await engine.advance(id)
        guard case .waiting(let w) = outcome else {
            Issue.record("\(kind) \(shape): expected a wait, got \(outcome); journal \(try t.journalSummary(id))")
            return
        }
        #expect(w["kind"] == .string(kind), "\(kind) \(shape): \(w)")
        #expect(try t.state(id).status == .waiting)
        #expect(fx.count("compensated") == 0, "\(kind) \(shape): no compensation runs for a wait")
        let journal = try t.journalSummary(id)
        #expect(!journal.contains("fail") && !journal.contains("complete"), "\(kind) \(shape): \(journal)")
        if kind == "child" {
            // The child is not orphaned: the parent still waits for it, and cancelling the
            // parent cancels it.
            #expect(DurableFile.exists(t.spool.run("\(id).kid").runFile))
            #expect(!DurableFile.exists(t.spool.run("\(id).kid").cancelFile))
        }
    }

    @Test(arguments: Shape.allCases)
    func aCancelTheWorkflowSwallowsStillCancelsTheRun(shape: Shape) async throws {
        let t = try TempSpool()
        let fx = Effects()
        let engine = t.engine([Self.waiter("approval", shape, fx)])
        let id = try t.submit("w", input: 0)
        guard case .waiting = try await engine.advance(id) else { Issue.record("expected a wait"); return }
        try t.drop("cancel", in: id)
        #expect(try await engine.advance(id) == .cancelled)
        #expect(fx.count("compensated") == 1, "compensations run on cancel")
        #expect(try t.state(id).status == .cancelled)
        #expect(try t.journalSummary(id).suffix(2) == ["compensate:undo", "cancel"])
    }

    @Test func aNondeterminismTheWorkflowSwallowsStillStopsTheRun() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let id = try t.submit("w", input: 0)
        let v1 = workflow("w") { ctx, _ in
            let _: Int = try await ctx.step("a") { _ in 1 }
            _ = try await ctx.approval("go", request: .init(summary: "go?"))
            return "v1"
        }
        guard case .waiting = try await t.engine([v1]).advance(id) else { Issue.record("expected a wait"); return }
        // The code changed under the run, and the new code hides the mismatch, then goes on
        // with operations that do match the journal.
        let v2 = workflow("w") { ctx, _ in
            let _: Int? = try? await ctx.step("b") { _ in fx.hit("b"); return 2 }
            let _: Int = try await ctx.step("a") { _ in 1 }
            _ = try await ctx.approval("go", request: .init(summary: "go?"))
            return "v2"
        }
        guard case .failed(let info) = try await t.engine([v2]).advance(id) else { Issue.record("expected a stop"); return }
        #expect(info.type == "nondeterminism")
        #expect(fx.count("b") == 0)
        #expect(!DurableFile.exists(t.spool.run(id).resultFile))
    }
}
