import Cairn
import CairnSpool
import Foundation
import SystemPackage

/// How an LLM call retries, falls back and streams.
public struct LLMOptions: Sendable {
    /// Attempts per model on 429, 5xx, timeouts, transport errors and garbage.
    public var retry = RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(30), jitter: 0.2)
    /// Retry-After is honoured up to this; an absurd value is capped to it.
    public var maxRetryAfter: Duration = .seconds(60)
    /// What to do with a refusal (`finish_reason` refusal / content_filter).
    public var onRefusal: Strategy = .nextModel
    /// What to do when a tool call's arguments are not valid JSON.
    public var onMalformedToolCall: Strategy = .nextModel
    public var temperature: Double? = nil
    public var maxTokens: Int? = nil
    /// Stream to `logs/NAME.stream.jsonl` as the answer arrives.
    public var stream = true

    public enum Strategy: String, Sendable {
        /// Return the response as it is.
        case accept
        /// Try the next model of the chain (fail if there is none).
        case nextModel = "next_model"
        /// Fail the call.
        case fail
    }

    public init() {}
}

extension WorkflowContext {
    /// A recorded LLM call (SPEC §4): on first execution it sends the request along the
    /// model chain (`provider:model` names), retrying 429/5xx/timeouts with backoff that
    /// honours Retry-After, then falling back to the next model; the journal records the
    /// request (messages as a blob chain), the response, the model used, tokens, latency
    /// and every attempt. On replay nothing is sent.
    public func llm(_ name: String, models: [String], messages: [ChatMessage], tools: [ToolSpec] = [], options: LLMOptions = LLMOptions(), client: LLMClient? = nil) async throws -> LLMResponse {
        precondition(!models.isEmpty, "llm needs at least one model")
        let record = try await operation("llm", name) {
            try await self.sendLLM(name, models: models, messages: messages, tools: tools, options: options, client: client)
        }
        return try record.value.decode(as: LLMResponse.self)
    }

    /// The live part of `llm`: the model chain, retries, fallbacks, the stream log.
    private func sendLLM(_ name: String, models: [String], messages: [ChatMessage], tools: [ToolSpec], options: LLMOptions, client: LLMClient?) async throws -> OperationRecord {
            let client = try client ?? LLMClient.from(config: self.spoolConfig)
            let storedMessages = try self.storeValue(JSONValue(encoding: messages), force: true)
            let stream = StreamLog(path: self.logsDirectory.appending(Names.fileSafe(name) + ".stream.jsonl").string)
            var attempts: [JSONValue] = []
            var attemptNumber = 0
            var lastError: LLMError? = nil
            let started = Date()
            for ref in models {
                let provider: any LLMProvider, model: String
                do {
                    (provider, model) = try client.resolve(ref)
                } catch let e as LLMError {
                    attempts.append(["model": .string(ref), "error": .string(e.description)])
                    lastError = e
                    continue
                }
                let request = LLMRequest(model: model, messages: messages, tools: tools, temperature: options.temperature, maxTokens: options.maxTokens, stream: options.stream)
                modelLoop: for attempt in 1...options.retry.maxAttempts {
                    attemptNumber += 1
                    let t0 = Date()
                    stream.write(["attempt": .int(Int64(attemptNumber)), "model": .string("\(provider.name):\(model)")])
                    do {
                        var onDelta: (@Sendable (String) -> Void)? = nil
                        if options.stream { onDelta = { @Sendable d in stream.write(["delta": .string(d)]) } }
                        let response = try await provider.send(request, onDelta: onDelta)
                        let latency = Int(Date().timeIntervalSince(t0) * 1000)
                        var entry: [String: JSONValue] = ["model": .string(response.model), "status": "ok", "latency_ms": .int(Int64(latency))]
                        if response.isRefusal && options.onRefusal != .accept {
                            entry["status"] = "refusal"
                            attempts.append(.object(entry))
                            lastError = LLMError(.client, "the model refused: \(response.content.prefix(200))")
                            if options.onRefusal == .fail { break modelLoop }
                            break modelLoop  // next model
                        }
                        if options.onMalformedToolCall != .accept, let bad = response.toolCalls.first(where: { $0.parsedArguments == nil }) {
                            entry["status"] = "malformed_tool_call"
                            attempts.append(.object(entry))
                            lastError = LLMError(.malformed, "tool call '\(bad.name)' has arguments that are not JSON: \(bad.arguments.prefix(120))")
                            break modelLoop
                        }
                        attempts.append(.object(entry))
                        stream.write(["done": true, "tokens": ["input": .int(Int64(response.usage.input)), "output": .int(Int64(response.usage.output))]])
                        let data: JSONValue = [
                            "request": ["messages": storedMessages, "tools": .array(tools.map { .string($0.name) }), "models": .array(models.map { .string($0) })],
                            "model": .string(response.model),
                            "tokens": ["input": .int(Int64(response.usage.input)), "output": .int(Int64(response.usage.output))],
                            "latency_ms": .int(Int64(Date().timeIntervalSince(started) * 1000)),
                            "attempts": .array(attempts),
                        ]
                        return OperationRecord(value: try JSONValue(encoding: response), data: data, attempts: attemptNumber)
                    } catch let e as LLMError {
                        var entry: [String: JSONValue] = ["model": .string("\(provider.name):\(model)"), "status": .string(e.kind.rawValue), "error": .string(String(e.message.prefix(300))), "latency_ms": .int(Int64(Date().timeIntervalSince(t0) * 1000))]
                        if let s = e.status { entry["http_status"] = .int(Int64(s)) }
                        lastError = e
                        guard e.retryable, attempt < options.retry.maxAttempts else {
                            attempts.append(.object(entry))
                            break modelLoop
                        }
                        var delay = options.retry.delay(afterAttempt: attempt, unit: Double.random(in: 0..<1))
                        if let ra = e.retryAfter {
                            delay = min(ra, options.maxRetryAfter.seconds)
                            entry["retry_after_s"] = .double(ra)
                        }
                        entry["next_attempt_in_s"] = .double(delay)
                        attempts.append(.object(entry))
                        stream.write(["retry_in_s": .double(delay), "error": .string(e.description)])
                        try await self.clock.sleep(for: .milliseconds(Int64(delay * 1000)))
                    }
                }
                if options.onRefusal == .fail, lastError?.message.hasPrefix("the model refused") == true { break }
            }
            let e = lastError ?? LLMError(.configuration, "no model answered")
            let data: JSONValue = [
                "request": ["messages": storedMessages, "tools": .array(tools.map { .string($0.name) }), "models": .array(models.map { .string($0) })],
                "attempts": .array(attempts),
            ]
            return OperationRecord(value: .null, data: data, error: ErrorInfo(type: "llm_\(e.kind.rawValue)", message: "every model failed; last: \(e.description)", retryable: false), attempts: attemptNumber)
    }

    /// One model.
    public func llm(_ name: String, model: String, messages: [ChatMessage], tools: [ToolSpec] = [], options: LLMOptions = LLMOptions(), client: LLMClient? = nil) async throws -> LLMResponse {
        try await llm(name, models: [model], messages: messages, tools: tools, options: options, client: client)
    }
}

/// `logs/NAME.stream.jsonl`: one JSON line per event as the answer arrives
/// (`tail -f` shows an agent typing). Appended, not fsync'd: logs are not the truth.
final class StreamLog: @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()

    init(path: String) {
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
    }

    func write(_ o: [String: JSONValue]) {
        guard fd >= 0 else { return }
        var obj = o
        obj["at"] = .string(Timestamp.format(Date()))
        let line = Array((JSONValue.object(obj).compactText() + "\n").utf8)
        lock.withLock { _ = Glibc.write(fd, line, line.count) }
    }

    deinit { if fd >= 0 { close(fd) } }
}
