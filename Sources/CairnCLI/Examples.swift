import Cairn
import CairnSpool
import Foundation
#if Agents
import CairnAgents
#endif

extension CairnCLI {
    /// The workflows the stock `cairn` binary ships: the demo's Swift workflow, and with the
    /// Agents trait (the default) the triage agent.
    public static var exampleWorkflows: WorkflowRegistry {
        #if Agents
        WorkflowRegistry([AnyWorkflow(DemoRefund()), AnyWorkflow(TriageTicket())])
        #else
        WorkflowRegistry([AnyWorkflow(DemoRefund())])
        #endif
    }
}

/// The guided demo's Swift workflow: look up an order, draft a refund, ask a person,
/// then "issue" it (appending to SPOOL/demo-outbox.jsonl with its idempotency key).
public struct DemoRefund: Workflow {
    public static let name = "demo-refund"

    public struct Input: Codable, Sendable {
        public var order: String
        public var amount: Double
        public var reason: String
    }

    public struct Output: Codable, Sendable {
        public var refunded: Bool
        public var amount: Double
        public var approvedBy: String?

        enum CodingKeys: String, CodingKey {
            case refunded, amount
            case approvedBy = "approved_by"
        }
    }

    public init() {}

    public func run(_ ctx: WorkflowContext, input: Input) async throws -> Output {
        let customer: String = try await ctx.step("look-up-order") { _ in
            try await Task.sleep(for: .milliseconds(300))
            return "customer-of-\(input.order)"
        }
        let note: String = try await ctx.step("draft-note") { _ in
            "Refund \(input.amount) to \(customer) for order \(input.order): \(input.reason)"
        }
        // `expecting:` refuses a value that is not a number (an error file, the gate still
        // open) before it is recorded, so `value(as:)` below cannot fail the run.
        let decision = try await ctx.approval("issue-refund", request: .init(summary: note, details: ["order": .string(input.order), "amount": .double(input.amount)]), expecting: Double.self)
        guard decision.approved else { return Output(refunded: false, amount: 0, approvedBy: decision.decidedBy?.user) }
        let amount = try decision.value(as: Double.self) ?? input.amount
        let outbox = ctx.spoolRoot.appending("demo-outbox.jsonl").string
        try await ctx.step("issue-refund", semantics: .atMostOnce) { key in
            let line: JSONValue = ["order": .string(input.order), "amount": .double(amount), "idempotency_key": .string(key)]
            try DurableFile.appendLine(line.compactText(), to: outbox)
        }
        return Output(refunded: true, amount: amount, approvedBy: decision.decidedBy?.user)
    }
}

