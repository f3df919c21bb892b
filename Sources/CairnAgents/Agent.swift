import Cairn
import CairnSpool
import Foundation

/// A tool the model may call: a Swift closure with a name, a description and JSON-schema
/// parameters. Each call runs as its own durable step with an idempotency key.
public struct Tool: Sendable {
    /// What the model is told: the tool's name, description and JSON-schema parameters.
    public var spec: ToolSpec
    /// Ask a person before running it: a gate with the proposed arguments opens; the
    /// approval's JSON value replaces the arguments (approve-with-edits); a rejection goes
    /// back to the model as the tool's result.
    public var needsApproval: Bool
    /// At-least-once (the default) or at-most-once, as for a step: each call is a step.
    public var semantics: StepSemantics
    /// Runs one call: the parsed arguments and the step's idempotency key in, the result
    /// (sent back to the model as JSON) out.
    public var run: @Sendable (_ arguments: JSONValue, _ idempotencyKey: String) async throws -> JSONValue

    /// A tool named `name` with a JSON-schema `parameters` object and the closure that runs it.
    public init(_ name: String, description: String, parameters: JSONValue, needsApproval: Bool = false, semantics: StepSemantics = .atLeastOnce,
                run: @escaping @Sendable (_ arguments: JSONValue, _ idempotencyKey: String) async throws -> JSONValue) {
        self.spec = ToolSpec(name: name, description: description, parameters: parameters)
        self.needsApproval = needsApproval
        self.semantics = semantics
        self.run = run
    }
}

/// How an agent loop ended.
public struct AgentResult: Codable, Sendable, Hashable {
    /// The model's final answer.
    public var content: String
    /// LLM calls made (or replayed).
    public var turns: Int
    /// Tool calls made (or replayed).
    public var toolCalls: Int
    /// True when the step budget ran out before the model stopped calling tools.
    public var budgetExhausted: Bool
    /// The whole conversation, the final answer included.
    public var messages: [ChatMessage]

    enum CodingKeys: String, CodingKey {
        case content, turns, messages
        case toolCalls = "tool_calls"
        case budgetExhausted = "budget_exhausted"
    }
}

extension WorkflowContext {
    /// The agent loop: LLM → tool calls → results → LLM, until the model answers without
    /// calling a tool or `maxTurns` LLM calls were made. Each LLM call (`NAME.turn-N`) and
    /// each tool call (`NAME.tool-N-I-TOOL`) is its own durable operation, so a crash
    /// resumes mid-loop without re-sending an answered request or re-running a tool.
    public func agent(_ name: String, models: [String], messages start: [ChatMessage], tools: [Tool], maxTurns: Int = 10, options: LLMOptions = LLMOptions(), client: LLMClient? = nil) async throws -> AgentResult {
        var messages = start
        let byName = Dictionary(tools.map { ($0.spec.name, $0) }, uniquingKeysWith: { $1 })
        var toolCount = 0
        for turn in 1...max(1, maxTurns) {
            let response = try await llm("\(name).turn-\(turn)", models: models, messages: messages, tools: tools.map(\.spec), options: options, client: client)
            messages.append(.assistant(response.content, toolCalls: response.toolCalls.isEmpty ? nil : response.toolCalls))
            if response.toolCalls.isEmpty {
                return AgentResult(content: response.content, turns: turn, toolCalls: toolCount, budgetExhausted: false, messages: messages)
            }
            for (i, call) in response.toolCalls.enumerated() {
                toolCount += 1
                let opName = "\(name).tool-\(turn)-\(i + 1)-\(call.name)"
                guard let tool = byName[call.name] else {
                    messages.append(.tool(call.id, "error: no tool named '\(call.name)'"))
                    continue
                }
                var args = call.parsedArguments ?? .object([:])
                if tool.needsApproval {
                    let gate = Names.fileSafe("\(name)-\(turn)-\(i + 1)-\(call.name)")
                    let d = try await approval(gate, request: ApprovalRequest(
                        summary: "The agent wants to call \(call.name). Approve to run it (your JSON value, if any, replaces the arguments); reject to tell the agent no.",
                        details: ["tool": .string(call.name), "arguments": args]),
                        expectedValue: "a JSON object: the tool's arguments",
                        checkValue: { [required = tool.spec.parameters["required"]?.arrayValue?.compactMap(\.stringValue) ?? []] v in
                            guard case .object(let o) = v else {
                                return "replaces the tool's arguments, so it must be a JSON object, not \(v.compactText().prefix(80))"
                            }
                            let missing = required.filter { o[$0] == nil }
                            return missing.isEmpty ? nil : "replaces the tool's arguments and lacks what the tool requires: \(missing.joined(separator: ", "))"
                        })
                    guard d.approved else {
                        messages.append(.tool(call.id, "rejected by \(d.decidedBy?.user ?? "a person"): \(d.reason ?? "no reason given")"))
                        continue
                    }
                    if let edited = d.value, !edited.isNull { args = edited }
                }
                let finalArgs = args
                let result: JSONValue = try await step(opName, semantics: tool.semantics) { key in
                    try await tool.run(finalArgs, key)
                }
                messages.append(.tool(call.id, result.stringValue ?? result.compactText()))
            }
        }
        return AgentResult(content: messages.last(where: { $0.role == .assistant })?.content ?? "", turns: maxTurns, toolCalls: toolCount, budgetExhausted: true, messages: messages)
    }
}
