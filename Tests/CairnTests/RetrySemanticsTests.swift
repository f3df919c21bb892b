import Cairn
import CairnSpool
import CairnTesting
import Foundation
import Testing

/// `cairn retry` after each kind of failure, cancel reaching each kind of wait, and durable
/// operations where they cannot work (issue "Semantics under retry, cancel and change").
@Suite struct RetrySemanticsTests {
    struct Boom: Error, CustomStringConvertible { var description: String { "boom" } }
    static let once = RetryPolicy(maxAttempts: 1)

    enum Failure: String, CaseIterable, Sendable { case plainStep, parallelBranch, compensated, childFailed, nondeterminismFixed }

    struct Kid: Workflow {
        static let name = "kid"
        // Fails on its first run in this process (the effects live in a global).
        func run(_ ctx: WorkflowContext, input: Int) async throws -> Int {
            try await ctx.step("work", retry: RetrySemanticsTests.once) { _ in
                kidRuns.hit("kid")
                if kidRuns.count("kid") == 1 { throw Boom() }
                return input * 10
            }
        }
    }

    static func workflows(_ kind: Failure, _ fx: Effects, fixed: Bool = true) -> [AnyWorkflow] {
        switch kind {
        case .plainStep:
            return [workflow("w") { ctx, _ in
                let a: Int = try await ctx.step("a") { _ in fx.hit("a"); return 1 }
                let b: Int = try await ctx.step("b", retry: once) { _ in
                    fx.hit("b")
                    if fx.count("b") == 1 { throw Boom() }
                    return 2
                }
                return .int(Int64(a + b))
            }]
        case .parallelBranch:
            return [workflow("w") { ctx, _ in
                let out: [Int] = try await ctx.parallel("p", [0, 1, 2, 3], retry: once) { i, _ in
                    fx.hit("branch-\(i)")
                    if i % 2 == 1 && fx.count("branch-\(i)") == 1 { throw Boom() }
                    return i
                }
                return .int(Int64(out.reduce(0, +)))
            }]
        case .compensated:
            return [workflow("w") { ctx, _ in
                for name in ["a", "b", "c"] {
                    let _: Bool = try await ctx.step("book-\(name)") { _ in fx.hit("book"); return true }
                    ctx.compensate("undo-\(name)") { fx.hit("undo") }
                }
                let _: Bool = try await ctx.step("charge", retry: once) { _ in
                    fx.hit("charge")
                    if fx.count("charge") == 1 { throw Boom() }
                    return true
                }
                return "booked"
            }]
        case .childFailed:
            return [workflow("w") { ctx, _ in
                .int(Int64(try await ctx.child("kid", Kid.self, input: 4)))
            }, AnyWorkflow(Kid())]
        case .nondeterminismFixed:
            return [workflow("w") { ctx, _ in
                let _: Int = try await ctx.step(fixed ? "a" : "renamed") { _ in fx.hit("a"); return 1 }
                let _: Int = try await ctx.step("b") { _ in 2 }
                return "done"
            }]
        }
    }

    @Test(arguments: Failure.allCases)
    func retryAfterEachKindOfFailureFinishesConsistently(kind: Failure) async throws {
        let t = try TempSpool()
        let fx = Effects()
        let id = try t.submit("w", input: 0)
        var engine = t.engine(Self.workflows(kind, fx))
        if kind == .nondeterminismFixed {
            // The run waits under the old code, which recorded step "renamed"; the new code
            // asks for "a" (a mismatch: the run stops); the fixed code matches again.
            let id2 = try t.submit("w", input: 0)
            let wait: AnyWorkflow = workflow("w") { ctx, _ in
                let _: Int = try await ctx.step("renamed") { _ in 1 }
                _ = try await ctx.waitForEvent("go")
                return "x"
            }
            guard case .waiting = try await t.engine([wait]).drive(id2) else { Issue.record("not waiting"); return }
            engine = t.engine(Self.workflows(kind, fx))
            let first = try await engine.drive(id2)
            guard case .failed(let info) = first, info.type == "nondeterminism" else { Issue.record("\(kind): expected nondeterminism, got \(first)"); return }
            // Fixed code (back to "renamed", then the rest).
            let fixedCode: AnyWorkflow = workflow("w") { ctx, _ in
                let _: Int = try await ctx.step("renamed") { _ in 1 }
                _ = try await ctx.waitForEvent("go")
                return "fixed"
            }
            try t.drop("retry", in: id2)
            try t.drop("events/go.json", in: id2)
            #expect(try await t.engine([fixedCode]).drive(id2) == .completed("fixed"))
            return
        }
        let first = try await engine.drive(id)
        guard case .failed = first else { Issue.record("\(kind): expected a failure, got \(first)"); return }
        if kind == .compensated { #expect(fx.count("undo") == 3) }
        try t.drop("retry", in: id)
        let second = try await engine.drive(id)
        guard case .completed(let v) = second else { Issue.record("\(kind): one retry finishes the run, got \(second); journal \(try t.journalSummary(id))"); return }
        switch kind {
        case .plainStep:
            #expect(v == 3)
            #expect(fx.count("a") == 1 && fx.count("b") == 2, "the step that succeeded is not run again")
        case .parallelBranch:
            #expect(v == 6)
            #expect(fx.count("branch-0") == 1 && fx.count("branch-2") == 1, "branches that succeeded are not run again")
            #expect(fx.count("branch-1") == 2 && fx.count("branch-3") == 2, "every failed branch runs again, in one retry")
        case .compensated:
            #expect(v == "booked")
            #expect(fx.count("book") - fx.count("undo") == 3, "what was undone is done again: \(fx.count("book")) booked, \(fx.count("undo")) undone")
            #expect(fx.count("charge") == 2)
        case .childFailed:
            #expect(v == 40)
            #expect(try t.state("\(id).kid").status == .failed, "the failed child is history")
            #expect(try t.state("\(id).kid.r2").status == .completed, "a fresh child run")
        case .nondeterminismFixed:
            break
        }
    }

    enum WaitKind: String, CaseIterable, Sendable { case approval, event, timer, retry, child }

    @Test(arguments: WaitKind.allCases)
    func cancelReachesEveryKindOfWait(kind: WaitKind) async throws {
        let t = try TempSpool()
        let fx = Effects()
        var reg = WorkflowRegistry([workflow("w") { ctx, _ in
            ctx.compensate("undo") { fx.hit("undo") }
            switch kind {
            case .approval: _ = try await ctx.approval("go", request: .init(summary: "?"))
            case .event: _ = try await ctx.waitForEvent("e")
            case .timer: try await ctx.sleep("nap", for: .seconds(3600))
            case .retry:
                let _: Int = try await ctx.step("s", retry: RetryPolicy(maxAttempts: 3, initialDelay: .seconds(600), jitter: 0)) { _ in throw Boom() }
            case .child: _ = try await ctx.child("kid", CompositionTests.Forever.self, input: 1)
            }
            return "not cancelled"
        }])
        try reg.register(CompositionTests.Forever())
        let engine = Engine(spool: t.spool, registry: reg, clock: ManualClock())
        let id = try t.submit("w", input: 0)
        guard case .waiting = try await engine.advance(id) else { Issue.record("\(kind): not waiting"); return }
        try t.drop("cancel", in: id)
        #expect(try await engine.advance(id) == .cancelled, "\(kind)")
        #expect(fx.count("undo") == 1)
        if kind == .child { #expect(DurableFile.exists(t.spool.run("\(id).kid").cancelFile), "the child is cancelled too") }
    }

    @Test func durableOperationsInsideAStepOrABranchAreRefusedSayingWhy() async throws {
        let t = try TempSpool()
        let inStep = workflow("w") { ctx, _ in
            let _: Int = try await ctx.step("outer") { _ in
                try await ctx.sleep("nap", for: .seconds(1))
                return 1
            }
            return "x"
        }
        let a = try t.submit("w", input: 0)
        guard case .failed(let e1) = try await t.engine([inStep]).drive(a) else { Issue.record("expected a failure"); return }
        #expect(e1.message.contains("inside the body of step 'outer'") && !e1.message.contains("nondeterminism"), "\(e1.message)")
        let inBranch = workflow("w") { ctx, _ in
            let _: [Int] = try await ctx.parallel("p", [0, 1]) { i, _ in
                _ = try await ctx.approval("gate-\(i)", request: .init(summary: "?"))
                return i
            }
            return "x"
        }
        let b = try t.submit("w", input: 0)
        guard case .failed(let e2) = try await t.engine([inBranch]).drive(b) else { Issue.record("expected a failure"); return }
        #expect(e2.message.contains("inside the body of step 'p[0]'"), "\(e2.message)")
    }
}

/// The child workflow's effects (a Workflow type cannot capture a test's own).
let kidRuns = Effects()
