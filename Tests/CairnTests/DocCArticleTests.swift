// The code of the DocC articles in Sources/Cairn/Cairn.docc and Sources/CairnTesting/
// CairnTesting.docc, compiled and run, so an article cannot drift from the API unnoticed.
// Keep each type here the same as its article's snippet. (The CLI host snippet needs
// CairnCLI, which this target does not link; `CairnCLI.main(workflows:)` is used by
// Sources/cairn-fixtures.)
import Cairn
import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

// MARK: GettingStarted.md

struct Greet: Workflow {
    static let name = "greet"

    struct Input: Codable, Sendable { var who: String }
    struct Output: Codable, Sendable { var greeting: String }

    func run(_ ctx: WorkflowContext, input: Input) async throws -> Output {
        let greeting: String = try await ctx.step("compose") { _ in
            "Hello, \(input.who)!"
        }
        try await ctx.sleep("pause", for: .seconds(1))
        return Output(greeting: greeting)
    }
}

func greetOnce(spoolAt path: String) async throws -> AdvanceOutcome {
    let spool = try Spool.create(at: FilePath(path))
    let engine = Engine(spool: spool, registry: WorkflowRegistry([AnyWorkflow(Greet())]))
    let id = try spool.createRun(.init(workflow: "greet", input: .object(["who": .string("world")]))).id
    return try await engine.drive(id)        // .completed(["greeting": "Hello, world!"])
}

// MARK: WritingAWorkflow.md

struct Order: Workflow {
    static let name = "order"
    static let version = "2"

    struct Input: Codable, Sendable { var order: String; var items: [String]; var amount: Double }
    struct Output: Codable, Sendable { var shipped: Bool }

    func run(_ ctx: WorkflowContext, input: Input) async throws -> Output {
        // A step: runs once, its value is recorded; the key is stable across retries.
        let reservation: String = try await ctx.step("reserve", retry: .default) { key in
            "reservation-for-\(input.order)-\(key)"
        }
        // Compensation: runs (in reverse order) if the run later fails or is cancelled.
        ctx.compensate("release") { print("releasing \(reservation)") }

        // Parallel: one recorded step per item, at most 4 at a time.
        let prices: [Double] = try await ctx.parallel("price", input.items, maxConcurrency: 4) { item, _ in
            Double(item.count)
        }

        // An approval: waits for approvals/charge.approved or .rejected in the run.
        let decision = try await ctx.approval(
            "charge",
            request: ApprovalRequest(summary: "Charge \(input.amount) for \(input.order)?",
                                     details: .object(["prices": .array(prices.map { .double($0) })])),
            timeout: .seconds(3600), onTimeout: .reject)
        guard decision.approved else { return Output(shipped: false) }

        // An at-most-once step: never run twice, even across a crash mid-call.
        let _: Bool = try await ctx.step("charge", semantics: .atMostOnce) { key in
            true   // payments.charge(input.order, idempotencyKey: key)
        }

        // An event: waits for events/shipped.json (or gives up after a day).
        let tracking = try await ctx.waitForEvent("shipped", as: String.self, timeout: .seconds(86_400))

        // A durable timer, then a child run with its own journal.
        try await ctx.sleep("cool-off", for: .seconds(60))
        _ = try await ctx.child("receipt", Receipt.self, input: .init(order: input.order))

        // Versioning: runs that started before this code skip the new step.
        if try ctx.patched("notify-warehouse") {
            let _: Bool = try await ctx.step("notify-warehouse") { _ in true }
        }
        return Output(shipped: tracking != nil)
    }
}

struct Receipt: Workflow {
    static let name = "receipt"
    struct Input: Codable, Sendable { var order: String }
    func run(_ ctx: WorkflowContext, input: Input) async throws -> String {
        try await ctx.step("render") { _ in "receipt for \(input.order)" }
    }
}

@Suite struct DocCArticleTests {
    @Test func gettingStartedDrivesGreetToItsOutput() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cairn-docc-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The engine's default clock is the system clock: drive sleeps the one second.
        guard case .completed(let out) = try await greetOnce(spoolAt: dir) else {
            Issue.record("not completed"); return
        }
        #expect(out == .object(["greeting": .string("Hello, world!")]))
    }

    // TestingWithCairnTesting.md
    @Test func greetCompletes() async throws {
        let t = try TempSpool()                       // removed when t is released
        let engine = t.engine([AnyWorkflow(Greet())]) // ManualClock(autoAdvance: true) by default
        let id = try t.submit("greet", input: Greet.Input(who: "world"))

        guard case .completed(let out) = try await engine.drive(id) else {
            Issue.record("not completed"); return
        }
        #expect(out["greeting"] == "Hello, world!")
        #expect(try t.journalSummary(id) == ["start", "step:compose", "sleep:pause", "complete"])
        #expect(try t.partialJSONFiles().isEmpty)
    }

    // CairnTesting.md (overview)
    @Test func manualClockOverview() async throws {
        let t = try TempSpool()
        let clock = ManualClock()                       // a fixed start; moves only when told
        let engine = t.engine([AnyWorkflow(Greet())], clock: clock)
        let id = try t.submit("greet", input: Greet.Input(who: "world"))
        let first = try await engine.advance(id)        // runs until the sleep: .waiting
        guard case .waiting = first else { Issue.record("expected a wait, got \(first)"); return }
        clock.advance(by: .seconds(1))
        let second = try await engine.advance(id)       // .completed
        guard case .completed = second else { Issue.record("expected completion, got \(second)"); return }
    }

    // WritingAWorkflow.md: every operation once, through approval, event, timer and child.
    @Test func orderRunsEveryOperation() async throws {
        let t = try TempSpool()
        let engine = t.engine([AnyWorkflow(Order()), AnyWorkflow(Receipt())])
        let id = try t.submit("order", input: Order.Input(order: "A-7", items: ["ab", "cde"], amount: 19.9))
        guard case .waiting(let w) = try await engine.drive(id) else { Issue.record("expected the approval wait"); return }
        #expect(w["gate"] == "charge")
        try t.drop("approvals/charge.approved", in: id)
        guard case .waiting = try await engine.drive(id) else { Issue.record("expected the event wait"); return }
        try t.drop("events/shipped.json", in: id, content: #""TRACK-1""#)
        let outcome = try await engine.drive(id)
        guard case .completed(let out) = outcome else { Issue.record("not completed: \(outcome)"); return }
        #expect(out == .object(["shipped": .bool(true)]))
        #expect(try t.journalSummary(id).contains("patch:notify-warehouse"))
    }
}
