import CairnSpool
import Foundation

// The LLM providers' wire formats as pure functions of bytes and values: the
// `text/event-stream` framing, both providers' stream events and their JSON bodies.
// Nothing here does I/O, so the fuzz targets (Tests/Fuzz) build it without NIO;
// CairnAgents sends the requests and feeds the replies through it.

// MARK: - Server-sent events

/// One server-sent event: its `event:` name (if any) and its `data:` lines joined.
package struct SSEEvent: Sendable, Hashable {
    package var name: String?
    package var data: String

    package init(name: String?, data: String) {
        self.name = name
        self.data = data
    }
}

/// The `text/event-stream` format (WHATWG HTML §9.2): lines end in LF, CRLF or CR; an event
/// is dispatched at a blank line; `:` starts a comment. Bytes after the last blank line are
/// an incomplete event and are never dispatched (a stream cut mid-event loses that event).
package struct SSEParser {
    private var line: [UInt8] = []
    private var name: String? = nil
    private var data: [String] = []
    private var sawData = false
    private var afterCR = false

    package init() {}

    package mutating func feed<S: Sequence>(_ bytes: S) -> [SSEEvent] where S.Element == UInt8 {
        var out: [SSEEvent] = []
        for b in bytes {
            if afterCR {
                afterCR = false
                if b == 0x0A { continue }
            }
            if b == 0x0A || b == 0x0D {
                afterCR = b == 0x0D
                if let e = endOfLine() { out.append(e) }
            } else {
                line.append(b)
            }
        }
        return out
    }

    private mutating func endOfLine() -> SSEEvent? {
        defer { line.removeAll(keepingCapacity: true) }
        if line.isEmpty {
            defer {
                name = nil
                data = []
                sawData = false
            }
            return sawData ? SSEEvent(name: name, data: data.joined(separator: "\n")) : nil
        }
        if line[0] == UInt8(ascii: ":") { return nil }
        // Split at the colon byte and drop one space byte, then decode: as Characters, a
        // combining mark after the colon or the space joins it into one grapheme, and the
        // field (or the space) was not found.
        var field = line[...], value = ArraySlice<UInt8>()
        if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
            field = line[..<colon]
            value = line[(colon + 1)...]
            if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
        }
        switch String(decoding: field, as: UTF8.self) {
        case "event": name = String(decoding: value, as: UTF8.self)
        case "data":
            data.append(String(decoding: value, as: UTF8.self))
            sawData = true
        default: break
        }
        return nil
    }
}

/// Turns one API's events into a response; throws when the stream carries an error.
package protocol StreamDecoder: Sendable {
    /// One event; returns the text to show as it arrives, if any.
    func handle(_ event: SSEEvent) throws -> String?
    /// The answer, only when the protocol said it is complete; otherwise `.incomplete`.
    func response(model: String) throws -> LLMResponse
}

extension LLMError {
    /// How an HTTP status (or an in-stream error's HTTP equivalent) is treated: 429 rate
    /// limited, 408 timeout and 5xx server errors are retried; other statuses are not.
    static package func forStatus(_ status: Int, _ message: String, retryAfter: Double? = nil, http: Bool = true) -> LLMError {
        let kind: Kind
        switch status {
        case 429: kind = .rateLimited
        case 408: kind = .timeout
        case 500...599: kind = .server
        default: kind = .client
        }
        return LLMError(kind, message, status: http ? status : nil, retryAfter: kind == .client ? nil : retryAfter)
    }
}

// MARK: - OpenAI-compatible Chat Completions

/// The Chat Completions reply format (a JSON body, or its error object).
package enum OpenAIWire {
    static package func parse(_ j: JSONValue, model: String) throws -> LLMResponse {
        if let err = j["error"], !err.isNull { throw error(err) }
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
        let usage = TokenUsage(input: TokenUsage.count(j["usage"]?["prompt_tokens"]), output: TokenUsage.count(j["usage"]?["completion_tokens"]))
        return LLMResponse(content: content, toolCalls: calls, finishReason: finish, usage: usage, model: model)
    }

    /// An error object (`{"message", "type", "code"}`) in a stream or a 200 body, mapped as
    /// the HTTP status it stands for.
    static package func error(_ err: JSONValue) -> LLMError {
        let message = err["message"]?.stringValue ?? err.compactText()
        let type = err["type"]?.stringValue ?? "", code = err["code"]?.stringValue ?? ""
        let status: Int
        if let s = err["status"]?.intValue ?? err["code"]?.intValue, (400...599).contains(s) {
            status = Int(s)
        } else {
            let words = (type + " " + code).lowercased()
            if words.contains("rate_limit") || words.contains("insufficient_quota") { status = 429 }
            else if words.contains("invalid_api_key") || words.contains("authentication") || words.contains("unauthorized") { status = 401 }
            else if words.contains("permission") { status = 403 }
            else if words.contains("not_found") { status = 404 }
            else if words.contains("invalid_request") || words.contains("context_length") { status = 400 }
            else if words.contains("timeout") { status = 408 }
            else { status = 500 }  // server_error, overloaded, anything unknown
        }
        let label = [type, code].filter { !$0.isEmpty }.joined(separator: "/")
        return LLMError.forStatus(status, "in-stream error\(label.isEmpty ? "" : " \(label)"): \(message)", http: false)
    }
}

/// An OpenAI chat.completion.chunk stream. Complete only at `data: [DONE]` after a
/// `finish_reason`.
package final class OpenAIStream: StreamDecoder, @unchecked Sendable {
    private let lock = NSLock()
    private var text = ""
    private var refusal = ""
    private var calls: [Int: (id: String, name: String, args: String)] = [:]
    private var finish: String?
    private var usage = TokenUsage(input: 0, output: 0)
    private var done = false
    private var events = 0

    package init() {}

    package func handle(_ event: SSEEvent) throws -> String? {
        try lock.withLock {
            events += 1
            if event.data.trimmingCharacters(in: .whitespaces) == "[DONE]" {
                done = true
                return nil
            }
            guard let j = try? JSONValue.parse(event.data) else { throw LLMError(.malformed, "bad stream chunk: \(event.data.prefix(120))") }
            if let err = j["error"], !err.isNull { throw OpenAIWire.error(err) }
            if let u = j["usage"], case .object = u {
                usage = TokenUsage(input: TokenUsage.count(u["prompt_tokens"]), output: TokenUsage.count(u["completion_tokens"]))
            }
            guard let c = j["choices"]?.arrayValue?.first(where: { ($0["index"]?.intValue ?? 0) == 0 }) else { return nil }
            var shown: String? = nil
            let delta = c["delta"]
            if let d = delta?["content"]?.stringValue, !d.isEmpty {
                text += d
                shown = d
            }
            if let r = delta?["refusal"]?.stringValue, !r.isEmpty {
                refusal += r
                shown = r
            }
            for tc in delta?["tool_calls"]?.arrayValue ?? [] {
                let i = Int(tc["index"]?.intValue ?? 0)
                var cur = calls[i] ?? ("", "", "")
                if let id = tc["id"]?.stringValue { cur.id = id }
                if let n = tc["function"]?["name"]?.stringValue { cur.name += n }
                if let a = tc["function"]?["arguments"]?.stringValue { cur.args += a }
                calls[i] = cur
            }
            if let f = c["finish_reason"]?.stringValue { finish = f }
            return shown
        }
    }

    package func response(model: String) throws -> LLMResponse {
        try lock.withLock {
            guard done, let finish else {
                let missing = finish == nil ? "a finish_reason and data: [DONE]" : "data: [DONE]"
                throw LLMError(.incomplete, "the stream ended without \(missing) after \(events) events (\(text.count + refusal.count) characters of text so far)")
            }
            let tc = calls.keys.sorted().map { i in
                ToolCall(id: calls[i]!.id.isEmpty ? "call_\(i)" : calls[i]!.id, name: calls[i]!.name, arguments: calls[i]!.args.isEmpty ? "{}" : calls[i]!.args)
            }
            if !refusal.isEmpty { return LLMResponse(content: refusal, toolCalls: tc, finishReason: "refusal", usage: usage, model: model) }
            return LLMResponse(content: text, toolCalls: tc, finishReason: finish, usage: usage, model: model)
        }
    }
}

// MARK: - Anthropic Messages

/// The Messages reply format (a JSON body, its stop reasons and its error object).
package enum AnthropicWire {
    static package func stopReason(_ s: String?) -> String {
        switch s {
        case "tool_use": return "tool_calls"
        case "max_tokens": return "length"
        case "refusal": return "refusal"
        default: return "stop"
        }
    }

    /// The HTTP status each documented error type stands for.
    static package let errorStatus: [String: Int] = [
        "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
        "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
        "timeout_error": 504, "overloaded_error": 529,
    ]

    /// An error event (or an error body) mapped as its HTTP equivalent; unknown types as 500.
    static package func error(_ err: JSONValue?) -> LLMError {
        let type = err?["type"]?.stringValue ?? "error"
        let message = err?["message"]?.stringValue ?? err?.compactText() ?? "stream error"
        return LLMError.forStatus(errorStatus[type] ?? 500, "in-stream error \(type): \(message)", http: false)
    }

    static package func parse(_ j: JSONValue, model: String) throws -> LLMResponse {
        if j["type"] == "error" || (j["error"].map { !$0.isNull } ?? false) { throw error(j["error"]) }
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
        let usage = TokenUsage(input: TokenUsage.count(j["usage"]?["input_tokens"]), output: TokenUsage.count(j["usage"]?["output_tokens"]))
        return LLMResponse(content: text, toolCalls: calls, finishReason: stopReason(j["stop_reason"]?.stringValue), usage: usage, model: model)
    }
}

/// An Anthropic Messages event stream. Complete only at `message_stop`, after a
/// `message_delta` (which carries the stop reason).
package final class AnthropicStream: StreamDecoder, @unchecked Sendable {
    private let lock = NSLock()
    private var text = ""
    private var calls: [Int: (id: String, name: String, args: String, initial: String)] = [:]
    private var stop: String?
    private var sawDelta = false
    private var usage = TokenUsage(input: 0, output: 0)
    private var done = false
    private var events = 0

    package init() {}

    package func handle(_ event: SSEEvent) throws -> String? {
        try lock.withLock {
            events += 1
            guard let j = try? JSONValue.parse(event.data) else { throw LLMError(.malformed, "bad stream event: \(event.data.prefix(120))") }
            var shown: String? = nil
            switch j["type"]?.stringValue ?? event.name ?? "" {
            case "message_start":
                let u = j["message"]?["usage"]
                if let i = u?["input_tokens"] { usage.input = TokenUsage.count(i) }
                if let o = u?["output_tokens"] { usage.output = TokenUsage.count(o) }
            case "content_block_start":
                let i = Int(j["index"]?.intValue ?? 0)
                let block = j["content_block"]
                if block?["type"] == "tool_use" {
                    let input = block?["input"]
                    let initial = (input?.objectValue?.isEmpty ?? true) ? "" : input!.compactText()
                    calls[i] = (block?["id"]?.stringValue ?? "", block?["name"]?.stringValue ?? "", "", initial)
                } else if let t = block?["text"]?.stringValue, !t.isEmpty {
                    text += t
                    shown = t
                }
            case "content_block_delta":
                let i = Int(j["index"]?.intValue ?? 0)
                if let t = j["delta"]?["text"]?.stringValue {
                    text += t
                    shown = t
                } else if let p = j["delta"]?["partial_json"]?.stringValue {
                    calls[i]?.args += p
                }
            case "message_delta":
                sawDelta = true
                if let s = j["delta"]?["stop_reason"]?.stringValue { stop = s }
                // Cumulative counts; some compatible servers report input tokens here only.
                if let o = j["usage"]?["output_tokens"] { usage.output = TokenUsage.count(o) }
                if let i = j["usage"]?["input_tokens"], TokenUsage.count(i) > 0 { usage.input = TokenUsage.count(i) }
            case "message_stop":
                done = true
            case "error":
                throw AnthropicWire.error(j["error"])
            default:
                break  // ping, content_block_stop, and types added later
            }
            return shown
        }
    }

    package func response(model: String) throws -> LLMResponse {
        try lock.withLock {
            guard done, sawDelta else {
                let missing = sawDelta ? "message_stop" : "message_delta and message_stop"
                throw LLMError(.incomplete, "the stream ended without \(missing) after \(events) events (\(text.count) characters of text so far)")
            }
            let tc = calls.keys.sorted().map { i in
                let c = calls[i]!
                return ToolCall(id: c.id, name: c.name, arguments: c.args.isEmpty ? (c.initial.isEmpty ? "{}" : c.initial) : c.args)
            }
            return LLMResponse(content: text, toolCalls: tc, finishReason: AnthropicWire.stopReason(stop), usage: usage, model: model)
        }
    }
}
