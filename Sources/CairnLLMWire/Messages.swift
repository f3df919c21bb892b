import CairnSpool
import Foundation

/// One message of a conversation, in a provider-neutral shape.
public struct ChatMessage: Codable, Sendable, Hashable {
    public enum Role: String, Codable, Sendable { case system, user, assistant, tool }

    public var role: Role
    public var content: String
    /// Assistant messages: the tools the model asked to call.
    public var toolCalls: [ToolCall]?
    /// Tool messages: which call this answers.
    public var toolCallID: String?

    enum CodingKeys: String, CodingKey {
        case role, content
        case toolCalls = "tool_calls"
        case toolCallID = "tool_call_id"
    }

    public init(role: Role, content: String, toolCalls: [ToolCall]? = nil, toolCallID: String? = nil) {
        self.role = role
        self.content = content
        self.toolCalls = toolCalls
        self.toolCallID = toolCallID
    }

    public static func system(_ s: String) -> ChatMessage { ChatMessage(role: .system, content: s) }
    public static func user(_ s: String) -> ChatMessage { ChatMessage(role: .user, content: s) }
    public static func assistant(_ s: String, toolCalls: [ToolCall]? = nil) -> ChatMessage { ChatMessage(role: .assistant, content: s, toolCalls: toolCalls) }
    public static func tool(_ id: String, _ s: String) -> ChatMessage { ChatMessage(role: .tool, content: s, toolCallID: id) }
}

/// A tool call the model asked for. `arguments` is the JSON text the model produced.
public struct ToolCall: Codable, Sendable, Hashable {
    public var id: String
    public var name: String
    public var arguments: String

    public init(id: String, name: String, arguments: String) {
        self.id = id
        self.name = name
        self.arguments = arguments
    }

    /// The arguments parsed; nil when the model produced malformed JSON.
    public var parsedArguments: JSONValue? { try? JSONValue.parse(arguments) }
}

/// A tool as the model sees it: name, description, JSON-schema parameters.
public struct ToolSpec: Codable, Sendable, Hashable {
    public var name: String
    public var description: String
    public var parameters: JSONValue

    public init(name: String, description: String, parameters: JSONValue) {
        self.name = name
        self.description = description
        self.parameters = parameters
    }
}

/// Token usage of one call.
public struct TokenUsage: Codable, Sendable, Hashable {
    public var input: Int
    public var output: Int
    public init(input: Int, output: Int) {
        self.input = input
        self.output = output
    }
}

/// What a provider is asked.
public struct LLMRequest: Sendable, Hashable {
    public var model: String
    public var messages: [ChatMessage]
    public var tools: [ToolSpec]
    public var temperature: Double?
    public var maxTokens: Int?
    public var stream: Bool

    public init(model: String, messages: [ChatMessage], tools: [ToolSpec] = [], temperature: Double? = nil, maxTokens: Int? = nil, stream: Bool = false) {
        self.model = model
        self.messages = messages
        self.tools = tools
        self.temperature = temperature
        self.maxTokens = maxTokens
        self.stream = stream
    }
}

/// What a provider answered.
public struct LLMResponse: Codable, Sendable, Hashable {
    public var content: String
    public var toolCalls: [ToolCall]
    /// `stop`, `tool_calls`, `length`, `refusal`, `content_filter`…
    public var finishReason: String
    public var usage: TokenUsage
    /// The model that answered, as `provider:model`.
    public var model: String

    enum CodingKeys: String, CodingKey {
        case content, usage, model
        case toolCalls = "tool_calls"
        case finishReason = "finish_reason"
    }

    public init(content: String, toolCalls: [ToolCall] = [], finishReason: String = "stop", usage: TokenUsage = .init(input: 0, output: 0), model: String) {
        self.content = content
        self.toolCalls = toolCalls
        self.finishReason = finishReason
        self.usage = usage
        self.model = model
    }

    public var isRefusal: Bool { finishReason == "refusal" || finishReason == "content_filter" }
}

/// A provider call that failed.
public struct LLMError: Error, Sendable, CustomStringConvertible, Hashable {
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ r: String) { rawValue = r }
        public var description: String { rawValue }
        public static let rateLimited = Kind("rate_limited")
        public static let server = Kind("server_error")
        public static let timeout = Kind("timeout")
        public static let transport = Kind("transport")
        public static let malformed = Kind("malformed_response")
        /// The answer ended before its protocol said it was complete (a stream without
        /// `[DONE]` / `message_stop`).
        public static let incomplete = Kind("incomplete_response")
        public static let client = Kind("client_error")
        public static let configuration = Kind("configuration")
    }

    public var kind: Kind
    public var message: String
    public var status: Int?
    /// Seconds the server asked us to wait (Retry-After).
    public var retryAfter: Double?

    public init(_ kind: Kind, _ message: String, status: Int? = nil, retryAfter: Double? = nil) {
        self.kind = kind
        self.message = message
        self.status = status
        self.retryAfter = retryAfter
    }

    /// Worth retrying the same model (429, 5xx, timeouts, dropped connections, incomplete
    /// answers, garbage).
    public var retryable: Bool { [.rateLimited, .server, .timeout, .transport, .malformed, .incomplete].contains(kind) }

    public var description: String { "\(kind)\(status.map { " \($0)" } ?? ""): \(message)" }
}
