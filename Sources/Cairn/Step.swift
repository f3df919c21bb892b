import CairnSpool
import Foundation

/// Whether a step may run more than once.
public enum StepSemantics: String, Sendable, Codable {
    /// Runs again after a crash that came before its record (the default). The body gets
    /// the same idempotency key every time: pass it to the service you call.
    case atLeastOnce = "at_least_once"
    /// Never runs twice: an `intent` record is written before each attempt, and a crash
    /// between intent and result stops the run at an `uncertain` gate for a person.
    case atMostOnce = "at_most_once"
}

extension WorkflowContext {
    /// A durable step. The body runs until it returns, and its result is recorded; on
    /// replay the recorded result is returned without running the body. The body gets a
    /// stable idempotency key (`RUN:POSITION:NAME`).
    ///
    /// Failed attempts are retried per `retry` (each failure is a `retry` record holding the
    /// backoff's due time; the run waits durably until then). A step that fails for good
    /// throws `StepFailedError`, on first execution and on replay alike.
    public func step<T: Codable & Sendable>(
        _ name: String,
        semantics: StepSemantics = .atLeastOnce,
        retry: RetryPolicy = .default,
        timeout: Duration? = nil,
        _ body: @escaping @Sendable (_ idempotencyKey: String) async throws -> T
    ) async throws -> T {
        try await stepWithAttempts(name, semantics: semantics, retry: retry, timeout: timeout) { try await body($0.idempotencyKey) }
    }

    /// The same, with the attempt's number passed to the body (for bodies that record a
    /// failure as a value on their last attempt, like `cairn step` with an exit code).
    public func stepWithAttempts<T: Codable & Sendable>(
        _ name: String,
        semantics: StepSemantics = .atLeastOnce,
        retry: RetryPolicy = .default,
        timeout: Duration? = nil,
        _ body: @escaping @Sendable (StepAttempt) async throws -> T
    ) async throws -> T {
        try await perform(StepOperation(stepName: name, semantics: semantics, retry: retry, timeout: timeout, key: Self.key(run: runID, seq: currentPosition(), name: name), body: body))
    }

    /// A durable step with no result (recorded as `null`).
    public func step(
        _ name: String,
        semantics: StepSemantics = .atLeastOnce,
        retry: RetryPolicy = .default,
        timeout: Duration? = nil,
        _ body: @escaping @Sendable (_ idempotencyKey: String) async throws -> Void
    ) async throws {
        let _: VoidResult = try await stepWithAttempts(name, semantics: semantics, retry: retry, timeout: timeout) { try await body($0.idempotencyKey); return VoidResult() }
    }

    /// An at-most-once step whose intent has no outcome: it may have run. Ask a person.
    /// Returns the value a person recorded, nil when they chose to run the step again.
    func resolveUncertain<T: Codable & Sendable>(_ name: String, attempt: Int, key: String) throws -> T? {
        let gate = "uncertain-" + Names.fileSafe(name)
        switch try readDecision(gate: gate) {
        case .none:
            try writeRequest(gate: gate, request: ApprovalRequest(
                summary: "At-most-once step '\(name)' (attempt \(attempt)) may or may not have run before the process stopped. Check its effect (idempotency key \(key)), then: approve with {\"action\": \"rerun\"} (or empty) to run it again, approve with {\"action\": \"done\", \"value\": V} to record it as done with V, or reject to fail the step.",
                details: ["step": .string(name), "attempt": .int(Int64(attempt)), "idempotency_key": .string(key)]
            ), deadline: nil, expectedValue: "for \"done\": {\"action\": \"done\", \"value\": \((T.self as? any ValueShape.Type)?.shape ?? "a JSON value that decodes as \(T.self)")}")
            throw suspend(.uncertain(step: name, gate: gate, idempotencyKey: key))
        case .some(let d):
            // `{"action": ...}` dropped directly, or wrapped as the value by `cairn approve --value`.
            let spec = d.raw?["action"] != nil ? d.raw : (d.value?["action"] != nil ? d.value : d.raw)
            let action: String
            if d.approved {
                // Only an empty decision, {"action": "rerun"} or {"action": "done", …} says
                // what to do; anything else (a typo like "Done", a bare "done", a value with no
                // action) is refused, never read as "run it again": a rerun of an at-most-once
                // step can pay twice.
                switch Self.uncertainAction(raw: d.raw, spec: spec) {
                case .success(let a):
                    action = a
                case .failure(let why):
                    try Drops.refuse(paths.directory.appending(d.file), reason: why.reason, identity: d.identity, durable: spool.durable, now: clock.now(), setAsideIn: paths.refusedDirectory)
                    throw suspend(.uncertain(step: name, gate: gate, idempotencyKey: key, refused: why.reason))
                }
            } else {
                action = "reject"
            }
            if !d.approved {
                let info = ErrorInfo(type: "uncertain_rejected", message: "at-most-once step '\(name)' was uncertain and \(d.decidedBy?.user ?? "a person") rejected it" + (d.reason.map { ": \($0)" } ?? ""), retryable: false)
                let e = try record("step", name) {
                    $0.error = info
                    $0.attempt = attempt
                    $0.decision = "rejected"
                    $0.decidedBy = d.decidedBy
                    $0.file = d.file
                    $0.data = consumption(d, seq: $0.seq)
                }
                try consumeDecision(e)
                throw StepFailedError(step: name, attempts: attempt, error: info)
            }
            if action == "done" {
                let value: T
                do {
                    value = try (spec?["value"] ?? .null).decode(as: T.self)
                } catch {
                    // A value of the wrong shape is a bad drop, not a failed run: refuse it
                    // with an error file and keep the gate open.
                    let reason = "has a \"done\" value that does not decode as \(T.self): \(JSONValue.describe(error))"
                    try Drops.refuse(paths.directory.appending(d.file), reason: reason, identity: d.identity, durable: spool.durable, now: clock.now(), setAsideIn: paths.refusedDirectory)
                    throw suspend(.uncertain(step: name, gate: gate, idempotencyKey: key, refused: reason))
                }
                let e = try record("step", name) {
                    $0.value = try store(value)
                    $0.attempt = attempt
                    $0.decision = "done"
                    $0.decidedBy = d.decidedBy
                    $0.comment = d.comment
                    $0.file = d.file
                    $0.data = consumption(d, seq: $0.seq)
                }
                try consumeDecision(e)
                return value
            }
            // The decision leaves approvals/, so that a later uncertainty of this step asks again.
            let e = try record("uncertain", name) {
                $0.decision = "rerun"
                $0.decidedBy = d.decidedBy
                $0.comment = d.comment
                $0.file = d.file
                $0.data = consumption(d, seq: $0.seq)
            }
            try consumeDecision(e)
            return nil
        }
    }

    struct UncertainRefusal: Error { let reason: String }


    /// What an approval of an uncertain gate asks: "rerun" (an empty decision, a comment
    /// only, or {"action": "rerun"}) or "done" ({"action": "done", "value": V}); anything
    /// else is refused with the reason.
    static func uncertainAction(raw: JSONValue?, spec: JSONValue?) -> Result<String, UncertainRefusal> {
        let allowed = "approve empty (or {\"action\": \"rerun\"}) to run the step again, or {\"action\": \"done\", \"value\": V} to record it as done"
        guard let raw, !raw.isNull else { return .success("rerun") }
        guard case .object(let o) = raw else {
            return .failure(UncertainRefusal(reason: "is \(raw.compactText().prefix(60)), not a decision this gate understands: \(allowed)"))
        }
        if let a = spec?["action"] {
            switch a.stringValue {
            case "rerun"?, "done"?: return .success(a.stringValue!)
            default: return .failure(UncertainRefusal(reason: "has action \(a.compactText().prefix(40)): \(allowed)"))
            }
        }
        // No action: a comment alone reruns; a value with no action is refused (done or rerun?).
        if o["value"].map({ !$0.isNull }) == true || !Set(o.keys).isSubset(of: ["comment", "value"]) {
            return .failure(UncertainRefusal(reason: "says no action: \(allowed)"))
        }
        return .success("rerun")
    }

    func runWithTimeout<T: Sendable>(_ name: String, _ timeout: Duration?, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        guard let timeout else { return try await body() }
        let clock = self.clock
        return try await withThrowingTaskGroup(of: TimeoutRace<T>.self) { group in
            group.addTask { .value(try await body()) }
            group.addTask {
                try await clock.sleep(for: timeout)
                return .timedOut
            }
            defer { group.cancelAll() }
            switch try await group.next()! {
            case .value(let v): return v
            case .timedOut: throw StepTimeoutError(step: name, timeout: timeout)
            }
        }
    }
}

/// `ctx.step`: records `intent` (at-most-once), `retry` (a failed attempt and its backoff),
/// `uncertain` (a person's "rerun"), and finally `step` with the value or the error.
struct StepOperation<T: Codable & Sendable>: DurableOperation {
    let stepName: String
    let semantics: StepSemantics
    let retry: RetryPolicy
    let timeout: Duration?
    let key: String
    let body: @Sendable (StepAttempt) async throws -> T
    var attempt = 1
    var retryUntil: Date? = nil
    /// An `intent` with no outcome after it: the step may have run.
    var pendingIntent = false

    init(stepName: String, semantics: StepSemantics, retry: RetryPolicy, timeout: Duration?, key: String, body: @escaping @Sendable (StepAttempt) async throws -> T) {
        self.stepName = stepName
        self.semantics = semantics
        self.retry = retry
        self.timeout = timeout
        self.key = key
        self.body = body
    }

    var kind: RecordKind { .step }
    var name: String? { stepName }
    func owns(_ e: JournalEntry) -> Bool { e.name == stepName && [.step, .retry, .intent, .uncertain].contains(e.kind) }

    mutating func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<T> {
        pendingIntent = false
        switch e.kind {
        case .step:
            if let err = e.error { throw StepFailedError(step: stepName, attempts: e.attempt ?? attempt, error: err) }
            return .done(try ctx.load(e.value, as: T.self, file: "journal/" + e.fileName))
        case .retry:
            attempt = (e.attempt ?? attempt) + 1
            retryUntil = e.until
        case .uncertain:
            // A person chose "rerun": a fresh attempt follows. (consume() moved the decision
            // out of approvals/ if a crash left it there.) Records written before decisions
            // were moved name no file to move: set a file older than the record aside (a
            // newer one is a new decision).
            if e.data?["consumed"] == nil {
                let gate = "uncertain-" + Names.fileSafe(stepName)
                var st = stat()
                if lstat(ctx.paths.approvalsDirectory.appending("\(gate).approved").string, &st) == 0,
                   Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9 <= e.at.timeIntervalSince1970 + 0.001 {
                    try ctx.setAsideDecision(gate: gate, seq: e.seq)
                }
            }
            attempt += 1
            retryUntil = nil
        default:  // intent: its outcome follows, or the step may have run
            pendingIntent = true
        }
        return .next
    }

    mutating func execute(in ctx: WorkflowContext) async throws -> OperationStep<T> {
        if pendingIntent {
            pendingIntent = false
            if let v: T = try ctx.resolveUncertain(stepName, attempt: attempt, key: key) { return .done(v) }
            attempt += 1  // a person chose "rerun"
            retryUntil = nil
            return .next
        }
        let clock = ctx.clock
        if let until = retryUntil, clock.now() < until {
            return .wait(.retry(step: stepName, attempt: attempt, until: until))
        }
        if semantics == .atMostOnce {
            try ctx.record(.intent, stepName) { [attempt, key, semantics] in
                $0.attempt = attempt
                $0.idempotencyKey = key
                $0.semantics = semantics.rawValue
            }
        }
        let started = clock.now()
        // What every record of this attempt carries.
        let attemptFields = { [attempt, key] (e: inout JournalEntry) in
            e.attempt = attempt
            e.idempotencyKey = key
            e.startedAt = started
            e.durationMs = Int(clock.now().timeIntervalSince(started) * 1000)
        }
        let value: T
        do {
            let info = StepAttempt(idempotencyKey: key, number: attempt, isLast: attempt >= retry.maxAttempts)
            let body = self.body
            let stepName = self.stepName
            value = try await ctx.runWithTimeout(stepName, timeout) {
                try await WorkflowContext.$enclosingStep.withValue(stepName) { try await body(info) }
            }
        } catch let s as Suspension {
            throw s
        } catch {
            // Interrupted (the daemon is stopping): record nothing, as after a crash.
            if Task.isCancelled { throw CancellationError() }
            // Sent, and no answer: for an at-most-once step the effect may have happened, so
            // the intent stands unresolved — the uncertain gate, as after a crash mid-body.
            if semantics == .atMostOnce, error is StepOutcomeUnknown {
                ctx.logger.warning("at-most-once step's outcome is unknown; a person decides", metadata: ["run": "\(ctx.runID)", "step": "\(stepName)", "error": "\(error)"])
                pendingIntent = true  // the next turn asks, as for an intent found with no result
                return .next
            }
            let info = ErrorInfo.from(error)
            // An at-most-once body that timed out may have had its effect: never retried.
            let mayHaveRun = semantics == .atMostOnce && error is StepTimeoutError
            if !mayHaveRun && retry.shouldRetry(error, attempt: attempt) {
                let delay = retry.delay(afterAttempt: attempt, unit: Double.random(in: 0..<1))
                let until = clock.now().addingTimeInterval(delay)
                try ctx.record(.retry, stepName) {
                    attemptFields(&$0)
                    $0.error = info
                    $0.until = until
                }
                ctx.logger.info("step failed, will retry", metadata: ["run": "\(ctx.runID)", "step": "\(stepName)", "attempt": .stringConvertible(attempt), "delay_s": .stringConvertible(delay), "error": "\(info.message)"])
                attempt += 1
                retryUntil = until
                return .next
            }
            try ctx.record(.step, stepName) { [semantics] in
                attemptFields(&$0)
                $0.error = info
                $0.semantics = semantics.rawValue
            }
            throw StepFailedError(step: stepName, attempts: attempt, error: info)
        }
        // The body succeeded. Recording it is outside the retry logic: an error here
        // (disk full, a value that cannot be encoded) must never run the body again.
        CrashPoints.reached("step.after-body")
        let stored = try ctx.store(value)
        try ctx.record(.step, stepName) { [semantics] in
            attemptFields(&$0)
            $0.value = stored
            $0.semantics = semantics.rawValue
        }
        return .done(value)
    }
}

/// The recorded result of a step that returns nothing: `null`.
struct VoidResult: Codable, Sendable {
    init() {}
    init(from decoder: any Decoder) throws {}
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encodeNil()
    }
}

/// One attempt of a step.
public struct StepAttempt: Sendable {
    /// Stable across attempts and crashes: `RUN:POSITION:NAME`.
    public var idempotencyKey: String
    /// 1 for the first attempt.
    public var number: Int
    /// No retry follows a failure of this attempt.
    public var isLast: Bool
}

enum TimeoutRace<T: Sendable>: Sendable {
    case value(T)
    case timedOut
}

/// A step result type that can say, for a person, what its JSON looks like (the uncertain
/// gate's `value_expected`: what a "done" value must be).
public protocol ValueShape {
    /// The JSON shape, e.g. `{"stdout": "…", "exit_code": 0}`.
    static var shape: String { get }
}
