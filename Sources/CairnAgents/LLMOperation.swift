import Cairn
import CairnSpool
import Foundation
import SystemPackage

/// How an LLM call retries, falls back and streams.
public struct LLMOptions: Sendable {
    /// Attempts per model on 429, 5xx, timeouts, transport errors, incomplete answers and garbage.
    public var retry = RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(30), jitter: 0.2)
    /// Retry-After is honoured up to this; an absurd value is capped to it. (Long waits
    /// are durable, see `durableWaitAfter`, so an hour holds no process or slot.)
    public var maxRetryAfter: Duration = .seconds(3600)
    /// A wait before the next attempt (Retry-After or backoff) longer than this is not slept
    /// in process: the run waits durably (`waiting_for` kind `retry` with its due time),
    /// which frees its concurrency slot and survives a restart.
    public var durableWaitAfter: Duration = .seconds(5)
    /// What to do with a refusal (`finish_reason` refusal / content_filter).
    public var onRefusal: Strategy = .nextModel
    /// What to do when a tool call's arguments are not valid JSON.
    public var onMalformedToolCall: Strategy = .nextModel
    /// The sampling temperature passed to the provider; nil: the provider's default.
    public var temperature: Double? = nil
    /// The most tokens the answer may have; nil: the provider's default.
    public var maxTokens: Int? = nil
    /// The run's token budget (input + output over all its LLM calls); nil: cairn.json's
    /// `"llm": {"token_budget": N}`, if any. When a call would exceed it (tokens spent so far
    /// plus the call's estimate: its messages' characters / 4, plus `maxTokens`), the run
    /// waits at a gate (`waiting_for` kind `budget`) for a person to raise it or reject.
    public var tokenBudget: Int? = nil
    /// Ask providers to stream (logged to `logs/NAME.stream.jsonl` as the answer arrives).
    /// A provider configured with `"stream": false` never streams.
    public var stream = true
    /// The JSON the answer must be (structured output, see `ResponseSchema`); an answer that
    /// is not JSON is rejected like one the validator rejects.
    public var responseSchema: ResponseSchema? = nil
    /// Looks at an answer before it is recorded: returns why it is wrong (it is then repaired,
    /// or the next model asked), or nil to accept it. Runs on first execution only: a
    /// replayed call returns the recorded (validated) answer without calling it.
    public var validator: (@Sendable (LLMResponse) async throws -> String?)? = nil
    /// Repairs per model: a rejected answer goes back to the model with the reason, up to
    /// this many times (at most `maximumRepairs`), before the next model is asked.
    public var repairs = 2
    /// The most repairs per model: each one resends the conversation with every rejected
    /// answer so far, and is recorded with them.
    public static let maximumRepairs = 10
    /// When every model's answers were rejected: fail the call (`llm_invalid_answer`),
    /// accept the last answer, or ask a person at the gate `answer-NAME`.
    public var onInvalidAnswer: InvalidAnswerEnd = .fail

    /// How a call ends when every model's answers were rejected.
    public enum InvalidAnswerEnd: String, Sendable {
        /// The call fails with `llm_invalid_answer` (not retryable).
        case fail
        /// The last answer is recorded as it is (marked `accepted_invalid`).
        case accept
        /// The run waits at the gate `answer-NAME` (`waiting_for` kind `answer`; the request
        /// file holds the last answer and every reason): approving accepts the last answer,
        /// or the approval's value (the answer's text, checked like an answer) replaces it;
        /// rejecting fails the call.
        case askPerson = "ask_person"
    }

    /// What to do with an answer that cannot be used as it is.
    public enum Strategy: String, Sendable {
        /// Return the response as it is.
        case accept
        /// Try the next model of the chain (fail if there is none).
        case nextModel = "next_model"
        /// Fail the call.
        case fail
    }

    /// The defaults described on each property.
    public init() {}
}

/// Where a call stands between attempts: recorded (`llm-retry` records) when it waits
/// durably, so that the next execution carries on from there.
struct LLMCallState: Sendable {
    /// Index of the model being tried.
    var model = 0
    /// Attempts made with that model.
    var attempt = 0
    /// Requests sent in all.
    var sent = 0
    var attempts: [JSONValue] = []
    var lastError: LLMError? = nil
    var started: Date
    /// When the next attempt is due (a durable wait).
    var until: Date? = nil
    /// The current model's rejected answers and why, sent back with the next request (a
    /// repair): `{"answer", "reason"}` each.
    var repair: [JSONValue] = []
    /// Repair requests sent in all, and tokens rejected answers cost.
    var repairs = 0
    var rejectedInput: Int64 = 0, rejectedOutput: Int64 = 0
    /// The last rejected answer (what `onInvalidAnswer: .accept` returns).
    var lastRejected: JSONValue? = nil
    /// Every model's answers were rejected and a person is asked (`.askPerson`).
    var askingPerson = false
    /// The person's decision, recorded before its file leaves approvals/ (a crash between
    /// the two finds it here): `{"approved", "by", "text"?, "reason"?, "file"}`.
    var personDecision: JSONValue? = nil

    init(started: Date) { self.started = started }

    /// A due time in whole milliseconds (as `until_ms` is recorded).
    static func date(ms: Int64) -> Date { Date(timeIntervalSince1970: Double(ms) / 1000) }
    static func due(_ d: Date) -> Date { date(ms: Int64((d.timeIntervalSince1970 * 1000).rounded())) }

    var json: JSONValue {
        var o: [String: JSONValue] = [
            "model_index": .int(Int64(model)), "model_attempt": .int(Int64(attempt)), "sent": .int(Int64(sent)),
            "attempts": .array(attempts), "started_at": .string(Timestamp.format(started)),
        ]
        if let until {
            // Whole milliseconds, so that a resumed execution computes the very same
            // `waiting_for` (a formatted timestamp parsed back can be off by one).
            o["until_ms"] = .int(Int64((until.timeIntervalSince1970 * 1000).rounded()))
            o["until"] = .string(Timestamp.format(until))
        }
        if let e = lastError { o["last_error"] = ["kind": .string(e.kind.rawValue), "message": .string(e.message), "status": e.status.map { .int(Int64($0)) } ?? .null] }
        if !repair.isEmpty { o["repair"] = .array(repair) }
        if repairs > 0 { o["repairs"] = .int(Int64(repairs)) }
        if rejectedInput + rejectedOutput > 0 { o["tokens_rejected"] = ["input": .int(rejectedInput), "output": .int(rejectedOutput)] }
        if let lastRejected { o["last_rejected"] = lastRejected }
        if askingPerson { o["asking_person"] = true }
        if let personDecision { o["person_decision"] = personDecision }
        return .object(o)
    }

    init?(_ j: JSONValue) {
        guard let m = j["model_index"]?.intValue, let a = j["model_attempt"]?.intValue, let s = j["sent"]?.intValue,
              let started = j["started_at"]?.stringValue.flatMap(Timestamp.parse) else { return nil }
        model = Int(m)
        attempt = Int(a)
        sent = Int(s)
        attempts = j["attempts"]?.arrayValue ?? []
        self.started = started
        until = j["until_ms"]?.intValue.map { Self.date(ms: $0) } ?? j["until"]?.stringValue.flatMap(Timestamp.parse)
        if let e = j["last_error"], let k = e["kind"]?.stringValue {
            lastError = LLMError(LLMError.Kind(k), e["message"]?.stringValue ?? "", status: e["status"]?.intValue.map { Int($0) })
        }
        repair = j["repair"]?.arrayValue ?? []
        repairs = Int(j["repairs"]?.intValue ?? 0)
        rejectedInput = j["tokens_rejected"]?["input"]?.intValue ?? 0
        rejectedOutput = j["tokens_rejected"]?["output"]?.intValue ?? 0
        lastRejected = j["last_rejected"]
        askingPerson = j["asking_person"] == true
        personDecision = j["person_decision"]
    }

    /// The messages a repair adds: each rejected answer (as text: tool calls written out,
    /// since a provider wants every tool call answered) and why it was rejected.
    var repairMessages: [ChatMessage] {
        repair.flatMap { r -> [ChatMessage] in
            [.assistant(r["answer"]?.stringValue ?? ""),
             .user("\(Self.repairPrefix)\(r["reason"]?.stringValue ?? "it is not valid"). Answer again, correcting that; reply with the corrected answer only.")]
        }
    }

    /// How a repair's message starts.
    static let repairPrefix = "Your answer was rejected: "
}

extension RecordKind {
    /// An LLM call's answer (or its failure), with the request, tokens and attempts.
    public static let llm: Self = "llm"
    /// Where a call stood when it waited durably between attempts.
    public static let llmRetry: Self = "llm-retry"
    /// A person's decision on raising the run's token budget.
    public static let llmBudget: Self = "llm-budget"
}

/// `ctx.llm` as a durable operation: `llm-retry` records (a durable wait between attempts:
/// the next execution carries on from where it stood) and `llm-budget` records (a person's
/// decision on the budget, replayed for position), then `llm` with the answer.
struct LLMCall: DurableOperation {
    let callName: String
    let send: @Sendable (LLMCallState?) async throws -> OperationRecord
    var resume: LLMCallState? = nil

    init(callName: String, send: @escaping @Sendable (LLMCallState?) async throws -> OperationRecord) {
        self.callName = callName
        self.send = send
    }

    var kind: RecordKind { .llm }
    var name: String? { callName }
    func owns(_ e: JournalEntry) -> Bool { e.name == callName && [.llm, .llmRetry, .llmBudget].contains(e.kind) }

    /// The answer's record, as any recorded operation's.
    var answer: RecordedOperation {
        let (send, resume) = (self.send, self.resume)
        return RecordedOperation(kind: .llm, name: callName) { try await send(resume) }
    }

    mutating func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<OperationRecord> {
        switch e.kind {
        case .llmRetry:
            resume = LLMCallState(try ctx.resolveValue(e.value ?? .null)["state"] ?? .null)
            return .next
        case .llmBudget:
            return .next
        default:
            return try await answer.replay(e, in: ctx)
        }
    }

    func execute(in ctx: WorkflowContext) async throws -> OperationStep<OperationRecord> {
        try await answer.execute(in: ctx)
    }
}

extension WorkflowContext {
    /// A recorded LLM call (SPEC §4): on first execution it sends the request along the
    /// model chain (`provider:model` names), retrying 429/5xx/timeouts/incomplete answers
    /// with backoff that honours Retry-After, then falling back to the next model; the
    /// journal records the request (messages as a blob chain), the response, the model
    /// used, tokens, latency and every attempt. On replay nothing is sent.
    public func llm(_ name: String, models: [String], messages: [ChatMessage], tools: [ToolSpec] = [], options: LLMOptions = LLMOptions(), client: LLMClient? = nil) async throws -> LLMResponse {
        precondition(!models.isEmpty, "llm needs at least one model")
        let record = try await perform(LLMCall(callName: name) { [self] resume in
            try await self.sendLLM(name, models: models, messages: messages, tools: tools, options: options, client: client, resume: resume)
        })
        return try record.value.decode(as: LLMResponse.self)
    }

    /// The live part of `llm`: the model chain, retries, fallbacks, durable waits, the stream log.
    private func sendLLM(_ name: String, models: [String], messages: [ChatMessage], tools: [ToolSpec], options: LLMOptions, client: LLMClient?, resume: LLMCallState?) async throws -> OperationRecord {
        let client = try client ?? LLMClient.from(config: self.spoolConfig)
        let redact = Redactor(client.secrets())
        let storedMessages = try self.storeValue(JSONValue(encoding: messages), force: true)
        let stream = StreamLog(path: self.logsDirectory.appending(Names.fileSafe(name) + ".stream.jsonl").string, redactor: redact)
        let requestData: JSONValue = ["messages": storedMessages, "tools": .array(tools.map { .string($0.name) }), "models": .array(models.map { .string($0) })]
        var s = resume ?? LLMCallState(started: self.clock.now())
        if s.askingPerson { return try await askPerson(name, s, options: options, requestData: requestData, redact: redact) }
        if s.sent == 0, let refused = try self.checkBudget(name, messages: messages, options: options, requestData: requestData) {
            return refused
        }
        if let until = s.until {
            if self.clock.now() < until { throw self.waiting(WaitingFor(json: redact.apply(Self.retryWait(name, s, models)))) }
            s.until = nil
            stream.write(["resumed": true, "after": .string(Timestamp.format(until))])
        }
        var stopChain = false
        while s.model < models.count && !stopChain {
            let ref = models[s.model]
            let provider: any LLMProvider, model: String
            do {
                (provider, model) = try client.resolve(ref)
            } catch let e as LLMError {
                s.attempts.append(["model": .string(ref), "status": .string(e.kind.rawValue), "error": .string(redact.apply(e.message))])
                stream.write(["model": .string(ref), "status": .string(e.kind.rawValue), "error": .string(e.description)])
                s.lastError = e
                s.model += 1
                s.attempt = 0
                continue
            }
            var request = LLMRequest(model: model, messages: messages, tools: tools, temperature: options.temperature, maxTokens: options.maxTokens, stream: options.stream && provider.streams, responseSchema: options.responseSchema)
            while s.attempt < max(1, options.retry.maxAttempts) {
                request.messages = messages + s.repairMessages
                // A repair is a send like any other: within the run's token budget.
                if !s.repair.isEmpty, let refused = try self.checkBudget(name, messages: request.messages, options: options, requestData: requestData, pending: Int(s.rejectedInput + s.rejectedOutput)) {
                    return refused
                }
                s.attempt += 1
                s.sent += 1
                let t0 = Date()
                let label = "\(provider.name):\(model)"
                stream.write(["attempt": .int(Int64(s.sent)), "model": .string(label)])
                do {
                    let onDelta: (@Sendable (String) -> Void)? = request.stream ? { @Sendable d in stream.write(["delta": .string(d)]) } : nil
                    let response = try await provider.send(request, onDelta: onDelta)
                    let latency = Int(Date().timeIntervalSince(t0) * 1000)
                    var entry: [String: JSONValue] = ["model": .string(response.model), "status": "ok", "latency_ms": .int(Int64(latency))]
                    if response.isRefusal && options.onRefusal != .accept {
                        entry["status"] = "refusal"
                        s.attempts.append(.object(entry))
                        stream.write(["attempt": .int(Int64(s.sent)), "status": "refusal", "error": .string("the model refused: \(response.content.prefix(200))")])
                        s.lastError = LLMError(.client, "the model refused: \(response.content.prefix(200))")
                        stopChain = options.onRefusal == .fail
                        break
                    }
                    if options.onMalformedToolCall != .accept, let bad = response.toolCalls.first(where: { $0.parsedArguments == nil }) {
                        entry["status"] = "malformed_tool_call"
                        s.attempts.append(.object(entry))
                        s.lastError = LLMError(.malformed, "tool call '\(bad.name)' has arguments that are not JSON: \(bad.arguments.prefix(120))")
                        stream.write(["attempt": .int(Int64(s.sent)), "status": "malformed_tool_call", "error": .string(s.lastError!.message)])
                        stopChain = options.onMalformedToolCall == .fail
                        break
                    }
                    if let reason = try await Self.judge(response, options) {
                        // A wrong answer: recorded (durably, before the repair is sent, so a
                        // crash re-sends only the repair), then repaired or the next model.
                        let answer = Self.rendered(response)
                        entry["status"] = "invalid_answer"
                        entry["reason"] = .string(reason)
                        entry["answer"] = .string(String(answer.prefix(4000)))
                        entry["tokens"] = ["input": .int(Int64(response.usage.input)), "output": .int(Int64(response.usage.output))]
                        s.attempts.append(.object(entry))
                        s.rejectedInput += Int64(response.usage.input)
                        s.rejectedOutput += Int64(response.usage.output)
                        s.lastError = LLMError(.invalidAnswer, "\(label) answered wrongly: \(reason)")
                        s.lastRejected = try JSONValue(encoding: response)
                        stream.write(["attempt": .int(Int64(s.sent)), "status": "invalid_answer", "error": .string(reason)])
                        let repairing = s.repair.count < min(max(options.repairs, 0), LLMOptions.maximumRepairs)
                        // What a resumed execution carries on with: the repair, or the next model.
                        var next = s
                        next.attempt = 0
                        if repairing {
                            next.repair.append(["answer": .string(answer), "reason": .string(reason)])
                            next.repairs += 1
                        } else {
                            next.repair = []
                            next.model += 1
                        }
                        let saved = next
                        _ = try self.recorded(.llmRetry, name) { ["state": redact.apply(saved.json)] }
                        CrashPoints.reached("llm.after-rejected")
                        if repairing {
                            s = next
                            continue
                        }
                        s.repair = []
                        break  // the next model (below)
                    }
                    s.attempts.append(.object(entry))
                    stream.write(["done": true, "tokens": ["input": .int(Int64(response.usage.input)), "output": .int(Int64(response.usage.output))]])
                    return try Self.answerRecord(response, s, requestData: requestData, redact: redact)
                } catch let e as LLMError {
                    var entry: [String: JSONValue] = ["model": .string(label), "status": .string(e.kind.rawValue), "error": .string(redact.apply(String(e.message.prefix(300)))), "latency_ms": .int(Int64(Date().timeIntervalSince(t0) * 1000))]
                    if let st = e.status { entry["http_status"] = .int(Int64(st)) }
                    s.lastError = e
                    var line: [String: JSONValue] = ["attempt": .int(Int64(s.sent)), "status": .string(e.kind.rawValue), "error": .string(e.description)]
                    // A broken validator would meet every answer of every model: stop here.
                    if e.kind == .validatorFailed { stopChain = true }
                    guard e.retryable, s.attempt < options.retry.maxAttempts else {
                        s.attempts.append(.object(entry))
                        stream.write(line)
                        break
                    }
                    var delay = options.retry.delay(afterAttempt: s.attempt, unit: Double.random(in: 0..<1))
                    if let ra = e.retryAfter {
                        delay = min(ra, options.maxRetryAfter.seconds)
                        entry["retry_after_s"] = .double(ra)
                    }
                    entry["next_attempt_in_s"] = .double(delay)
                    s.attempts.append(.object(entry))
                    line["retry_in_s"] = .double(delay)
                    if delay > options.durableWaitAfter.seconds {
                        // Too long to hold a slot for: a durable wait, recorded so that the
                        // next execution carries on from here.
                        s.until = LLMCallState.due(self.clock.now().addingTimeInterval(delay))
                        line["retry_at"] = .string(Timestamp.format(s.until!))
                        stream.write(line)
                        let saved = s
                        _ = try self.recorded(.llmRetry, name) { ["state": redact.apply(saved.json)] }
                        throw self.waiting(WaitingFor(json: redact.apply(Self.retryWait(name, s, models))))
                    }
                    stream.write(line)
                    try await self.clock.sleep(for: .milliseconds(Int64(delay * 1000)))
                }
            }
            s.model += 1
            s.attempt = 0
        }
        let e = s.lastError ?? LLMError(.configuration, "no model answered")
        if e.kind == .invalidAnswer, options.onInvalidAnswer == .askPerson, s.lastRejected != nil {
            s.askingPerson = true
            let saved = s
            _ = try self.recorded(.llmRetry, name) { ["state": redact.apply(saved.json)] }
            return try await askPerson(name, s, options: options, requestData: requestData, redact: redact)
        }
        if e.kind == .invalidAnswer, options.onInvalidAnswer == .accept, let last = s.lastRejected, var response = try? last.decode(as: LLMResponse.self) {
            // Declared: the last answer is taken as it is (its tokens are not "rejected").
            response.usage = TokenUsage(input: 0, output: 0)
            return try Self.answerRecord(response, s, requestData: requestData, redact: redact, acceptedInvalid: true)
        }
        var data: [String: JSONValue] = ["request": requestData, "attempts": .array(s.attempts)]
        if s.rejectedInput + s.rejectedOutput > 0 {
            // What the rejected answers cost: counted in the run's tokens.
            data["tokens"] = ["input": .int(s.rejectedInput), "output": .int(s.rejectedOutput)]
            data["tokens_rejected"] = data["tokens"]
        }
        if s.repairs > 0 { data["repairs"] = .int(Int64(s.repairs)) }
        let message = redact.apply(e.kind == .invalidAnswer ? "every model's answer was rejected; last: \(e.message)" : "every model failed; last: \(e.description)")
        return OperationRecord(value: .null, data: redact.apply(.object(data)), error: ErrorInfo(type: "llm_\(e.kind.rawValue)", message: message, retryable: false), attempts: s.sent)
    }

    /// The `llm` record of an accepted answer: its tokens and those of the answers rejected
    /// before it (`tokens` is the whole call's; `tokens_rejected` their part), the repairs.
    private static func answerRecord(_ response: LLMResponse, _ s: LLMCallState, requestData: JSONValue, redact: Redactor, acceptedInvalid: Bool = false) throws -> OperationRecord {
        var data: [String: JSONValue] = [
            "request": requestData,
            "model": .string(response.model),
            "tokens": ["input": .int(Int64(response.usage.input) + s.rejectedInput), "output": .int(Int64(response.usage.output) + s.rejectedOutput)],
            "latency_ms": .int(Int64(Date().timeIntervalSince(s.started) * 1000)),
            "attempts": .array(s.attempts),
        ]
        if s.rejectedInput + s.rejectedOutput > 0 { data["tokens_rejected"] = ["input": .int(s.rejectedInput), "output": .int(s.rejectedOutput)] }
        if s.repairs > 0 { data["repairs"] = .int(Int64(s.repairs)) }
        if acceptedInvalid { data["accepted_invalid"] = true }
        return OperationRecord(value: redact.apply(try JSONValue(encoding: response)), data: redact.apply(.object(data)), attempts: s.sent)
    }

    /// Why an answer is wrong, or nil: not JSON when a schema was asked for, then the
    /// validator's verdict.
    static func judge(_ response: LLMResponse, _ options: LLMOptions) async throws -> String? {
        if options.responseSchema != nil, (try? JSONValue.parse(response.content)) == nil {
            return "the answer is not JSON (a JSON value matching the schema was asked for)"
        }
        return try await options.validator?(response)
    }

    /// An answer as text: its content, and its tool calls written out.
    static func rendered(_ r: LLMResponse) -> String {
        let calls = r.toolCalls.map { "[tool call \($0.name)(\($0.arguments))]" }
        return ([r.content].filter { !$0.isEmpty } + calls).joined(separator: "\n")
    }

    /// Every model's answers were rejected: the gate `answer-NAME` decides. Approved: the
    /// last answer, or the approval's value (the answer's text) — checked like an answer and
    /// refused like a bad drop when wrong; rejected: the call fails; otherwise the run waits.
    private func askPerson(_ name: String, _ s: LLMCallState, options: LLMOptions, requestData: JSONValue, redact: Redactor) async throws -> OperationRecord {
        let gate = Names.fileSafe("answer-\(name)")
        let approvals = self.runDirectory.appending("approvals")
        let spool = try Spool.open(at: self.spoolRoot)
        guard let last = s.lastRejected, let response = try? last.decode(as: LLMResponse.self) else {
            throw SpoolError(.malformed, "llm call '\(name)': no rejected answer recorded to ask about")
        }
        if s.personDecision != nil { return try personsAnswer(name, s, response, requestData: requestData, redact: redact) }
        let reasons = s.attempts.filter { $0["status"] == "invalid_answer" }.map { a -> JSONValue in
            ["model": a["model"] ?? .null, "answer": a["answer"] ?? .null, "reason": a["reason"] ?? .null]
        }
        var refusedWhy: String? = nil
        // The engine's reading of a gate's drops (the approvers' rule, refusals set aside).
        if let f = try readDecision(gate: gate) {
            let approved = f.approved, value = f.value, by = f.by
            var decision: [String: JSONValue] = ["approved": .bool(approved), "by": .string(by), "file": .string(f.fileName)]
            if !approved { decision["reason"] = .string(f.reason ?? "rejected") }
            var acceptable = true
            if approved, let v = value, !v.isNull {
                // The person's own answer: its text, checked as the model's answers were;
                // for a structured call, its JSON as it is too.
                let structured: String? = { if options.responseSchema != nil, case .object = v { return v.compactText() } else { return nil } }()
                if let text = v.stringValue ?? structured {
                    var edited = response
                    edited.content = text
                    edited.toolCalls = []
                    if let why = try await Self.judge(edited, options) {
                        try refuseGateDrop(f, "has an answer that is rejected too: \(why)", spool: spool)
                        refusedWhy = "the edited answer is rejected too: \(why)"
                        acceptable = false
                    } else {
                        decision["text"] = .string(text)
                    }
                } else {
                    let want = options.responseSchema != nil ? "the answer's JSON object, or its text as a JSON string" : "the answer's text as a JSON string"
                    try refuseGateDrop(f, "has a value that is not \(want): \(v.compactText().prefix(80))", spool: spool)
                    refusedWhy = "the value must be \(want)"
                    acceptable = false
                }
            }
            if acceptable {
                // Recorded first, then the file leaves approvals/ for decisions/.
                var decided = s
                decided.personDecision = .object(decision)
                let saved = decided
                _ = try self.recorded(.llmRetry, name) { ["state": redact.apply(saved.json)] }
                return try personsAnswer(name, decided, response, requestData: requestData, redact: redact)
            }
        }
        let request = approvals.appending("\(gate).request.json")
        if !DurableFile.exists(request) {
            try spool.durable.write(json: redact.apply([
                "gate": .string(gate), "run": .string(self.runID), "step": .string(name),
                "summary": .string("Every model's answer to '\(name)' was rejected. Approve to accept the last answer; approve with a value to answer that instead (the answer's text as a JSON string\(options.responseSchema != nil ? ", or its JSON object" : ""); it is checked like the models' answers); or reject to fail the call."),
                "answer": .string(Self.rendered(response)), "rejected": .array(reasons),
                "value_kinds": .array((options.responseSchema != nil ? ["string", "object"] : ["string"]).map { .string($0) }),
                "approve": .string("touch \(approvals.appending("\(gate).approved").string)   (or: cairn approve \(self.runID) \(gate) [--value answer.json], answer.json holding e.g. \"TEXT\"\(options.responseSchema != nil ? " or {…}" : ""))"),
                "reject": .string("touch \(approvals.appending("\(gate).rejected").string)   (or: cairn reject \(self.runID) \(gate))"),
            ]), to: request)
        }
        var w: [String: JSONValue] = ["kind": "answer", "gate": .string(gate), "step": .string(name),
                                      "drop": .string("approvals/\(gate).approved"), "reject": .string("approvals/\(gate).rejected")]
        if let refusedWhy { w["refused"] = .string(refusedWhy) }
        throw self.waiting(WaitingFor(json: .object(w)))
    }

    /// The call's record from the person's recorded decision; moves the decision's file to
    /// decisions/ (again, after a crash that came between the decision's record and the move).
    private func personsAnswer(_ name: String, _ s: LLMCallState, _ last: LLMResponse, requestData: JSONValue, redact: Redactor) throws -> OperationRecord {
        let d = s.personDecision ?? .null
        let gate = Names.fileSafe("answer-\(name)")
        if let file = d["file"]?.stringValue, DurableFile.exists(self.runDirectory.appending("approvals").appending(file)) {
            try consumeGateDrop(file, spool: try Spool.open(at: self.spoolRoot))
        }
        let by = d["by"]?.stringValue ?? "?"
        if d["approved"] != true {
            var data: [String: JSONValue] = ["request": requestData, "attempts": .array(s.attempts), "decided_by": .string(by), "gate": .string(gate)]
            if s.rejectedInput + s.rejectedOutput > 0 {
                data["tokens"] = ["input": .int(s.rejectedInput), "output": .int(s.rejectedOutput)]
                data["tokens_rejected"] = data["tokens"]
            }
            let info = ErrorInfo(type: "llm_invalid_answer", message: redact.apply("every model's answer was rejected, and \(by) rejected the last one too: \(d["reason"]?.stringValue ?? "rejected")"), retryable: false)
            return OperationRecord(value: .null, data: redact.apply(.object(data)), error: info, attempts: s.sent)
        }
        var response = last
        response.usage = TokenUsage(input: 0, output: 0)
        if let text = d["text"]?.stringValue {
            response.content = text
            response.toolCalls = []
        }
        var record = try Self.answerRecord(response, s, requestData: requestData, redact: redact)
        if case .object(var data) = record.data {
            data["decided_by"] = .string(by)
            data["gate"] = .string(gate)
            data[d["text"] != nil ? "edited_by_person" : "accepted_by_person"] = true
            record.data = .object(data)
        }
        return record
    }

    /// Refuses a gate's drop for what its value says: an error file, set aside, gate open.
    func refuseGateDrop(_ d: DroppedDecision, _ reason: String, spool: Spool) throws {
        _ = try Drops.refuse(self.runDirectory.appending(d.file), reason: reason, identity: d.identity, durable: spool.durable, now: self.clock.now(), setAsideIn: self.runDirectory.appending("refused"))
    }

    /// Once its decision is recorded, a drop moves out of approvals/ into decisions/ (as the
    /// engine does with its gates' decisions), so that the gate name is never asked again.
    func consumeGateDrop(_ file: String, spool: Spool) throws {
        let approvals = self.runDirectory.appending("approvals")
        let decisions = self.runDirectory.appending("decisions")
        try spool.ensureRuntimeDirectory(decisions)
        try DurableFile.rename(approvals.appending(file), to: decisions.appending(file), mode: .replace)
        try DurableFile.fsyncDirectory(decisions)
        try DurableFile.fsyncDirectory(approvals)
    }

    /// The run's token budget before a call is sent: nil to go ahead; a failed record when a
    /// person rejected raising it; otherwise the run waits at the gate `budget-NAME-N`.
    private func checkBudget(_ name: String, messages: [ChatMessage], options: LLMOptions, requestData: JSONValue, pending: Int = 0) throws -> OperationRecord? {
        let config = self.spoolConfig
        guard let configured = options.tokenBudget ?? config.raw["llm"]?["token_budget"]?.intValue.map({ Int($0) }) else { return nil }
        let spool = try Spool.open(at: self.spoolRoot)
        let entries = Journal.effective(try spool.journal(self.runID).load())
        // Recorded calls, and this call's rejected answers (`pending`: paid, not yet recorded).
        let spent = pending + entries.filter { $0.kind == "llm" }.reduce(0) { total, e in
            total + Int((e.data?["tokens"]?["input"]?.intValue ?? 0) + (e.data?["tokens"]?["output"]?.intValue ?? 0))
        }
        let decisions = entries.filter { $0.kind == "llm-budget" }
        let budget = decisions.reduce(configured) { b, e in max(b, Int(e.value?["budget"]?.intValue ?? 0)) }
        let characters = messages.reduce(0) { $0 + $1.content.count + ($1.toolCalls ?? []).reduce(0) { $0 + $1.name.count + $1.arguments.count } }
        let estimate = characters / 4 + 1 + (options.maxTokens ?? 0)
        guard spent + estimate > budget else { return nil }

        let gate = Names.fileSafe("budget-\(name)-\(decisions.count + 1)")
        let approvals = self.runDirectory.appending("approvals")
        let figures: JSONValue = ["spent": .int(Int64(spent)), "budget": .int(Int64(budget)), "estimate": .int(Int64(estimate))]
        if let f = try readDecision(gate: gate) {
            let by = f.by
            if !f.approved {
                let reason = f.reason ?? "rejected"
                _ = try self.recorded(.llmBudget, name) { ["decision": "rejected", "gate": .string(gate), "by": .string(by), "reason": .string(reason), "figures": figures] }
                try consumeGateDrop(f.fileName, spool: spool)
                let info = ErrorInfo(type: "llm_budget_exceeded", message: "the run's token budget: \(by) rejected raising it (\(reason)); spent \(spent) of \(budget), this call needs about \(estimate)", retryable: false)
                return OperationRecord(value: .null, data: ["request": requestData, "budget": figures], error: info, attempts: 0)
            }
            // No value adds another configured budget; {"tokens": N} (or N) sets it to N.
            // Anything else is refused, not guessed at: a budget of -5 or Int64.max is no
            // decision a person meant (and the next default raise would overflow).
            var raised: Int? = budget + configured
            if let v = f.value, !v.isNull {
                if let t = (v["tokens"] ?? v).intValue, t >= 1, t <= TokenUsage.maximumCount {
                    raised = Int(t)
                } else {
                    try refuseGateDrop(f, "a budget decision's value is {\"tokens\": N} with N a whole number from 1 to \(TokenUsage.maximumCount), not \(v.compactText().prefix(80))", spool: spool)
                    raised = nil
                }
            }
            if let raised {
                _ = try self.recorded(.llmBudget, name) { ["decision": "approved", "gate": .string(gate), "by": .string(by), "budget": .int(Int64(raised)), "figures": figures] }
                try consumeGateDrop(f.fileName, spool: spool)
                // Raised too little? The next gate asks again.
                return try checkBudget(name, messages: messages, options: options, requestData: requestData, pending: pending)
            }
        }
        let request = approvals.appending("\(gate).request.json")
        if !DurableFile.exists(request) {
            try spool.durable.write(json: [
                "summary": .string("LLM call '\(name)' would exceed the run's token budget: \(spent) of \(budget) tokens spent, this call needs about \(estimate). Approve to raise the budget (value {\"tokens\": N} sets it to N; no value adds another \(configured)); reject to fail the call."),
                "details": ["kind": "budget", "call": .string(name), "spent": .int(Int64(spent)), "budget": .int(Int64(budget)), "estimate": .int(Int64(estimate))],
                "value_expected": "{\"tokens\": N}, N a whole number", "value_kinds": ["number", "object"],
            ], to: request)
        }
        throw self.waiting(WaitingFor(json: ["kind": "budget", "gate": .string(gate), "step": .string(name), "spent": .int(Int64(spent)), "budget": .int(Int64(budget)),
                            "estimate": .int(Int64(estimate)), "drop": .string("approvals/\(gate).approved")]))
    }

    /// The `waiting_for` of a durable wait between attempts.
    static func retryWait(_ name: String, _ s: LLMCallState, _ models: [String]) -> JSONValue {
        var w: [String: JSONValue] = [
            "kind": "retry", "step": .string(name), "operation": "llm",
            "attempt": .int(Int64(s.sent + 1)), "model": .string(models[min(s.model, models.count - 1)]),
            "until": .string(Timestamp.format(s.until ?? Date())),
        ]
        if let e = s.lastError { w["reason"] = .string(String(e.description.prefix(200))) }
        return .object(w)
    }

    /// One model.
    public func llm(_ name: String, model: String, messages: [ChatMessage], tools: [ToolSpec] = [], options: LLMOptions = LLMOptions(), client: LLMClient? = nil) async throws -> LLMResponse {
        try await llm(name, models: [model], messages: messages, tools: tools, options: options, client: client)
    }

    /// A call whose answer is JSON matching `schema` (structured output: OpenAI's
    /// `response_format`, Anthropic's forced tool), decoded as `T`. An answer that is not
    /// JSON, does not decode as `T`, or that `validate` rejects (return why, or nil) is sent
    /// back to the model with the reason (`options.repairs` times), then the next model is
    /// asked; when every model's answers were rejected the call fails (`llm_invalid_answer`).
    /// Only a validated answer is recorded; replay decodes it and sends and validates nothing.
    public func llm<T: Decodable & Sendable>(
        _ name: String, models: [String], messages: [ChatMessage], output: T.Type, schema: JSONValue,
        options: LLMOptions = LLMOptions(), client: LLMClient? = nil, validate: (@Sendable (T) -> String?)? = nil
    ) async throws -> T {
        var o = options
        o.responseSchema = ResponseSchema(name: "answer", schema: schema)
        let outer = options.validator
        o.validator = { response in
            let value: T
            do {
                value = try JSONValue.parse(response.content).decode(as: T.self)
            } catch {
                return "the answer does not match the schema: \(JSONValue.describe(error))"
            }
            if let reason = validate?(value) { return reason }
            return try await outer?(response)
        }
        let response = try await llm(name, models: models, messages: messages, options: o, client: client)
        do {
            return try JSONValue.parse(response.content).decode(as: T.self)
        } catch {
            // Only when onInvalidAnswer accepted an answer that does not decode.
            throw StepFailedError(step: name, attempts: 1, error: ErrorInfo(type: "llm_invalid_answer", message: "the answer does not decode as \(T.self): \(JSONValue.describe(error))", retryable: false))
        }
    }
}

/// `logs/NAME.stream.jsonl`: one JSON line per event as the answer arrives
/// (`tail -f` shows an agent typing), and one per failed attempt. Appended, not fsync'd:
/// logs are not the truth. Secrets are redacted.
final class StreamLog: @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()
    private let redactor: Redactor

    init(path: String, redactor: Redactor) {
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        self.redactor = redactor
    }

    func write(_ o: [String: JSONValue]) {
        guard fd >= 0 else { return }
        var obj = o
        obj["at"] = .string(Timestamp.format(Date()))
        let line = Array((redactor.apply(JSONValue.object(obj)).compactText() + "\n").utf8)
        lock.withLock { _ = Glibc.write(fd, line, line.count) }
    }

    deinit { if fd >= 0 { close(fd) } }
}
