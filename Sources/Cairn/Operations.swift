import CairnSpool
import Foundation
import SystemPackage

extension WorkflowContext {
    // MARK: recorded values

    /// The current time, recorded: the same on replay. Never throws: should recording fail
    /// (the disk, a cancel, a changed journal), the engine remembers why and the run stops
    /// there at the next durable operation or when the workflow returns.
    public func now(_ name: String? = nil) -> Date {
        instant(RecordedValue(kind: .now, name: name, compute: { [clock] in Timestamp.parse(Timestamp.format(clock.now()))! },
                              encode: { .string(Timestamp.format($0)) }),
                fallback: clock.now())
    }

    /// A random UUID, recorded (never throws; see `now`).
    public func uuid(_ name: String? = nil) -> UUID {
        instant(RecordedValue(kind: .uuid, name: name, compute: { UUID() }, encode: { .string($0.uuidString) }), fallback: UUID())
    }

    /// A random number in [0, 1), recorded (never throws; see `now`).
    public func random(_ name: String? = nil) -> Double {
        instant(RecordedValue(kind: .random, name: name, compute: { Double.random(in: 0..<1) }, encode: { .double($0) }), fallback: Double.random(in: 0..<1))
    }

    /// Runs an instant operation for an API that does not throw: a failure is remembered (the
    /// engine stops the run on it, see `Control`) and `fallback` returned meanwhile.
    func instant<Op: InstantOperation>(_ op: Op, fallback: @autoclosure () -> Op.Output) -> Op.Output {
        do { return try perform(op) } catch {
            deferError(error)
            return fallback()
        }
    }

    // MARK: timers

    /// A durable sleep of any length: the journal holds the absolute due time, so a
    /// restart (or a restore on another machine) wakes the run when it is due.
    public func sleep(_ name: String = "sleep", for duration: Duration) async throws {
        try await perform(SleepOperation(sleepName: name, deadline: nil, duration: duration))
    }

    /// A durable sleep until a point in time.
    public func sleep(_ name: String = "sleep", until deadline: Date) async throws {
        try await perform(SleepOperation(sleepName: name, deadline: deadline, duration: nil))
    }

    // MARK: events

    /// Waits for `events/NAME.json` or `events/NAME.SUFFIX.json` (dropped by a program, a
    /// person, `cairn signal` or another run's `send`), and returns its data. Each call
    /// consumes one event file, oldest first. Returns nil if `timeout` passes first.
    public func waitForEvent<T: Decodable & Sendable>(_ name: String, as type: T.Type = JSONValue.self, timeout: Duration? = nil) async throws -> T? {
        guard Names.isValidName(name) else { throw StepError.nonRetryable("invalid event name '\(name)'") }
        return try await perform(EventOperation<T>(eventName: name, timeout: timeout))
    }

    /// The oldest event file for `name` that no record consumed yet.
    func nextEventFile(_ name: String) throws -> (file: String, data: JSONValue, identity: String)? {
        // Files consumed by any record, superseded ones included: an event a retry skipped
        // (one that did not decode) is not taken again.
        let consumed = Set(state.withLock { ($0.entries + $0.superseded).filter { $0.kind == .event }.compactMap(\.file) })
        var candidates: [(Date, String, JSONValue, String)] = []
        for file in try Spool.list(paths.eventsDirectory) {
            guard Spool.isEventFile(file, for: name) else { continue }
            guard !consumed.contains("events/" + file) else { continue }
            let path = paths.eventsDirectory.appending(file)
            switch Drops.read(path, limit: config.dropSizeLimit) {
            case .absent: continue
            case .refused(let p, let reason, let identity):
                try Drops.refuse(p, reason: reason, identity: identity, durable: spool.durable, now: clock.now(), setAsideIn: paths.refusedDirectory)
            case .valid(let f):
                candidates.append((f.modified, file, f.json ?? .null, f.identity))
            }
        }
        guard let first = candidates.min(by: { ($0.0, $0.1) < ($1.0, $1.1) }) else { return nil }
        return (first.1, first.2, first.3)
    }

    /// Sends an event to another run, exactly once: the file name
    /// `events/EVENT.FROMRUN-POSITION.json` is deterministic, so a resend after a crash
    /// finds the first one in place.
    public func send<T: Encodable & Sendable>(to run: String, event: String, data: T) async throws {
        guard Names.isValidName(event) else { throw StepError.nonRetryable("invalid event name '\(event)'") }
        try await perform(SendOperation(event: event, to: run, data: try JSONValue(encoding: data)))
    }

    // MARK: children

    /// The id a child operation gives its run: `PARENT.NAME` (hashed when too long).
    public func childRunID(_ name: String) -> String {
        let id = "\(runID).\(Names.fileSafe(name))"
        if id.count <= 128 { return id }
        return String(runID.prefix(50)) + ".c-" + String(ContentHash.sha256Hex(Array(id.utf8)).prefix(32))
    }

    /// Starts a child run of workflow `W` (registered in the same registry) and waits for
    /// its result. The child's id is deterministic, so it is created once.
    public func child<W: Workflow>(_ name: String, _ workflow: W.Type, input: W.Input) async throws -> W.Output {
        try await perform(ChildOperation<W>(childName: name, input: input, childID: childRunID(name)))
    }

    // MARK: parallel steps

    /// Runs `body` for every item, at most `maxConcurrency` at a time, each as its own
    /// durable step named `NAME[i]` (at-least-once, with a stable idempotency key).
    /// Branch retries back off in process with the injected clock. Records are appended
    /// in completion order and carry `group` and `index`; after a crash only the branches
    /// without a record run again. Throws the first failed branch's error (by index) once
    /// every branch has finished.
    public func parallel<Item: Sendable, Output: Codable & Sendable>(
        _ name: String,
        _ items: [Item],
        maxConcurrency: Int = 4,
        retry: RetryPolicy = .default,
        _ body: @escaping @Sendable (_ item: Item, _ idempotencyKey: String) async throws -> Output
    ) async throws -> [Output] {
        if items.isEmpty { return [] }
        return try await perform(ParallelOperation(group: name, items: items, maxConcurrency: maxConcurrency, retry: retry, base: currentPosition(), body: body))
    }

    // MARK: saga

    /// Registers an undo action. If the run fails or is cancelled after this point, the
    /// registered actions run in reverse order, each recorded as a `compensate` record (so
    /// a crash during compensation does not undo twice).
    public func compensate(_ name: String, _ undo: @escaping @Sendable () async throws -> Void) {
        state.withLock { $0.compensations.append(Compensation(name: name, body: undo)) }
    }

    /// Runs registered compensations in reverse (called by the engine).
    func runCompensations() async throws {
        let list = state.withLock { s -> [Compensation] in
            s.suspended = nil
            return s.compensations.reversed()
        }
        for c in list { try await perform(CompensateOperation(compensation: c)) }
    }

    // MARK: versioning

    /// Guards a change to the workflow's code: true for runs that reach this point with the
    /// new code (the answer is recorded), false for runs whose journal was written by older
    /// code without it. `if ctx.patched("send-sms") { ...new... } else { ...old... }`.
    public func patched(_ id: String) throws -> Bool {
        try perform(PatchOperation(id: id))
    }
}

// MARK: - the operations

/// `ctx.sleep`: one `sleep` record holding the absolute due time, then a wait until then.
struct SleepOperation: DurableOperation {
    let sleepName: String
    let deadline: Date?
    let duration: Duration?
    var until: Date? = nil

    var kind: RecordKind { .sleep }
    var name: String? { sleepName }

    mutating func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<Void> {
        until = e.until ?? e.at
        // Records after it: the run went past this sleep before (whatever the clock says now).
        if ctx.peek() != nil || ctx.clock.now() >= until! { return .done(()) }
        return .next
    }

    mutating func execute(in ctx: WorkflowContext) async throws -> OperationStep<Void> {
        if until == nil {
            let u = deadline ?? ctx.clock.now().addingTimeInterval(duration?.seconds ?? 0)
            try ctx.record(.sleep, sleepName) { $0.until = u }
            until = u
        }
        if ctx.clock.now() < until! { return .wait(.timer(name: sleepName, until: until!)) }
        return .done(())
    }
}

/// `ctx.waitForEvent`: `event` `requested` (with the deadline), then `event` `received`
/// (the file consumed, or `timed_out`).
struct EventOperation<T: Decodable & Sendable>: DurableOperation {
    let eventName: String
    let timeout: Duration?
    var requested: JournalEntry? = nil

    var kind: RecordKind { .event }
    var name: String? { eventName }

    mutating func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<T?> {
        if e.phase == .requested && requested == nil {
            requested = e
            return .next
        }
        if e.decision == .timedOut { return .done(nil) }
        if let err = e.error { throw StepFailedError(step: eventName, attempts: 1, error: err) }
        return .done(try ctx.load(e.value, as: T.self, file: "journal/" + e.fileName))
    }

    mutating func execute(in ctx: WorkflowContext) async throws -> OperationStep<T?> {
        guard let requested else {
            let deadline = timeout.map { ctx.clock.now().addingTimeInterval($0.seconds) }
            self.requested = try ctx.record(.event, eventName) {
                $0.phase = .requested
                $0.until = deadline
            }
            return .next
        }
        var refused: String? = nil
        while let (file, value, identity) = try ctx.nextEventFile(eventName) {
            let decoded: T
            do { decoded = try value.decode(as: T.self) } catch {
                // Data that does not decode is a bad drop, not the run's failure: set aside
                // with an error file, and the run waits on for a good one.
                let reason = "has data that does not decode as \(T.self): \(JSONValue.describe(error))"
                let path = ctx.paths.eventsDirectory.appending(file)
                try Drops.refuse(path, reason: reason, identity: identity, durable: ctx.spool.durable, now: ctx.clock.now(), setAsideIn: ctx.paths.refusedDirectory)
                ctx.logger.warning("refused an event file", metadata: ["run": "\(ctx.runID)", "file": "events/\(file)", "reason": "\(Names.printable(reason))"])
                refused = "events/\(file) \(reason)"
                if DurableFile.exists(path) { break }  // could not be set aside: wait, never spin
                continue
            }
            try ctx.record(.event, eventName) {
                $0.phase = .received
                $0.decision = .received
                $0.value = try ctx.blobs.externalize(value)
                $0.file = "events/" + file
            }
            return .done(decoded)
        }
        if let deadline = requested.until, ctx.clock.now() >= deadline {
            try ctx.record(.event, eventName) {
                $0.phase = .received
                $0.decision = .timedOut
            }
            return .done(nil)
        }
        return .wait(.event(name: eventName, until: requested.until, refused: refused))
    }
}

/// `ctx.send`: the event file written into the other run (first writer wins), then one
/// `send` record.
struct SendOperation: DurableOperation {
    let event: String
    let to: String
    let data: JSONValue

    var kind: RecordKind { .send }
    var name: String? { event }

    func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<Void> { .done(()) }

    func execute(in ctx: WorkflowContext) async throws -> OperationStep<Void> {
        guard ctx.spool.runExists(to) else {
            throw StepFailedError(step: event, attempts: 1, error: ErrorInfo(type: "no_such_run", message: "send: no run '\(to)' to send '\(event)' to", retryable: false))
        }
        let seq = ctx.currentPosition()
        // Fits NAME_MAX however long the event name and run id (both up to 128 characters).
        let file = Names.fitting("\(event).", "\(ctx.runID)-\(seq)", ".json")
        let target = ctx.spool.run(to).eventsDirectory.appending(file)
        // The name can be foreseen: whatever a member put there first is set aside (kept),
        // so that it neither stands in for this event nor stops it. Ours (a resend after a
        // crash) stays.
        Spool.setAsideForeign(target)
        do {
            try ctx.spool.durable.write(json: data, to: target, mode: .noReplace)
        } catch let e as SpoolError where e.code == .exists {}
        try ctx.record(.send, event) { [to] in $0.data = ["to": .string(to), "file": .string("events/" + file)] }
        return .done(())
    }
}

/// `ctx.child`: the child run created and `child` `started`; then, once it ended,
/// `child` `finished` with its result or its failure.
struct ChildOperation<W: Workflow>: DurableOperation {
    let childName: String
    let input: W.Input
    var childID: String
    var started = false

    var kind: RecordKind { .child }
    var name: String? { childName }

    mutating func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<W.Output> {
        if e.phase == .started && !started {
            started = true
            childID = e.data?["run"]?.stringValue ?? childID
            return .next
        }
        if let err = e.error { throw StepFailedError(step: childName, attempts: 1, error: err) }
        return .done(try ctx.load(e.value, as: W.Output.self, file: "journal/" + e.fileName))
    }

    mutating func execute(in ctx: WorkflowContext) async throws -> OperationStep<W.Output> {
        if !started {
            // After a run-level retry superseded this child's records, a fresh child run
            // (`PARENT.NAME.rN`): the failed one is history, not reused.
            let used = ctx.state.withLock { [childName] in $0.superseded.filter { $0.kind == .child && $0.phase == .started && $0.name == childName }.count }
            if used > 0 { childID = ctx.childRunID("\(childName).r\(used + 1)") }
            let id = childID
            _ = try ctx.spool.createRun(.init(workflow: W.name, input: JSONValue(encoding: input), id: id, workflowVersion: W.version, parent: .init(run: ctx.runID, name: childName)), now: ctx.clock.now())
            try ctx.record(.child, childName) {
                $0.phase = .started
                $0.data = ["run": .string(id), "workflow": .string(W.name)]
            }
            started = true
            return .next
        }
        if !ctx.spool.runExists(childID) {
            // Started, yet no run: a spool restored from a live copy (rsync listed runs/
            // before the child was created and copied this journal after). Created again as
            // it was (same id, same input); nothing of it had been recorded in the copy.
            _ = try ctx.spool.createRun(.init(workflow: W.name, input: JSONValue(encoding: input), id: childID, workflowVersion: W.version, parent: .init(run: ctx.runID, name: childName)), now: ctx.clock.now())
            ctx.logger.notice("child run was missing (a restored copy?): created again", metadata: ["child": "\(childID)"])
        }
        let childJournal = Journal.effective(try ctx.spool.journal(childID).load())
        guard let last = childJournal.last, let status = last.terminalStatus else {
            return .wait(.child(name: childName, run: childID))
        }
        let id = childID
        if status == .completed {
            let value = try ctx.spool.blobs(id).resolve(last.value ?? .null)
            try ctx.record(.child, childName) {
                $0.phase = .finished
                $0.status = status
                $0.value = try ctx.blobs.externalize(value)
                $0.data = ["run": .string(id)]
            }
            return .done(try ctx.load(value, as: W.Output.self, file: "runs/\(id)/journal/" + last.fileName))
        }
        let info = ErrorInfo(type: "child_\(status.rawValue)", message: "child run \(id) \(status.rawValue)" + (last.error.map { ": \($0.message)" } ?? ""), retryable: false)
        try ctx.record(.child, childName) {
            $0.phase = .finished
            $0.status = status
            $0.error = info
            $0.data = ["run": .string(id)]
        }
        throw StepFailedError(step: childName, attempts: 1, error: info)
    }
}

/// `ctx.parallel`: one `step` record per branch (`group`, `index`), in completion order.
struct ParallelOperation<Item: Sendable, Output: Codable & Sendable>: DurableOperation {
    let group: String
    let items: [Item]
    let maxConcurrency: Int
    let retry: RetryPolicy
    /// The position of the group's first record (the branches' idempotency keys).
    let base: Int
    let body: @Sendable (Item, String) async throws -> Output
    var results: [Int: Result<Output, StepFailedError>] = [:]

    var kind: RecordKind { .step }
    var name: String? { "\(group)[\(items.indices.first { results[$0] == nil } ?? 0)]" }
    func owns(_ e: JournalEntry) -> Bool { e.kind == .step && e.group == group && (e.index.map { items.indices.contains($0) } ?? false) }

    func finished() throws -> OperationStep<[Output]> {
        guard results.count == items.count else { return .next }
        return .done(try items.indices.map { try results[$0]!.get() })
    }

    mutating func fold(_ e: JournalEntry, in ctx: WorkflowContext) throws {
        guard let i = e.index, results[i] == nil else { return }
        if let err = e.error {
            results[i] = .failure(StepFailedError(step: "\(group)[\(i)]", attempts: e.attempt ?? 1, error: err))
        } else {
            results[i] = .success(try ctx.load(e.value, as: Output.self, file: "journal/" + e.fileName))
        }
    }

    mutating func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<[Output]> {
        try fold(e, in: ctx)
        return try finished()
    }

    mutating func execute(in ctx: WorkflowContext) async throws -> OperationStep<[Output]> {
        let missing = items.indices.filter { results[$0] == nil }
        let clock = ctx.clock
        let (group, items, retry, base, body) = (self.group, self.items, self.retry, self.base, self.body)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            var next = missing.makeIterator()
            func launch(_ i: Int) {
                let item = items[i]
                let branch = "\(group)[\(i)]"
                let key = WorkflowContext.key(run: ctx.runID, seq: base, name: branch)
                tasks.addTask {
                    var attempt = 1
                    let started = clock.now()
                    while true {
                        do {
                            let v = try await WorkflowContext.$enclosingStep.withValue(branch) { try await body(item, key) }
                            let stored = try ctx.store(v)
                            try ctx.record(.step, branch) {
                                $0.group = group
                                $0.index = i
                                $0.value = stored
                                $0.attempt = attempt
                                $0.idempotencyKey = key
                                $0.startedAt = started
                                $0.durationMs = Int(clock.now().timeIntervalSince(started) * 1000)
                            }
                            return
                        } catch {
                            if Task.isCancelled { throw CancellationError() }
                            if retry.shouldRetry(error, attempt: attempt) {
                                try await clock.sleep(for: .milliseconds(Int64(retry.delay(afterAttempt: attempt, unit: Double.random(in: 0..<1)) * 1000)))
                                attempt += 1
                                continue
                            }
                            try ctx.record(.step, branch) {
                                $0.group = group
                                $0.index = i
                                $0.error = ErrorInfo.from(error)
                                $0.attempt = attempt
                                $0.idempotencyKey = key
                            }
                            return
                        }
                    }
                }
            }
            for _ in 0..<max(1, maxConcurrency) { if let i = next.next() { launch(i) } }
            while try await tasks.next() != nil { if let i = next.next() { launch(i) } }
        }
        // What the branches recorded.
        for e in ctx.state.withLock({ $0.entries.filter { $0.group == group && $0.seq >= base } }) { try fold(e, in: ctx) }
        guard results.count == items.count else {
            throw SpoolError(.malformed, "parallel '\(group)': \(items.count - results.count) branch(es) ended without a record")
        }
        return try finished()
    }
}

/// A registered compensation: one `compensate` record (with its error if it failed three
/// times). Runs after a failure or a cancel, so it makes no control-file checks.
struct CompensateOperation: DurableOperation {
    let compensation: WorkflowContext.Compensation

    var kind: RecordKind { .compensate }
    var name: String? { compensation.name }
    var checksControlFiles: Bool { false }

    func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<Void> { .done(()) }

    func execute(in ctx: WorkflowContext) async throws -> OperationStep<Void> {
        var attempt = 1
        var failure: ErrorInfo? = nil
        while true {
            do {
                try await compensation.body()
                failure = nil
                break
            } catch {
                failure = ErrorInfo.from(error)
                if attempt >= 3 { break }
                try await ctx.clock.sleep(for: .seconds(Int64(1) << (attempt - 1)))
                attempt += 1
            }
        }
        try ctx.record(.compensate, compensation.name) { [attempt, failure] in
            $0.attempt = attempt
            $0.error = failure
        }
        return .done(())
    }
}

/// `ctx.patched`: a `patch` record for runs that reach it with the new code; false, with
/// nothing consumed, where older code recorded something else at this position.
struct PatchOperation: InstantOperation {
    let id: String
    var kind: RecordKind { .patch }
    var name: String? { id }
    func answer(before record: JournalEntry) -> Bool? { false }
    func replay(_ record: JournalEntry, in ctx: WorkflowContext) throws -> Bool { true }
    func execute(in ctx: WorkflowContext) throws -> Bool {
        try ctx.record(.patch, id)
        return true
    }
}
