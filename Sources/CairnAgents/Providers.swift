import AsyncHTTPClient
import CairnSpool
import Foundation
import NIOCore
import NIOHTTP1

/// A model provider: one request, one response; `onDelta` gets streamed text as it arrives.
public protocol LLMProvider: Sendable {
    var name: String { get }
    func send(_ request: LLMRequest, onDelta: (@Sendable (String) -> Void)?) async throws -> LLMResponse
}

/// POSTs JSON and hands back the status, the headers and either the whole body or, when
/// streaming, each server-sent-event `data:` line as it arrives.
struct HTTPTransport: Sendable {
    var client: HTTPClient
    var timeout: TimeAmount

    struct Reply {
        var status: Int
        var body: Data
    }

    /// The whole exchange (head and body) must finish within `timeout`: AsyncHTTPClient's
    /// deadline is the first line of defence, a racing task the second.
    func post(_ url: String, headers: [(String, String)], body: JSONValue, stream: Bool, onEvent: (@Sendable (String, String?) -> Void)? = nil) async throws -> Reply {
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

    private func exchange(_ url: String, headers: [(String, String)], body: JSONValue, stream: Bool, onEvent: (@Sendable (String, String?) -> Void)?) async throws -> Reply {
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
            switch status {
            case 429: throw LLMError(.rateLimited, text, status: status, retryAfter: retryAfter)
            case 408: throw LLMError(.timeout, text, status: status, retryAfter: retryAfter)
            case 500...599: throw LLMError(.server, text, status: status, retryAfter: retryAfter)
            default: throw LLMError(.client, text, status: status)
            }
        }
        var data = Data()
        do {
            if stream, let onEvent {
                var pending = Data()
                var event: String? = nil
                for try await chunk in response.body {
                    pending.append(contentsOf: chunk.readableBytesView)
                    while let nl = pending.firstIndex(of: 0x0A) {
                        var line = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                        pending.removeSubrange(pending.startIndex...nl)
                        if line.hasSuffix("\r") { line.removeLast() }
                        if line.hasPrefix("event:") {
                            event = line.dropFirst(6).trimmingCharacters(in: .whitespaces)
                        } else if line.hasPrefix("data:") {
                            onEvent(line.dropFirst(5).trimmingCharacters(in: .whitespaces), event)
                        } else if line.isEmpty {
                            event = nil
                        }
                    }
                }
            } else {
                for try await chunk in response.body { data.append(contentsOf: chunk.readableBytesView) }
            }
        } catch {
            throw Self.transportError(error)
        }
        return Reply(status: status, body: data)
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
}

// MARK: - OpenAI-compatible Chat Completions (OpenAI, llama.cpp, vLLM, Ollama…)

public struct OpenAICompatibleProvider: LLMProvider {
    public let name: String
    let baseURL: String
    let apiKey: String?
    let transport: HTTPTransport

    public init(name: String, baseURL: String, apiKey: String?, client: HTTPClient = AgentHTTP.shared, timeout: Duration = .seconds(120)) {
        self.name = name
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.apiKey = apiKey
        self.transport = HTTPTransport(client: client, timeout: .milliseconds(Int64(timeout.seconds * 1000)))
    }

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
        return .object(o)
    }

    public func send(_ request: LLMRequest, onDelta: (@Sendable (String) -> Void)?) async throws -> LLMResponse {
        var headers: [(String, String)] = []
        if let apiKey { headers.append(("authorization", "Bearer \(apiKey)")) }
        let url = baseURL + "/chat/completions"
        if request.stream {
            let acc = StreamAccumulator()
            _ = try await transport.post(url, headers: headers, body: body(request), stream: true) { data, _ in
                acc.openAIChunk(data, onDelta: onDelta)
            }
            return try acc.openAIResponse(model: "\(name):\(request.model)")
        }
        let reply = try await transport.post(url, headers: headers, body: body(request), stream: false)
        guard let j = try? JSONValue.parse(reply.body) else { throw LLMError(.malformed, "response is not JSON: \(String(decoding: reply.body.prefix(200), as: UTF8.self))") }
        return try Self.parse(j, model: "\(name):\(request.model)")
    }

    static func parse(_ j: JSONValue, model: String) throws -> LLMResponse {
        guard let choice = j["choices"]?.arrayValue?.first, let message = choice["message"] else {
            throw LLMError(.malformed, "no choices[0].message in the response")
        }
        var content = message["content"]?.stringValue ?? ""
        var finish = choice["finish_reason"]?.stringValue ?? "stop"
        if let refusal = message["refusal"]?.stringValue, !refusal.isEmpty {
            content = refusal
            finish = "refusal"
        }
        let calls = (message["tool_calls"]?.arrayValue ?? []).compactMap { c -> ToolCall? in
            guard let f = c["function"], let n = f["name"]?.stringValue else { return nil }
            return ToolCall(id: c["id"]?.stringValue ?? "call_\(n)", name: n, arguments: f["arguments"]?.stringValue ?? "{}")
        }
        let usage = TokenUsage(input: Int(j["usage"]?["prompt_tokens"]?.intValue ?? 0), output: Int(j["usage"]?["completion_tokens"]?.intValue ?? 0))
        return LLMResponse(content: content, toolCalls: calls, finishReason: finish, usage: usage, model: model)
    }
}

// MARK: - Anthropic Messages

public struct AnthropicProvider: LLMProvider {
    public let name: String
    let baseURL: String
    let apiKey: String?
    let transport: HTTPTransport
    let version: String

    public init(name: String, baseURL: String = "https://api.anthropic.com/v1", apiKey: String?, client: HTTPClient = AgentHTTP.shared, timeout: Duration = .seconds(120), version: String = "2023-06-01") {
        self.name = name
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.apiKey = apiKey
        self.transport = HTTPTransport(client: client, timeout: .milliseconds(Int64(timeout.seconds * 1000)))
        self.version = version
    }

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
        if !r.tools.isEmpty {
            o["tools"] = .array(r.tools.map { ["name": .string($0.name), "description": .string($0.description), "input_schema": $0.parameters] })
        }
        if let t = r.temperature { o["temperature"] = .double(t) }
        if r.stream { o["stream"] = true }
        return .object(o)
    }

    public func send(_ request: LLMRequest, onDelta: (@Sendable (String) -> Void)?) async throws -> LLMResponse {
        var headers: [(String, String)] = [("anthropic-version", version)]
        if let apiKey { headers.append(("x-api-key", apiKey)) }
        let url = baseURL + "/messages"
        if request.stream {
            let acc = StreamAccumulator()
            _ = try await transport.post(url, headers: headers, body: body(request), stream: true) { data, event in
                acc.anthropicEvent(data, onDelta: onDelta)
            }
            return try acc.anthropicResponse(model: "\(name):\(request.model)")
        }
        let reply = try await transport.post(url, headers: headers, body: body(request), stream: false)
        guard let j = try? JSONValue.parse(reply.body) else { throw LLMError(.malformed, "response is not JSON: \(String(decoding: reply.body.prefix(200), as: UTF8.self))") }
        return try Self.parse(j, model: "\(name):\(request.model)")
    }

    static func stopReason(_ s: String?) -> String {
        switch s {
        case "tool_use": return "tool_calls"
        case "max_tokens": return "length"
        case "refusal": return "refusal"
        default: return "stop"
        }
    }

    static func parse(_ j: JSONValue, model: String) throws -> LLMResponse {
        guard let blocks = j["content"]?.arrayValue else { throw LLMError(.malformed, "no content[] in the response") }
        var text = ""
        var calls: [ToolCall] = []
        for b in blocks {
            switch b["type"]?.stringValue {
            case "text": text += b["text"]?.stringValue ?? ""
            case "tool_use":
                calls.append(ToolCall(id: b["id"]?.stringValue ?? "", name: b["name"]?.stringValue ?? "", arguments: (b["input"] ?? .object([:])).compactText()))
            default: break
            }
        }
        let usage = TokenUsage(input: Int(j["usage"]?["input_tokens"]?.intValue ?? 0), output: Int(j["usage"]?["output_tokens"]?.intValue ?? 0))
        return LLMResponse(content: text, toolCalls: calls, finishReason: stopReason(j["stop_reason"]?.stringValue), usage: usage, model: model)
    }
}

/// Collects a streamed response (both APIs' shapes).
final class StreamAccumulator: @unchecked Sendable {
    private let lock = NSLock()
    private var text = ""
    private var calls: [Int: (id: String, name: String, args: String)] = [:]
    private var finish = "stop"
    private var usage = TokenUsage(input: 0, output: 0)
    private var sawAny = false
    private var error: LLMError?

    func openAIChunk(_ data: String, onDelta: (@Sendable (String) -> Void)?) {
        guard data != "[DONE]" else { return }
        guard let j = try? JSONValue.parse(data) else {
            lock.withLock { error = LLMError(.malformed, "bad stream chunk: \(data.prefix(120))") }
            return
        }
        var delta: String? = nil
        lock.withLock {
            sawAny = true
            if let u = j["usage"], !u.isNull {
                usage = TokenUsage(input: Int(u["prompt_tokens"]?.intValue ?? 0), output: Int(u["completion_tokens"]?.intValue ?? 0))
            }
            guard let c = j["choices"]?.arrayValue?.first else { return }
            if let d = c["delta"]?["content"]?.stringValue, !d.isEmpty {
                text += d
                delta = d
            }
            if let r = c["delta"]?["refusal"]?.stringValue, !r.isEmpty {
                text += r
                finish = "refusal"
            }
            for tc in c["delta"]?["tool_calls"]?.arrayValue ?? [] {
                let i = Int(tc["index"]?.intValue ?? 0)
                var cur = calls[i] ?? ("", "", "")
                if let id = tc["id"]?.stringValue { cur.id = id }
                if let n = tc["function"]?["name"]?.stringValue { cur.name += n }
                if let a = tc["function"]?["arguments"]?.stringValue { cur.args += a }
                calls[i] = cur
            }
            if let f = c["finish_reason"]?.stringValue, finish != "refusal" { finish = f }
        }
        if let delta { onDelta?(delta) }
    }

    func openAIResponse(model: String) throws -> LLMResponse {
        try lock.withLock {
            if let error { throw error }
            guard sawAny else { throw LLMError(.malformed, "empty stream") }
            let tc = calls.keys.sorted().map { ToolCall(id: calls[$0]!.id.isEmpty ? "call_\($0)" : calls[$0]!.id, name: calls[$0]!.name, arguments: calls[$0]!.args.isEmpty ? "{}" : calls[$0]!.args) }
            return LLMResponse(content: text, toolCalls: tc, finishReason: finish, usage: usage, model: model)
        }
    }

    func anthropicEvent(_ data: String, onDelta: (@Sendable (String) -> Void)?) {
        guard let j = try? JSONValue.parse(data) else {
            lock.withLock { error = LLMError(.malformed, "bad stream event: \(data.prefix(120))") }
            return
        }
        var delta: String? = nil
        lock.withLock {
            sawAny = true
            switch j["type"]?.stringValue {
            case "message_start":
                usage.input = Int(j["message"]?["usage"]?["input_tokens"]?.intValue ?? 0)
            case "content_block_start":
                let i = Int(j["index"]?.intValue ?? 0)
                if j["content_block"]?["type"] == "tool_use" {
                    calls[i] = (j["content_block"]?["id"]?.stringValue ?? "", j["content_block"]?["name"]?.stringValue ?? "", "")
                }
            case "content_block_delta":
                let i = Int(j["index"]?.intValue ?? 0)
                if let t = j["delta"]?["text"]?.stringValue {
                    text += t
                    delta = t
                } else if let p = j["delta"]?["partial_json"]?.stringValue {
                    calls[i]?.args += p
                }
            case "message_delta":
                finish = AnthropicProvider.stopReason(j["delta"]?["stop_reason"]?.stringValue)
                if let o = j["usage"]?["output_tokens"]?.intValue { usage.output = Int(o) }
            case "error":
                error = LLMError(j["error"]?["type"] == "overloaded_error" ? .server : .malformed, j["error"]?["message"]?.stringValue ?? "stream error")
            default: break
            }
        }
        if let delta { onDelta?(delta) }
    }

    func anthropicResponse(model: String) throws -> LLMResponse {
        try lock.withLock {
            if let error { throw error }
            guard sawAny else { throw LLMError(.malformed, "empty stream") }
            let tc = calls.keys.sorted().map { ToolCall(id: calls[$0]!.id, name: calls[$0]!.name, arguments: calls[$0]!.args.isEmpty ? "{}" : calls[$0]!.args) }
            return LLMResponse(content: text, toolCalls: tc, finishReason: finish, usage: usage, model: model)
        }
    }
}

// MARK: - Scripted (canned responses; for demos and tests, clearly not a model)

/// Canned responses, by the conversation's turn: the Nth response answers a request whose
/// messages hold N-1 assistant messages. Nothing is sent anywhere.
public struct ScriptedProvider: LLMProvider {
    public let name: String
    let responses: [JSONValue]

    public init(name: String = "scripted", responses: [JSONValue]) {
        self.name = name
        self.responses = responses
    }

    public func send(_ request: LLMRequest, onDelta: (@Sendable (String) -> Void)?) async throws -> LLMResponse {
        let turn = request.messages.filter { $0.role == .assistant }.count
        guard turn < responses.count else {
            throw LLMError(.configuration, "scripted provider '\(name)' has \(responses.count) canned responses; turn \(turn + 1) asked for another")
        }
        let r = responses[turn]
        let content = r["content"]?.stringValue ?? ""
        for word in content.split(separator: " ", omittingEmptySubsequences: false) { onDelta?(String(word) + " ") }
        let calls = (r["tool_calls"]?.arrayValue ?? []).enumerated().map { i, c in
            ToolCall(id: c["id"]?.stringValue ?? "call_\(turn)_\(i)", name: c["name"]?.stringValue ?? "", arguments: (c["arguments"] ?? .object([:])).compactText())
        }
        let usage = TokenUsage(input: Int(r["usage"]?["input"]?.intValue ?? Int64(request.messages.reduce(0) { $0 + $1.content.count / 4 })), output: Int(r["usage"]?["output"]?.intValue ?? Int64(content.count / 4)))
        return LLMResponse(content: content, toolCalls: calls, finishReason: calls.isEmpty ? "stop" : "tool_calls", usage: usage, model: "\(name):\(request.model)")
    }
}
