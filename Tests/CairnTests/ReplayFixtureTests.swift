import Cairn
import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// Journals written by earlier code, committed under Fixtures/, replayed against the code
/// of today. Regenerate (only when the format changes on purpose) with
/// `CAIRN_REGENERATE_FIXTURES=1 swift test --filter ReplayFixtureTests`.
@Suite struct ReplayFixtureTests {
    static let fixtureRun = "fixture-order-1"
    static var fixtureDir: FilePath {
        FilePath(#filePath).removingLastComponent().appending("Fixtures/runs/\(fixtureRun)")
    }

    struct Order: Codable, Sendable {
        var item: String
        var quantity: Int
    }

    /// Version 1 of the order workflow, as it was when the fixture was recorded.
    static func orderV1(_ fx: Effects, renameCharge: Bool = false, patch: Bool = false) -> AnyWorkflow {
        AnyWorkflow(name: "order") { ctx, input in
            let order: Order = try input.decode()
            let price: Int = try await ctx.step("price") { _ in fx.hit("price"); return order.quantity * 250 }
            let _: String = try await ctx.step(renameCharge ? "charge-payment" : "charge-card", semantics: .atMostOnce) { key in
                fx.hit("charge")
                return "ch_\(key.hashValue & 0xffff)"
            }
            let placedAt = ctx.now("placed-at")
            let d = try await ctx.approval("ship", request: .init(summary: "Ship \(order.quantity) × \(order.item)?"))
            if patch, try ctx.patched("notify-warehouse") {
                let _: Bool = try await ctx.step("notify-warehouse") { _ in fx.hit("notify"); return true }
            }
            let go = try await ctx.waitForEvent("go")
            let _: Bool = try await ctx.step("ship") { _ in fx.hit("ship"); return true }
            return ["price": .int(Int64(price)), "approved": .bool(d.approved), "placed_at": .string(Timestamp.format(placedAt)), "go": go ?? .null]
        }
    }

    func spoolWithFixture() throws -> TempSpool {
        let t = try TempSpool()
        if ProcessInfo.processInfo.environment["CAIRN_REGENERATE_FIXTURES"] == "1" {
            try regenerate()
        }
        try FileManager.default.copyItem(atPath: Self.fixtureDir.string, toPath: t.spool.runDirectory(Self.fixtureRun).string)
        // git keeps no empty directories.
        for d in ["events", "blobs", "logs"] { try DurableFile.makeDirectory(t.spool.runDirectory(Self.fixtureRun).appending(d)) }
        return t
    }

    func regenerate() throws {
        let t = try TempSpool()
        let fx = Effects()
        let engine = t.engine([Self.orderV1(fx)], clock: ManualClock(now: Date(timeIntervalSince1970: 1_790_000_000)))
        let id = try t.spool.createRun(.init(workflow: "order", input: ["item": "lamp", "quantity": 3], id: Self.fixtureRun, submittedBy: Principal(uid: 1000, user: "alice")), now: Date(timeIntervalSince1970: 1_790_000_000)).id
        let sem = DispatchSemaphore(value: 0)
        Task {
            _ = try await engine.advance(id)
            try t.drop("approvals/ship.approved", in: id, content: #"{"comment": "ok"}"#)
            _ = try await engine.advance(id)
            sem.signal()
        }
        sem.wait()
        try? FileManager.default.removeItem(atPath: Self.fixtureDir.string)
        try FileManager.default.createDirectory(atPath: Self.fixtureDir.removingLastComponent().string, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: t.spool.runDirectory(id).string, toPath: Self.fixtureDir.string)
    }

    @Test func committedJournalReplaysWithoutRunningRecordedSteps() async throws {
        let t = try spoolWithFixture()
        let fx = Effects()
        let engine = t.engine([Self.orderV1(fx)])
        let id = Self.fixtureRun
        #expect(try t.journalSummary(id) == ["start", "step:price", "intent:charge-card", "step:charge-card", "now:placed-at", "approval:ship", "approval:ship", "event:go"])
        guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("expected to wait for the event"); return }
        #expect(w["name"] == "go")
        try t.drop("events/go.json", in: id, content: "{\"by\": \"ops\"}")
        guard case .completed(let out) = try await engine.advance(id) else { Issue.record("not completed"); return }
        #expect(out["price"] == 750 && out["approved"] == true && out["go"] == ["by": "ops"])
        #expect(out["placed_at"] == "2026-09-21T14:13:20.000Z")
        #expect(fx.count("price") == 0 && fx.count("charge") == 0)
        #expect(fx.count("ship") == 1)
    }

    @Test func changedCodeStopsWithANondeterminismErrorNamingTheFile() async throws {
        let t = try spoolWithFixture()
        let fx = Effects()
        let engine = t.engine([Self.orderV1(fx, renameCharge: true)])
        let id = Self.fixtureRun
        guard case .failed(let info) = try await engine.advance(id) else { Issue.record("expected nondeterminism"); return }
        #expect(info.type == "nondeterminism")
        #expect(info.file == "journal/000003-intent-charge-card.json")
        #expect(info.expected == ["kind": "intent", "name": "charge-card"])
        #expect(info.actual == ["kind": "step", "name": "charge-payment"])
        #expect(info.message.contains("000003-intent-charge-card.json"))
        let state = try t.state(id)
        #expect(state.status == .failed && state.error?.type == "nondeterminism")
        #expect(fx.count("charge") == 0)
        // The journal is untouched: nothing was appended, and the run stays stopped.
        #expect(try t.journalSummary(id).count == 8)
        let again = try await engine.advance(id)
        guard case .failed(let same) = again else { Issue.record("should stay failed, got \(again)"); return }
        #expect(same.type == "nondeterminism", "\(same)")
        #expect(try t.journalSummary(id).count == 8)
        // With the code fixed, `retry` resumes it.
        try t.drop("retry", in: id)
        guard case .waiting = try await t.engine([Self.orderV1(fx)]).advance(id) else { Issue.record("fixed code should resume"); return }
    }

    @Test func patchedKeepsOldRunsOnTheOldPath() async throws {
        let t = try spoolWithFixture()
        let fx = Effects()
        let engine = t.engine([Self.orderV1(fx, patch: true)])
        let id = Self.fixtureRun
        try t.drop("events/go.json", in: id, content: "1")
        guard case .completed = try await engine.advance(id) else { Issue.record("old run must replay on the old path"); return }
        #expect(fx.count("notify") == 0)
        // A new run takes the new path.
        let fresh = try t.submit("order", input: ["item": "desk", "quantity": 1] as JSONValue)
        try t.drop("approvals/ship.approved", in: fresh)
        try t.drop("events/go.json", in: fresh, content: "1")
        guard case .completed = try await engine.advance(fresh) else { Issue.record("new run"); return }
        #expect(fx.count("notify") == 1)
        #expect(try t.journalSummary(fresh).contains("patch:notify-warehouse"))
    }
}
