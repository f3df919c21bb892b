import Cairn
import CairnSpool
import Foundation

/// The example agent: reads a support ticket, looks the customer up, drafts a reply, and
/// asks a person before "sending" it (appending to SPOOL/outbox.jsonl with its
/// idempotency key). Offline it runs on `triage-canned`, a scripted provider with canned
/// responses (clearly not a model); pass `"models": ["openai:gpt-4o-mini"]` (with an
/// "llm" section in cairn.json) to run it against a real endpoint.
public struct TriageTicket: Workflow {
    /// The workflow's registered name.
    public static let name = "triage-ticket"

    /// A support ticket.
    public struct Ticket: Codable, Sendable {
        /// The ticket's id.
        public var id: String
        /// The customer's email address.
        public var from: String
        /// The ticket's subject.
        public var subject: String
        /// The ticket's text.
        public var body: String
    }

    /// The ticket, and optionally the model chain to use.
    public struct Input: Codable, Sendable {
        /// The ticket to triage.
        public var ticket: Ticket
        /// Models to try in order (`provider:model`); nil: the offline scripted provider.
        public var models: [String]?
        /// The variant with an MCP tool server: the name of a server in cairn.json's
        /// `"mcp_servers"` whose `lookup_customer` and `send_reply` replace the Swift tools
        /// (send_reply still needs a person's approval and is at-most-once).
        public var toolsServer: String?

        enum CodingKeys: String, CodingKey {
            case ticket, models
            case toolsServer = "tools_server"
        }
    }

    /// The agent's answer and what it took.
    public struct Output: Codable, Sendable {
        /// The agent's final answer.
        public var answer: String
        /// LLM calls made.
        public var turns: Int
        /// Tool calls made.
        public var toolCalls: Int

        enum CodingKeys: String, CodingKey {
            case answer, turns
            case toolCalls = "tool_calls"
        }
    }

    /// The workflow (it has no configuration).
    public init() {}

    /// Canned responses of the offline provider, turn by turn.
    public static func cannedResponses(for t: Ticket) -> [JSONValue] {
        [
            ["content": "Let me look up the customer first.", "tool_calls": [["name": "lookup_customer", "arguments": ["email": .string(t.from)]]], "usage": ["input": 210, "output": 24]],
            // The first draft forgets the ticket's id: the validator rejects it, and the
            // repaired draft (the answer to the repair request) names it.
            ["content": "Drafting a reply.", "tool_calls": [["name": "send_reply", "arguments": [
                "to": .string(t.from), "subject": .string("Re: \(t.subject)"),
                "body": .string("Hello, thank you for writing about \"\(t.subject)\". We have issued a replacement; it ships today. — Support"),
            ]]], "usage": ["input": 320, "output": 71],
             "repaired": ["content": "Drafting a reply that names the ticket.", "tool_calls": [["name": "send_reply", "arguments": [
                "to": .string(t.from), "subject": .string("Re: \(t.subject) [\(t.id)]"),
                "body": .string("Hello, thank you for writing about \"\(t.subject)\" (ticket \(t.id)). We have issued a replacement; it ships today. — Support"),
             ]]], "usage": ["input": 402, "output": 78]]],
            ["content": .string("Replied to \(t.from) (category: shipping). The ticket can be closed."), "usage": ["input": 410, "output": 19]],
        ]
    }

    /// The longest reply the validator lets through.
    public static let replyLimit = 1200

    /// The model's answers are checked before they are recorded: a reply must name the
    /// ticket's id and stay under `replyLimit` characters; a draft that does not is sent back
    /// with the reason (a repair), then the next model is asked.
    public static func options(for t: Ticket) -> LLMOptions {
        var o = LLMOptions()
        let id = t.id
        o.validator = { response in
            for call in response.toolCalls where call.name == "send_reply" {
                let body = call.parsedArguments?["body"]?.stringValue ?? ""
                if !body.contains(id) { return "the reply must name the ticket's id (\(id)) so the customer can refer to it" }
                if body.count > replyLimit { return "the reply is \(body.count) characters; keep it under \(replyLimit)" }
            }
            return nil
        }
        return o
    }

    /// Runs the agent loop over the ticket with its two tools.
    public func run(_ ctx: WorkflowContext, input: Input) async throws -> Output {
        var client = try LLMClient.from(config: ctx.spoolConfig)
        client.providers["triage-canned"] = ScriptedProvider(name: "triage-canned", responses: Self.cannedResponses(for: input.ticket))
        let outbox = ctx.spoolRoot.appending("outbox.jsonl").string
        let swiftTools = [
            Tool("lookup_customer", description: "Look a customer up by email.", parameters: [
                "type": "object", "properties": ["email": ["type": "string"]], "required": ["email"],
            ]) { args, _ in
                ["email": args["email"] ?? .null, "plan": "pro", "orders": 12, "open_tickets": 1]
            },
            Tool("send_reply", description: "Send an email reply to the customer.", parameters: [
                "type": "object",
                "properties": ["to": ["type": "string"], "subject": ["type": "string"], "body": ["type": "string"]],
                "required": ["to", "subject", "body"],
            ], needsApproval: true, semantics: .atMostOnce) { args, key in
                var line = args.objectValue ?? [:]
                line["idempotency_key"] = .string(key)
                try DurableFile.appendLine(JSONValue.object(line).compactText(), to: outbox)
                return "sent"
            },
        ]
        var tools = swiftTools
        if let server = input.toolsServer {
            tools = try await ctx.mcpTools(server, needsApproval: ["send_reply"], atMostOnce: ["send_reply"])
        }
        let result = try await ctx.agent("triage", models: input.models ?? ["triage-canned:offline"], messages: [
            .system("You triage support tickets. Look the customer up, then send one short, kind reply with send_reply, then summarise in one line."),
            .user("Ticket \(input.ticket.id) from \(input.ticket.from)\nSubject: \(input.ticket.subject)\n\n\(input.ticket.body)"),
        ], tools: tools, maxTurns: 6, options: Self.options(for: input.ticket), client: client)
        return Output(answer: result.content, turns: result.turns, toolCalls: result.toolCalls)
    }
}
