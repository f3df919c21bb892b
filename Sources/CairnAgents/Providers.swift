@_exported import CairnLLMWire
import AsyncHTTPClient
import CairnSpool
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
import SystemPackage

/// A model provider: one request, one response; `onDelta` gets streamed text as it arrives.
public protocol LLMProvider: Sendable {
    /// The provider's name, as in `NAME:model`.
    var name: String { get }
    /// Sends one request; `onDelta` gets streamed text as it arrives (when streaming).
    func send(_ request: LLMRequest, onDelta: (@Sendable (String) -> Void)?) async throws -> LLMResponse
    /// Whether requests to it stream (cairn.json `"stream": false` turns streaming off).
    var streams: Bool { get }
    /// What it sends that must never be recorded or logged (its API key, once resolved).
    func secrets() -> [String]
}

extension LLMProvider {
    /// Streams unless the provider says otherwise.
    public var streams: Bool { true }
    /// No secrets unless the provider has some.
    public func secrets() -> [String] { [] }
}

/// Where a provider's API key comes from. It is read when the provider is used, not when
/// the configuration is loaded: a configured but unused provider without its key breaks
/// nothing.
public struct APIKey: Sendable, Hashable {
    enum Source: Sendable, Hashable {
        case none
        case literal(String)
        case environment(String, value: String?)
        case file(String)
    }

    let source: Source

    /// No key: requests are sent without one.
    public static let none = APIKey(source: .none)
    /// The key itself (nil: no key).
    public static func literal(_ key: String?) -> APIKey { APIKey(source: key.map { .literal($0) } ?? .none) }
    /// The environment variable `variable` (of `environment`, the process's by default).
    public static func environment(_ variable: String, in environment: [String: String] = ProcessInfo.processInfo.environment) -> APIKey {
        APIKey(source: .environment(variable, value: environment[variable]))
    }
    /// The first line of a key file.
    public static func file(_ path: String) -> APIKey { APIKey(source: .file(path)) }

    /// The key, or nil when the provider needs none. A key that cannot be had is a
    /// configuration error (not retried) naming the provider and where the key was to come from.
    public func resolve(provider: String) throws -> String? {
        switch source {
        case .none: return nil
        case .literal(let k): return k
        case .environment(let variable, let value):
            guard let value, !value.isEmpty else {
                throw LLMError(.configuration, "provider '\(provider)': no API key: the environment variable \(variable) is not set")
            }
            return value
        case .file(let path):
            guard let d = try? DurableFile.read(FilePath(path), limit: 64 * 1024) else {
                throw LLMError(.configuration, "provider '\(provider)': no API key: cannot read the key file \(path)")
            }
            let key = String(decoding: d, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !key.isEmpty else { throw LLMError(.configuration, "provider '\(provider)': no API key: the key file \(path) is empty") }
            return key
        }
    }
}

// (SSEParser and the StreamDecoder protocol are in CairnLLMWire.)

// MARK: - HTTP

/// The HTTP clients of the agent layer (AsyncHTTPClient on its singleton event loop group),
/// one per connect timeout. A refused connection fails at once (the pool does not retry it
/// until the connect timeout: the call's own retries and fallbacks decide what happens
/// next), and a connection not made within the connect timeout fails then.
public enum AgentHTTP {
    private static let clients = Mutex<[Int64: HTTPClient]>([:])

    /// The shared client with this connect timeout (made once per timeout, never shut down).
    public static func client(connectTimeout: Duration) -> HTTPClient {
        let ms = max(1, Int64(connectTimeout.seconds * 1000))
        return clients.withLock { all in
            if let c = all[ms] { return c }
            var config = HTTPClient.Configuration()
            config.timeout = HTTPClient.Configuration.Timeout(connect: .milliseconds(ms))
            config.connectionPool.retryConnectionEstablishment = false
            let c = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
            all[ms] = c
            return c
        }
    }

    /// The client with the default connect timeout.
    public static var shared: HTTPClient { client(connectTimeout: defaultConnectTimeout) }
    /// 5 seconds.
    public static let defaultConnectTimeout: Duration = .seconds(5)
}

/// POSTs JSON and hands back the status, the content type and the body; or, when the
/// answer is a `text/event-stream`, feeds its events to `onEvent` as they arrive.
struct HTTPTransport: Sendable {
    var client: HTTPClient
    var timeout: TimeAmount

    struct Reply {
        var status: Int
        var contentType: String
        var body: Data
        /// True when the body was a `text/event-stream` and went to `onEvent`.
        var streamed: Bool
    }

    /// The whole exchange (head and body) must finish within `timeout`: AsyncHTTPClient's
    /// deadline is the first line of defence, a racing task the second.
    func post(_ url: String, headers: [(String, String)], body: JSONValue, stream: Bool, onEvent: (@Sendable (SSEEvent) throws -> Void)? = nil) async throws -> Reply {
        let limit = timeout
        return try await withThrowingTaskGroup(of: Reply?.self) { group in
            group.addTask { try await self.exchange(url, headers: headers, body: body, stream: stream, onEvent: onEvent) }
            group.addTask {
                try await Task.sleep(for: .nanoseconds(limit.nanoseconds))
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let reply = first else {
                throw LLMError(.timeout, "no complete answer within \(Double(limit.nanoseconds) / 1e9)s")
            }
            return reply
        }
    }

    static let bodyLimit = 32 * 1024 * 1024

    private func exchange(_ url: String, headers: [(String, String)], body: JSONValue, stream: Bool, onEvent: (@Sendable (SSEEvent) throws -> Void)?) async throws -> Reply {
        var req = HTTPClientRequest(url: url)
        req.method = .POST
        req.headers.add(name: "content-type", value: "application/json")
        req.headers.add(name: "accept", value: stream ? "text/event-stream" : "application/json")
        for (k, v) in headers { req.headers.add(name: k, value: v) }
        req.body = .bytes(ByteBuffer(string: body.compactText()))
        let response: HTTPClientResponse
        do {
            response = try await client.execute(req, timeout: timeout)
        } catch {
            throw Self.transportError(error)
        }
        let status = Int(response.status.code)
        let contentType = response.headers.first(name: "content-type") ?? ""
        guard (200..<300).contains(status) else {
            var data = Data()
            do {
                for try await chunk in response.body {
                    data.append(contentsOf: chunk.readableBytesView)
                    if data.count > 64 * 1024 { break }
                }
            } catch {}
            let text = String(decoding: data.prefix(500), as: UTF8.self)
            let retryAfter = response.headers.first(name: "retry-after").flatMap(Self.parseRetryAfter)
            throw LLMError.forStatus(status, text, retryAfter: retryAfter)
        }
        var data = Data()
        do {
            if let onEvent, contentType.lowercased().hasPrefix("text/event-stream") {
                var parser = SSEParser()
                for try await chunk in response.body {
                    for event in parser.feed(chunk.readableBytesView) { try onEvent(event) }
                }
                return Reply(status: status, contentType: contentType, body: Data(), streamed: true)
            }
            for try await chunk in response.body {
                data.append(contentsOf: chunk.readableBytesView)
                if data.count > Self.bodyLimit { throw LLMError(.malformed, "the response is larger than \(Self.bodyLimit) bytes") }
            }
        } catch {
            throw Self.transportError(error)
        }
        return Reply(status: status, contentType: contentType, body: data, streamed: false)
    }

    static func transportError(_ error: any Error) -> LLMError {
        if let e = error as? LLMError { return e }
        if let h = error as? HTTPClientError {
            if h == .deadlineExceeded || h == .readTimeout || h == .connectTimeout || h == .writeTimeout {
                return LLMError(.timeout, "\(h)")
            }
        }
        return LLMError(.transport, "\(error)")
    }

    /// Retry-After: seconds, or an HTTP date.
    static func parseRetryAfter(_ v: String) -> Double? {
        if let s = Double(v.trimmingCharacters(in: .whitespaces)), s >= 0 { return s }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return f.date(from: v).map { max(0, $0.timeIntervalSinceNow) }
    }

    /// The answer of a call that was asked to stream (or not): the stream's events when it
    /// streamed, and otherwise the body: a stream sent unasked is decoded as one, JSON is
    /// parsed by `parseJSON`, anything else fails naming the content type that arrived.
    /// One call as both providers make it: POST, feed streamed events to `decoder` (deltas
    /// to `onDelta`), decode the reply as the protocol says, and never let the key reach an
    /// error message.
    func exchange(_ url: String, headers: [(String, String)], key: String?, body: JSONValue, stream: Bool, decoder: some StreamDecoder, model: String,
                  onDelta: (@Sendable (String) -> Void)?, parseJSON: (JSONValue) throws -> LLMResponse) async throws -> LLMResponse {
        do {
            let reply = try await post(url, headers: headers, body: body, stream: stream) { event in
                if let d = try decoder.handle(event) { onDelta?(d) }
            }
            return try Self.decode(reply, asked: stream, decoder: decoder, model: model, parseJSON: parseJSON)
        } catch var e as LLMError {
            if let key { e.message = Redactor([key]).apply(e.message) }
            throw e
        }
    }

    static func decode(_ reply: Reply, asked stream: Bool, decoder: some StreamDecoder, model: String, parseJSON: (JSONValue) throws -> LLMResponse) throws -> LLMResponse {
        if reply.streamed { return try decoder.response(model: model) }
        let ct = reply.contentType.isEmpty ? "no content type" : reply.contentType
        if reply.contentType.lowercased().hasPrefix("text/event-stream") {
            var parser = SSEParser()
            for event in parser.feed(reply.body) { _ = try decoder.handle(event) }
            return try decoder.response(model: model)
        }
        if let j = try? JSONValue.parse(reply.body), case .object = j { return try parseJSON(j) }
        let expected = stream ? "a text/event-stream" : "a JSON object"
        let what = reply.body.isEmpty ? "an empty body" : "\(reply.body.count) bytes: \(String(decoding: reply.body.prefix(160), as: UTF8.self))"
        throw LLMError(.malformed, "expected \(expected), got \(ct) with \(what)")
    }
}

// MARK: - OpenAI-compatible Chat Completions (OpenAI, llama.cpp, vLLM, Ollama…)

/// A provider speaking OpenAI's Chat Completions (OpenAI, llama.cpp, vLLM, Ollama…).
public struct OpenAICompatibleProvider: LLMProvider {
    /// The provider's name, as in `NAME:model`.
    public let name: String
    let baseURL: String
    let apiKey: APIKey
    let transport: HTTPTransport
    /// Whether requests stream (server-sent events).
    public let streams: Bool

    /// A provider at `baseURL` (ending before `/chat/completions`) with a literal API key.
    public init(name: String, baseURL: String, apiKey: String?, client: HTTPClient? = nil, timeout: Duration = .seconds(120), connectTimeout: Duration = AgentHTTP.defaultConnectTimeout, stream: Bool = true) {
        self.init(name: name, baseURL: baseURL, key: .literal(apiKey), client: client, timeout: timeout, connectTimeout: connectTimeout, stream: stream)
    }

    /// A provider at `baseURL` whose key is read from `key` when a request is sent.
    public init(name: String, baseURL: String, key: APIKey, client: HTTPClient? = nil, timeout: Duration = .seconds(120), connectTimeout: Duration = AgentHTTP.defaultConnectTimeout, stream: Bool = true) {
        self.name = name
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.apiKey = key
        self.transport = HTTPTransport(client: client ?? AgentHTTP.client(connectTimeout: connectTimeout), timeout: .milliseconds(Int64(timeout.seconds * 1000)))
        self.streams = stream
    }

    /// The resolved API key, so that it is never recorded or logged.
    public func secrets() -> [String] { ((try? apiKey.resolve(provider: name)) ?? nil).map { [$0] } ?? [] }

    func body(_ r: LLMRequest) -> JSONValue {
        var o: [String: JSONValue] = [
            "model": .string(r.model),
            "messages": .array(r.messages.map { m in
                var j: [String: JSONValue] = ["role": .string(m.role.rawValue), "content": .string(m.content)]
                if let calls = m.toolCalls, !calls.isEmpty {
                    j["tool_calls"] = .array(calls.map { ["id": .string($0.id), "type": "function", "function": ["name": .string($0.name), "arguments": .string($0.arguments)]] })
                }
                if let id = m.toolCallID { j["tool_call_id"] = .string(id) }
                return .object(j)
            }),
        ]
        if !r.tools.isEmpty {
            o["tools"] = .array(r.tools.map { ["type": "function", "function": ["name": .string($0.name), "description": .string($0.description), "parameters": $0.parameters]] })
        }
        if let t = r.temperature { o["temperature"] = .double(t) }
        if let m = r.maxTokens { o["max_tokens"] = .int(Int64(m)) }
        if r.stream {
            o["stream"] = true
            o["stream_options"] = ["include_usage": true]
        }
        if let shape = r.responseSchema {
            o["response_format"] = ["type": "json_schema", "json_schema": ["name": .string(shape.name), "schema": shape.schema, "strict": true]]
        }
        return .object(o)
    }

    /// Sends one Chat Completions request; `onDelta` gets streamed text as it arrives.
    public func send(_ request: LLMRequest, onDelta: (@Sendable (String) -> Void)?) async throws -> LLMResponse {
        let key = try apiKey.resolve(provider: name)
        let model = "\(name):\(request.model)"
        return try await transport.exchange(baseURL + "/chat/completions", headers: key.map { [("authorization", "Bearer \($0)")] } ?? [], key: key,
                                            body: body(request), stream: request.stream, decoder: OpenAIStream(), model: model, onDelta: onDelta) { try Self.parse($0, model: model) }
    }

    static func parse(_ j: JSONValue, model: String) throws -> LLMResponse { try OpenAIWire.parse(j, model: model) }
}

// (OpenAIStream, the chunk decoder, is in CairnLLMWire.)

// MARK: - Anthropic Messages

/// A provider speaking Anthropic's Messages API.
public struct AnthropicProvider: LLMProvider {
    /// The provider's name, as in `NAME:model`.
    public let name: String
    let baseURL: String
    let apiKey: APIKey
    let transport: HTTPTransport
    let version: String
    /// Whether requests stream (server-sent events).
    public let streams: Bool

    /// A provider at `baseURL` with a literal API key.
    public init(name: String, baseURL: String = "https://api.anthropic.com/v1", apiKey: String?, client: HTTPClient? = nil, timeout: Duration = .seconds(120), connectTimeout: Duration = AgentHTTP.defaultConnectTimeout, version: String = "2023-06-01", stream: Bool = true) {
        self.init(name: name, baseURL: baseURL, key: .literal(apiKey), client: client, timeout: timeout, connectTimeout: connectTimeout, version: version, stream: stream)
    }

    /// A provider at `baseURL` whose key is read from `key` when a request is sent.
    public init(name: String, baseURL: String = "https://api.anthropic.com/v1", key: APIKey, client: HTTPClient? = nil, timeout: Duration = .seconds(120), connectTimeout: Duration = AgentHTTP.defaultConnectTimeout, version: String = "2023-06-01", stream: Bool = true) {
        self.name = name
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.apiKey = key
        self.transport = HTTPTransport(client: client ?? AgentHTTP.client(connectTimeout: connectTimeout), timeout: .milliseconds(Int64(timeout.seconds * 1000)))
        self.version = version
        self.streams = stream
    }

    /// The resolved API key, so that it is never recorded or logged.
    public func secrets() -> [String] { ((try? apiKey.resolve(provider: name)) ?? nil).map { [$0] } ?? [] }

    func body(_ r: LLMRequest) -> JSONValue {
        var system: [String] = []
        var messages: [JSONValue] = []
        for m in r.messages {
            switch m.role {
            case .system: system.append(m.content)
            case .user: messages.append(["role": "user", "content": .string(m.content)])
            case .assistant:
                var blocks: [JSONValue] = []
                if !m.content.isEmpty { blocks.append(["type": "text", "text": .string(m.content)]) }
                for c in m.toolCalls ?? [] {
                    blocks.append(["type": "tool_use", "id": .string(c.id), "name": .string(c.name), "input": c.parsedArguments ?? .object([:])])
                }
                messages.append(["role": "assistant", "content": .array(blocks)])
            case .tool:
                let block: JSONValue = ["type": "tool_result", "tool_use_id": .string(m.toolCallID ?? ""), "content": .string(m.content)]
                // Consecutive tool results travel in one user message.
                if case .object(var last) = messages.last ?? .null, last["role"] == "user", case .array(var blocks) = last["content"] ?? .null,
                   blocks.allSatisfy({ $0["type"] == "tool_result" }) {
                    blocks.append(block)
                    last["content"] = .array(blocks)
                    messages[messages.count - 1] = .object(last)
                } else {
                    messages.append(["role": "user", "content": [block]])
                }
            }
        }
        var o: [String: JSONValue] = ["model": .string(r.model), "messages": .array(messages), "max_tokens": .int(Int64(r.maxTokens ?? 1024))]
        if !system.isEmpty { o["system"] = .string(system.joined(separator: "\n\n")) }
        var tools: [JSONValue] = r.tools.map { ["name": .string($0.name), "description": .string($0.description), "input_schema": $0.parameters] }
        if let shape = r.responseSchema {
            // Structured output: a tool the model must call, whose input is the answer.
            tools.append(["name": .string(shape.name), "description": "Give your answer as this tool's input.", "input_schema": shape.schema])
            o["tool_choice"] = ["type": "tool", "name": .string(shape.name)]
        }
        if !tools.isEmpty { o["tools"] = .array(tools) }
        if let t = r.temperature { o["temperature"] = .double(t) }
        if r.stream { o["stream"] = true }
        return .object(o)
    }

    /// Sends one Messages request; `onDelta` gets streamed text as it arrives.
    public func send(_ request: LLMRequest, onDelta: (@Sendable (String) -> Void)?) async throws -> LLMResponse {
        let key = try apiKey.resolve(provider: name)
        let model = "\(name):\(request.model)"
        let response = try await transport.exchange(baseURL + "/messages", headers: [("anthropic-version", version)] + (key.map { [("x-api-key", $0)] } ?? []), key: key,
                                                    body: body(request), stream: request.stream, decoder: AnthropicStream(), model: model, onDelta: onDelta) { try Self.parse($0, model: model) }
        return Self.structured(response, request.responseSchema)
    }

    /// With a response schema the answer is the forced tool's input: it becomes the content
    /// (JSON text), as OpenAI's structured output gives it, and is no tool call.
    static func structured(_ response: LLMResponse, _ shape: ResponseSchema?) -> LLMResponse {
        guard let shape, let i = response.toolCalls.firstIndex(where: { $0.name == shape.name }) else { return response }
        var r = response
        r.content = r.toolCalls[i].arguments
        r.toolCalls.remove(at: i)
        return r
    }

    static func parse(_ j: JSONValue, model: String) throws -> LLMResponse { try AnthropicWire.parse(j, model: model) }
}

// (AnthropicStream is in CairnLLMWire.)

// MARK: - Scripted (canned responses; for demos and tests, clearly not a model)

/// Canned responses, by the conversation's turn: the Nth response answers a request whose
/// messages hold N-1 assistant messages. Nothing is sent anywhere.
public struct ScriptedProvider: LLMProvider {
    /// The provider's name (`scripted` unless given).
    public let name: String
    let responses: [JSONValue]

    /// A provider answering with `responses`, one per turn (`content`, `tool_calls`, `usage`).
    public init(name: String = "scripted", responses: [JSONValue]) {
        self.name = name
        self.responses = responses
    }

    /// The response for this turn; a configuration error when the script has none left.
    public func send(_ request: LLMRequest, onDelta: (@Sendable (String) -> Void)?) async throws -> LLMResponse {
        // A repair (rejected answers and their reasons at the end) is the same turn: answered
        // by that turn's `repaired` response.
        var repairs = 0
        var tail = request.messages[...]
        while tail.count >= 2, tail.last?.role == .user, tail.last?.content.hasPrefix(LLMCallState.repairPrefix) == true, tail.dropLast().last?.role == .assistant {
            repairs += 1
            tail = tail.dropLast(2)
        }
        let turn = request.messages.filter { $0.role == .assistant }.count - repairs
        guard turn < responses.count else {
            throw LLMError(.configuration, "scripted provider '\(name)' has \(responses.count) canned responses; turn \(turn + 1) asked for another")
        }
        let r = repairs > 0 ? responses[turn]["repaired"] ?? responses[turn] : responses[turn]
        let content = r["content"]?.stringValue ?? ""
        for word in content.split(separator: " ", omittingEmptySubsequences: false) { onDelta?(String(word) + " ") }
        let calls = (r["tool_calls"]?.arrayValue ?? []).enumerated().map { i, c in
            ToolCall(id: c["id"]?.stringValue ?? "call_\(turn)_\(i)", name: c["name"]?.stringValue ?? "", arguments: (c["arguments"] ?? .object([:])).compactText())
        }
        let usage = TokenUsage(input: Int(r["usage"]?["input"]?.intValue ?? Int64(request.messages.reduce(0) { $0 + $1.content.count / 4 })), output: Int(r["usage"]?["output"]?.intValue ?? Int64(content.count / 4)))
        return LLMResponse(content: content, toolCalls: calls, finishReason: calls.isEmpty ? "stop" : "tool_calls", usage: usage, model: "\(name):\(request.model)")
    }
}

/// A provider whose configuration is wrong (unknown type, unreadable canned responses):
/// using it fails with that configuration error; the others still work.
struct MisconfiguredProvider: LLMProvider {
    let name: String
    let error: LLMError

    func send(_ request: LLMRequest, onDelta: (@Sendable (String) -> Void)?) async throws -> LLMResponse { throw error }
}

/// Replaces secrets (API keys) with `[redacted]` in whatever is recorded or logged.
/// Secrets shorter than 8 characters are left alone (they would redact ordinary words).
struct Redactor: Sendable {
    static let minimumLength = 8
    let secrets: [String]

    init(_ secrets: [String]) {
        self.secrets = Array(Set(secrets.filter { $0.count >= Self.minimumLength })).sorted { $0.count > $1.count }
    }

    func apply(_ s: String) -> String {
        var r = s
        for k in secrets where r.contains(k) { r = r.replacingOccurrences(of: k, with: "[redacted]") }
        return r
    }

    func apply(_ v: JSONValue) -> JSONValue {
        guard !secrets.isEmpty else { return v }
        switch v {
        case .string(let s): return .string(apply(s))
        case .array(let a): return .array(a.map(apply))
        case .object(let o): return .object(Dictionary(o.map { (apply($0.key), apply($0.value)) }, uniquingKeysWith: { a, _ in a }))
        default: return v
        }
    }
}
