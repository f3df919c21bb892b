import CairnSpool
import Foundation

/// One message of a conversation, in a provider-neutral shape.
public struct ChatMessage: Codable, Sendable, Hashable {
    /// Who wrote a message.
    public enum Role: String, Codable, Sendable { case system, user, assistant, tool }

    /// Who wrote it.
    public var role: Role
    /// Its text.
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

    /// A message; tool calls for assistant messages, the answered call's id for tool messages.
    public init(role: Role, content: String, toolCalls: [ToolCall]? = nil, toolCallID: String? = nil) {
        self.role = role
        self.content = content
        self.toolCalls = toolCalls
        self.toolCallID = toolCallID
    }

    /// A system message.
    public static func system(_ s: String) -> ChatMessage { ChatMessage(role: .system, content: s) }
    /// A user message.
    public static func user(_ s: String) -> ChatMessage { ChatMessage(role: .user, content: s) }
    /// An assistant message, with the tool calls the model asked for.
    public static func assistant(_ s: String, toolCalls: [ToolCall]? = nil) -> ChatMessage { ChatMessage(role: .assistant, content: s, toolCalls: toolCalls) }
    /// A tool's result `s`, answering the call `id`.
    public static func tool(_ id: String, _ s: String) -> ChatMessage { ChatMessage(role: .tool, content: s, toolCallID: id) }
}

/// A tool call the model asked for. `arguments` is the JSON text the model produced.
public struct ToolCall: Codable, Sendable, Hashable {
    /// The call's id, as the provider gave it (a tool message answers it).
    public var id: String
    /// The tool's name.
    public var name: String
    /// The arguments, as the JSON text the model produced (maybe malformed).
    public var arguments: String

    /// A call of tool `name` with `arguments` (JSON text).
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
    /// The tool's name.
    public var name: String
    /// What the tool does, for the model.
    public var description: String
    /// The JSON schema of its arguments.
    public var parameters: JSONValue

    /// A tool description.
    public init(name: String, description: String, parameters: JSONValue) {
        self.name = name
        self.description = description
        self.parameters = parameters
    }
}

/// Token usage of one call.
public struct TokenUsage: Codable, Sendable, Hashable {
    /// Tokens the request used.
    public var input: Int
    /// Tokens the answer used.
    public var output: Int
    /// Usage of `input` and `output` tokens.
    public init(input: Int, output: Int) {
        self.input = input
        self.output = output
    }

    /// The most tokens one count may say (10^12): a server's count is taken only from 0 to
    /// this, so that sums over a run's records cannot overflow.
    package static let maximumCount: Int64 = 1_000_000_000_000

    /// A count as a server reports it: a whole number from 0 to `maximumCount`, else 0.
    package static func count(_ v: JSONValue?) -> Int {
        guard let n = v?.intValue, n >= 0, n <= maximumCount else { return 0 }
        return Int(n)
    }
}

/// What a provider is asked.
public struct LLMRequest: Sendable, Hashable {
    /// The model's name at its provider (without `provider:`).
    public var model: String
    /// The conversation so far.
    public var messages: [ChatMessage]
    /// The tools the model may call.
    public var tools: [ToolSpec]
    /// The sampling temperature; nil: the provider's default.
    public var temperature: Double?
    /// The most tokens the answer may have; nil: the provider's default.
    public var maxTokens: Int?
    /// Whether to ask the provider to stream the answer.
    public var stream: Bool
    /// The JSON the answer must be (structured output): OpenAI's `response_format` with a
    /// JSON schema; Anthropic's forced tool whose input is the answer. Nil: free text.
    public var responseSchema: ResponseSchema?

    /// A request to `model`.
    public init(model: String, messages: [ChatMessage], tools: [ToolSpec] = [], temperature: Double? = nil, maxTokens: Int? = nil, stream: Bool = false, responseSchema: ResponseSchema? = nil) {
        self.model = model
        self.messages = messages
        self.tools = tools
        self.temperature = temperature
        self.maxTokens = maxTokens
        self.stream = stream
        self.responseSchema = responseSchema
    }
}

/// The shape a structured answer must have: a name (letters, digits, `_`, `-`) and a JSON
/// schema (an object schema for Anthropic's forced tool).
public struct ResponseSchema: Codable, Sendable, Hashable {
    /// The schema's name, as the provider sees it.
    public var name: String
    /// The JSON schema.
    public var schema: JSONValue

    /// A schema named `name`.
    public init(name: String, schema: JSONValue) {
        self.name = name
        self.schema = schema
    }
}

/// What a provider answered.
public struct LLMResponse: Codable, Sendable, Hashable {
    /// The answer's text.
    public var content: String
    /// The tools the model asked to call (empty when it answered).
    public var toolCalls: [ToolCall]
    /// `stop`, `tool_calls`, `length`, `refusal`, `content_filter`…
    public var finishReason: String
    /// Tokens used.
    public var usage: TokenUsage
    /// The model that answered, as `provider:model`.
    public var model: String

    enum CodingKeys: String, CodingKey {
        case content, usage, model
        case toolCalls = "tool_calls"
        case finishReason = "finish_reason"
    }

    /// A response (a provider builds it; tests and scripted providers too).
    public init(content: String, toolCalls: [ToolCall] = [], finishReason: String = "stop", usage: TokenUsage = .init(input: 0, output: 0), model: String) {
        self.content = content
        self.toolCalls = toolCalls
        self.finishReason = finishReason
        self.usage = usage
        self.model = model
    }

    /// Whether the model refused (`finish_reason` `refusal` or `content_filter`).
    public var isRefusal: Bool { finishReason == "refusal" || finishReason == "content_filter" }
}

/// A provider call that failed.
public struct LLMError: Error, Sendable, CustomStringConvertible, Hashable {
    /// Why a call failed, as recorded (`error.type`); retryable kinds are in `retryable`.
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        /// The kind as recorded, e.g. `rate_limited`.
        public let rawValue: String
        /// A kind named `r`.
        public init(_ r: String) { rawValue = r }
        /// The recorded name.
        public var description: String { rawValue }
        /// HTTP 429 (retryable, after `retryAfter` when given).
        public static let rateLimited = Kind("rate_limited")
        /// HTTP 5xx (retryable).
        public static let server = Kind("server_error")
        /// No answer within the call's timeout (retryable).
        public static let timeout = Kind("timeout")
        /// The connection failed or dropped (retryable).
        public static let transport = Kind("transport")
        /// An answer that does not parse as the provider's protocol (retryable).
        public static let malformed = Kind("malformed_response")
        /// The answer ended before its protocol said it was complete (a stream without
        /// `[DONE]` / `message_stop`).
        public static let incomplete = Kind("incomplete_response")
        /// HTTP 4xx other than 429: the request is wrong (not retried).
        public static let client = Kind("client_error")
        /// The provider or model is not configured, or its key is missing (not retried).
        public static let configuration = Kind("configuration")
        /// An answer the call's schema or validator rejected (repaired, then the next model).
        public static let invalidAnswer = Kind("invalid_answer")
        /// The validator itself failed (could not run, crashed, timed out): the call fails
        /// at once, since every answer would meet the same validator.
        public static let validatorFailed = Kind("validator_failed")
    }

    /// Why it failed.
    public var kind: Kind
    /// What the provider or transport said.
    public var message: String
    /// The HTTP status, when there was one.
    public var status: Int?
    /// Seconds the server asked us to wait (Retry-After).
    public var retryAfter: Double?

    /// An error of `kind`.
    public init(_ kind: Kind, _ message: String, status: Int? = nil, retryAfter: Double? = nil) {
        self.kind = kind
        self.message = message
        self.status = status
        self.retryAfter = retryAfter
    }

    /// Worth retrying the same model (429, 5xx, timeouts, dropped connections, incomplete
    /// answers, garbage).
    public var retryable: Bool { [.rateLimited, .server, .timeout, .transport, .malformed, .incomplete].contains(kind) }

    /// `KIND [STATUS]: MESSAGE`.
    public var description: String { "\(kind)\(status.map { " \($0)" } ?? ""): \(message)" }
}
