import Cairn
import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

@Suite struct SagaAndControlTests {
    func trip(_ fx: Effects, failAt: String?) -> AnyWorkflow {
        workflow("trip") { ctx, _ in
            for item in ["flight", "hotel", "car"] {
                let _: Bool = try await ctx.step("book-\(item)", retry: .none) { _ in
                    if item == failAt { throw StepError.nonRetryable("no \(item) available") }
                    fx.hit("book-\(item)")
                    return true
                }
                ctx.compensate("cancel-\(item)") { fx.hit("cancel-\(item)") }
                if item == "hotel" { try await ctx.sleep("settle", for: .seconds(10)) }
            }
            return "booked"
        }
    }

    @Test func failureRunsCompensationsInReverse() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let id = try t.submit("trip", input: 0)
        guard case .failed(let info) = try await t.engine([trip(fx, failAt: "car")]).drive(id) else { Issue.record("expected failure"); return }
        #expect(info.message.contains("no car available"))
        #expect(fx.order == ["book-flight", "book-hotel", "cancel-hotel", "cancel-flight"])
        #expect(try t.journalSummary(id).suffix(4) == ["step:book-car", "compensate:cancel-hotel", "compensate:cancel-flight", "fail"])
    }

    @Test func cancelFileCancelsAWaitingRunWithCompensation() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let clock = ManualClock()
        let engine = t.engine([trip(fx, failAt: nil)], clock: clock)
        let id = try t.submit("trip", input: 0)
        guard case .waiting = try await engine.advance(id) else { Issue.record("not waiting"); return }
        try t.drop("cancel", in: id)
        #expect(try await engine.advance(id) == .cancelled)
        #expect(fx.order == ["book-flight", "book-hotel", "cancel-hotel", "cancel-flight"])
        #expect(try t.state(id).status == .cancelled)
        #expect(try t.journalSummary(id).suffix(4) == ["cancel:requested", "compensate:cancel-hotel", "compensate:cancel-flight", "cancel"])
        // Idempotent afterwards.
        #expect(try await engine.advance(id) == .cancelled)
        #expect(fx.count("cancel-hotel") == 1)
    }

    @Test func pauseHoldsTheRunUntilRemoved() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let id = try t.submit("trip", input: 0)
        try t.drop("pause", in: id)
        let engine = t.engine([trip(fx, failAt: nil)])
        guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("not waiting"); return }
        #expect(w["kind"] == "pause")
        #expect(fx.order.isEmpty)
        try FileManager.default.removeItem(atPath: t.spool.run(id).pauseFile.string)
        #expect(try await engine.drive(id) == .completed("booked"))
    }

    @Test func retryFileRetriesAFailedRunFromItsFailedStep() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let broken = BoolBox(true)
        let wf = workflow("flaky-run") { ctx, _ in
            let a: Int = try await ctx.step("a") { _ in fx.hit("a"); return 1 }
            let b: Int = try await ctx.step("b", retry: RetryPolicy(maxAttempts: 2, initialDelay: .seconds(1))) { _ in
                fx.hit("b")
                if broken.value { throw Flaky() }
                return 2
            }
            return .int(Int64(a + b))
        }
        let engine = t.engine([wf])
        let id = try t.submit("flaky-run", input: 0)
        let out = try await engine.drive(id)
        guard case .failed(let info) = out else { Issue.record("expected failure, got \(out)"); return }
        #expect(info.message.contains("flaky failure"), "\(info)")
        #expect(fx.count("b") == 2)
        broken.value = false
        try t.drop("retry", in: id)
        #expect(try await engine.drive(id) == .completed(3))
        #expect(fx.count("a") == 1 && fx.count("b") == 3)
        #expect(!DurableFile.exists(t.spool.run(id).retryFile))
        let effective = Journal.effective(try t.spool.journal(id).load()).map { $0.name.map { "\($0)" } ?? $0.kind.rawValue }
        #expect(effective == ["start", "a", "b", "complete"])
    }
}

final class BoolBox: Sendable {
    private let v: Mutex<Bool>
    init(_ v: Bool) { self.v = Mutex(v) }
    var value: Bool {
        get { v.withLock { $0 } }
        set { v.withLock { $0 = newValue } }
    }
}

import Synchronization

@Suite struct RepairTests {
    @Test func fsckFindsAndRepairsDamage() async throws {
        let t = try TempSpool()
        let wf = workflow("w") { ctx, _ in
            let a: String = try await ctx.step("a") { _ in String(repeating: "x", count: 100_000) }
            let b: Int = try await ctx.step("b") { _ in 2 }
            return .int(Int64(a.count + b))
        }
        let id = try t.submit("w", input: 0, key: "k1")
        #expect(try await t.engine([wf]).drive(id) == .completed(100_002))
        #expect(try Repair.run(t.spool, repair: false).findings.isEmpty)

        let paths = t.spool.run(id)
        // Damage: state.json gone, result.json truncated, a garbage journal record,
        // the key index lost, a stale temp file.
        try FileManager.default.removeItem(atPath: paths.stateFile.string)
        try "{\"trunc".write(toFile: paths.resultFile.string, atomically: false, encoding: .utf8)
        try "garbage".write(toFile: paths.journalDirectory.appending("000005-step-x.json").string, atomically: false, encoding: .utf8)
        try FileManager.default.removeItem(atPath: t.spool.keysDirectory.appending(Spool.keyFileName("k1")).string)
        let stale = t.spool.tmpDirectory.appending("123.1.old.tmp")
        try "x".write(toFile: stale.string, atomically: false, encoding: .utf8)
        var old = [timespec(tv_sec: 1_000_000, tv_nsec: 0), timespec(tv_sec: 1_000_000, tv_nsec: 0)]
        _ = utimensat(AT_FDCWD, stale.string, &old, AT_SYMLINK_NOFOLLOW)

        let check = try Repair.run(t.spool, repair: false)
        let files = Set(check.findings.map(\.file))
        #expect(files.isSuperset(of: ["runs/\(id)/state.json", "runs/\(id)/result.json", "runs/\(id)/journal/000005-step-x.json", "tmp/123.1.old.tmp"]))
        #expect(!check.clean)

        let fixed = try Repair.run(t.spool, repair: true)
        #expect(fixed.clean, "\(fixed.findings)")
        #expect(try Repair.run(t.spool, repair: false).findings.isEmpty)
        #expect(try t.state(id).status == .completed)
        #expect(try DurableFile.readJSON(paths.resultFile) == 100_002)
        #expect(t.spool.runForKey("k1") == id)
        #expect(!DurableFile.exists(stale))
        // The bad record was moved aside, not deleted.
        let moved = try Spool.list(paths.repairDirectory)
        #expect(moved.count == 1)
        #expect(try Spool.list(paths.repairDirectory.appending(moved[0])) == ["000005-step-x.json"])
    }

    @Test func missingBlobTruncatesTheJournalAndTheStepRunsAgain() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let wf = workflow("w") { ctx, _ in
            let a: Int = try await ctx.step("a") { _ in fx.hit("a"); return 1 }
            let big: String = try await ctx.step("big") { _ in fx.hit("big"); return String(repeating: "y", count: 70_000) }
            try await ctx.sleep(for: .seconds(5))
            return .int(Int64(a + big.count))
        }
        let clock = ManualClock()
        let engine = t.engine([wf], clock: clock)
        let id = try t.submit("w", input: 0)
        _ = try await engine.advance(id)
        let blobs = try Spool.list(t.spool.run(id).blobsDirectory)
        #expect(blobs.count == 1)
        try FileManager.default.removeItem(atPath: t.spool.run(id).blobsDirectory.appending(blobs[0]).string)
        let fixed = try Repair.run(t.spool, repair: true)
        #expect(fixed.findings.contains { $0.file.hasSuffix("000003-step-big.json") && $0.repaired != nil })
        #expect(try t.journalSummary(id) == ["start", "step:a"])
        clock.advance(by: .seconds(10))
        _ = try await engine.advance(id)
        clock.advance(by: .seconds(10))
        #expect(try await engine.advance(id) == .completed(70_001))
        #expect(fx.count("a") == 1 && fx.count("big") == 2)
    }
}
