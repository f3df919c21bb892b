import Cairn
import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Promises of docs/workflows.md that had no test (issue 19): how a failed or cancelled
/// child reaches its parent, which failure `parallel` throws, and how compensations retry.
@Suite struct DocumentedPromiseTests {
    // MARK: child_failed, child_cancelled

    struct Breaker: Workflow {
        static let name = "breaker"
        func run(_ ctx: WorkflowContext, input: Int) async throws -> Int {
            try await ctx.step("break", retry: .none) { _ in throw StepError.nonRetryable("broken on purpose") }
        }
    }

    /// Starts one child and reports how it ended, as the parent saw it.
    struct ChildWatcher: Workflow {
        static let name = "watcher"
        func run(_ ctx: WorkflowContext, input: String) async throws -> JSONValue {
            do {
                let v: Int = input == "breaker" ? try await ctx.child("kid", Breaker.self, input: 1) : try await ctx.child("kid", CompositionTests.Forever.self, input: 2)
                return ["value": .int(Int64(v))]
            } catch let e as StepFailedError {
                return ["step": .string(e.step), "type": .string(e.error.type), "message": .string(e.error.message), "retryable": e.error.retryable.map { .bool($0) } ?? .null]
            }
        }
    }

    func childEngine(_ t: TempSpool) throws -> Engine {
        var reg = WorkflowRegistry()
        try reg.register(Breaker())
        try reg.register(CompositionTests.Forever())
        try reg.register(ChildWatcher())
        return Engine(spool: t.spool, registry: reg, clock: ManualClock(autoAdvance: true))
    }

    @Test func aFailedChildThrowsChildFailedInTheParent() async throws {
        let t = try TempSpool()
        let engine = try childEngine(t)
        let id = try t.submit("watcher", input: "breaker")
        guard case .completed(let seen) = try await engine.drive(id) else { Issue.record("parent did not complete"); return }
        #expect(try t.state("\(id).kid").status == .failed)
        #expect(seen["step"] == "kid")
        #expect(seen["type"] == "child_failed", "\(seen)")
        #expect(seen["retryable"] == false)
        #expect(seen["message"]?.stringValue?.hasPrefix("child run \(id).kid failed") == true, "\(seen)")
        #expect(seen["message"]?.stringValue?.contains("broken on purpose") == true, "the child's error is in the message: \(seen)")
        // Recorded: a replay answers the same without looking at the child again.
        let finished = try t.spool.journal(id).load().filter { $0.kind == "child" && $0.phase == "finished" }
        #expect(finished.count == 1 && finished[0].error?.type == "child_failed")
    }

    @Test func aCancelledChildThrowsChildCancelledInTheParent() async throws {
        let t = try TempSpool()
        let engine = try childEngine(t)
        let id = try t.submit("watcher", input: "forever")
        guard case .waiting(let w) = try await engine.drive(id) else { Issue.record("parent not waiting"); return }
        #expect(w["kind"] == "child")
        let kid = "\(id).kid"
        #expect(try t.state(kid).status == .waiting)
        try t.drop("cancel", in: kid)
        #expect(try await engine.advance(kid) == .cancelled)
        guard case .completed(let seen) = try await engine.drive(id) else { Issue.record("parent did not complete"); return }
        #expect(seen["type"] == "child_cancelled", "\(seen)")
        #expect(seen["message"]?.stringValue?.hasPrefix("child run \(kid) cancelled") == true, "\(seen)")
        #expect(try t.state(id).status == .completed)
    }

    // MARK: parallel: the lowest-index failure, after every branch finished

    @Test func parallelThrowsTheLowestIndexFailureOnceEveryBranchHasFinished() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let wf = workflow("fan") { ctx, _ in
            do {
                let _: [Int] = try await ctx.parallel("p", Array(0..<6), maxConcurrency: 6, retry: .none) { i, _ in
                    // Branch 4 fails at once; branch 2 fails last of all (it waits until
                    // every other branch has finished), so "first to fail" would say 4.
                    if i == 2 {
                        let deadline = Date().addingTimeInterval(10)
                        while fx.order.count < 5 && Date() < deadline { try await Task.sleep(for: .milliseconds(2)) }
                    }
                    fx.hit("b\(i)")
                    if i == 2 || i == 4 { throw StepError.nonRetryable("branch \(i) failed") }
                    return i
                }
                return "no failure"
            } catch let e as StepFailedError {
                return ["step": .string(e.step), "message": .string(e.error.message)]
            }
        }
        let id = try t.submit("fan", input: 0)
        let out = try await t.engine([wf]).drive(id)
        #expect(out == .completed(["step": "p[2]", "message": "branch 2 failed"]), "\(out)")
        #expect(fx.order.last == "b2", "branch 2 did not fail last: \(fx.order)")
        #expect((0..<6).allSatisfy { fx.count("b\($0)") == 1 }, "\(fx.order)")
        // Every branch was recorded (completion order), failures included.
        let records = try t.spool.journal(id).load().filter { $0.group == "p" }
        #expect(Set(records.compactMap(\.index)) == Set(0..<6))
        #expect(records.filter { $0.error != nil }.compactMap(\.index).sorted() == [2, 4])
        #expect(records.last?.index == 2)
    }

    @Test func parallelFailureIsTheSameOnReplay() async throws {
        // Replayed from the journal (records in completion order: 4 before 2), the same
        // lowest-index branch is thrown.
        let t = try TempSpool()
        let fx = Effects()
        let wf = workflow("fan2") { ctx, _ in
            do {
                let _: [Int] = try await ctx.parallel("p", [0, 1, 2, 3, 4], retry: .none) { i, _ in fx.hit("b\(i)"); return i }
                return "no failure"
            } catch let e as StepFailedError {
                return .string(e.step)
            }
        }
        let id = try t.submit("fan2", input: 0)
        let j = t.spool.journal(id)
        var s = JournalEntry(seq: 1, kind: "start", at: Date())
        s.data = ["version": "1"]
        try j.append(s)
        for (seq, i) in [(2, 4), (3, 0), (4, 2), (5, 1), (6, 3)] {
            var e = JournalEntry(seq: seq, kind: "step", name: "p[\(i)]", at: Date())
            e.group = "p"
            e.index = i
            if i == 4 || i == 2 { e.error = ErrorInfo(type: "StepError", message: "branch \(i) failed", retryable: false) } else { e.value = .int(Int64(i)) }
            try j.append(e)
        }
        #expect(try await t.engine([wf]).drive(id) == .completed("p[2]"))
        #expect(fx.order.isEmpty, "a recorded branch ran again: \(fx.order)")
    }

    // MARK: compensations are retried in process, and a failure is recorded

    @Test func anUndoIsTriedThreeTimesOneThenTwoSecondsApartThenRecordedAsFailed() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let wf = workflow("saga") { ctx, _ in
            let _: Bool = try await ctx.step("book-a") { _ in true }
            ctx.compensate("undo-a") { fx.hit("undo-a") }
            let _: Bool = try await ctx.step("book-b") { _ in true }
            ctx.compensate("undo-b") {
                fx.hit("undo-b")
                throw StepError("always down")
            }
            let _: Bool = try await ctx.step("book-c") { _ in true }
            ctx.compensate("undo-c") {
                fx.hit("undo-c")
                if fx.count("undo-c") < 3 { throw StepError("down twice") }
            }
            let _: Bool = try await ctx.step("charge", retry: .none) { _ in throw StepError.nonRetryable("card declined") }
            return "booked"
        }
        let clock = ManualClock(autoAdvance: true)
        let start = clock.now()
        let id = try t.submit("saga", input: 0)
        guard case .failed(let info) = try await t.engine([wf], clock: clock).drive(id) else { Issue.record("expected failure"); return }
        #expect(info.message.contains("card declined"))
        #expect(fx.order == ["undo-c", "undo-c", "undo-c", "undo-b", "undo-b", "undo-b", "undo-a"])
        // 1 s, then 2 s apart, with the engine's clock: undo-c's two waits, then undo-b's.
        #expect(clock.sleepDeadlines.map { $0.timeIntervalSince(start) } == [1, 3, 4, 6])
        let comp = try t.spool.journal(id).load().filter { $0.kind == "compensate" }
        #expect(comp.map { $0.name ?? "" } == ["undo-c", "undo-b", "undo-a"])
        #expect(comp.map { $0.attempt ?? 0 } == [3, 3, 1])
        #expect(comp[0].error == nil && comp[2].error == nil)
        #expect(comp[1].error?.message.contains("always down") == true, "the failure is recorded: \(String(describing: comp[1].error))")
        #expect(try t.journalSummary(id).last == "fail")
        // Finished: advancing again undoes nothing more.
        _ = try await t.engine([wf], clock: clock).advance(id)
        #expect(fx.order.count == 7)
    }
}
