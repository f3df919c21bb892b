import CairnSpool
import Foundation
import Logging
import Synchronization
import SystemPackage
import Tracing

/// What a workflow's `run` gets: every durable operation goes through here, and is either
/// answered from the journal (replay) or executed and recorded (live).
///
/// Replay matches operations to records by position, kind and name; a mismatch throws a
/// `NondeterminismError` naming the journal file, what it recorded and what the code asked.
public final class WorkflowContext: Sendable {
    public let runID: String
    public let workflowName: String
    public let clock: any CairnClock
    public let logger: Logger
    package let spool: Spool
    package let paths: RunPaths
    let journal: Journal
    package let blobs: BlobStore
    package let config: SpoolConfig
    let state: Mutex<State>
    /// The span context of the advance this execution is (docs/operations.md, "Traces"):
    /// each durable operation's span goes under it. Nil when the process traces nothing.
    package let trace: ServiceContext?

    struct State: Sendable {
        var entries: [JournalEntry]
        var cursor: Int
        var nextSeq: Int
        var suspended: Suspension?
        /// Control flow the engine owns, remembered here so that workflow code that catches
        /// (or wraps, or `try?`s) the error carrying it cannot change the outcome.
        var cancelled = false
        var nondeterminism: NondeterminismError?
        var spoolFailure: SpoolError?
        /// An error an operation that cannot throw (`now`, `uuid`, `random`) met: thrown by
        /// the next durable operation, and the run's outcome if the workflow returns first.
        var deferred: (any Error)?
        var compensations: [Compensation] = []
        /// Records replayed this execution that carry token usage (`data.tokens`): the
        /// tokens-saved count. (Only those: a long run replays 100,000 records.)
        var replayed: [JournalEntry] = []
        /// Set once this execution appended its first record.
        var appended = false
        /// Records a run-level retry superseded (they still say which event files were
        /// consumed and which child runs were used).
        var superseded: [JournalEntry] = []
        /// Set once the run continued as a new run (`continueAsNew`): it ends here.
        var continuedAs: String?
        /// Single record files after the journal's last segment.
        var tailCount = 0
        /// Move the tail into a segment once it is this long (0: not in this execution).
        var compactEvery = 0
    }

    static func superseded(_ physical: [JournalEntry], effective: [JournalEntry]) -> [JournalEntry] {
        if physical.count == effective.count { return [] }  // no run-level retry
        let kept = Set(effective.map(\.seq))
        return physical.filter { !kept.contains($0.seq) }
    }

    /// Called (once) just before this execution appends its first record: the engine marks
    /// the run `running` then, so a wake-up that only replays to the same wait writes nothing.
    let beforeFirstAppend: @Sendable () throws -> Void

    struct Compensation: Sendable {
        var name: String
        var body: @Sendable () async throws -> Void
    }

    init(runID: String, workflowName: String, spool: Spool, config: SpoolConfig, entries: [JournalEntry], physicalCount: Int, superseded: [JournalEntry] = [], clock: any CairnClock, logger: Logger, cursor: Int = 0, tailCount: Int = 0, compactEvery: Int = 0, trace: ServiceContext? = nil, beforeFirstAppend: @escaping @Sendable () throws -> Void = {}) {
        self.trace = trace
        self.beforeFirstAppend = beforeFirstAppend
        self.runID = runID
        self.workflowName = workflowName
        self.clock = clock
        self.logger = logger
        self.spool = spool
        self.paths = spool.run(runID)
        self.journal = spool.journal(runID)
        self.blobs = spool.blobs(runID, threshold: config.blobThreshold)
        self.config = config
        self.state = Mutex(State(entries: entries, cursor: cursor, nextSeq: physicalCount + 1, superseded: superseded, tailCount: tailCount, compactEvery: compactEvery))
    }

    /// A context over a run's journal for a process that is not the engine (a script
    /// workflow's helper such as `cairn step`), positioned at `cursor` (records consumed so
    /// far in this execution, not counting `start`). The caller must make sure the run's
    /// owner (the daemon running the script) is waiting for it.
    public static func attach(spool: Spool, runID: String, cursor: Int, clock: any CairnClock = SystemClock(), logger: Logger = Logger(label: "cairn"), trace: ServiceContext? = nil) throws -> WorkflowContext {
        let record = try spool.readRun(runID)
        let physical = try spool.journal(runID).load()
        let effective = Journal.effective(physical)
        guard effective.first?.kind == "start" else { throw SpoolError(.malformed, path: spool.journal(runID).directory.string, "the run has no start record") }
        let entries = Array(effective.dropFirst())
        guard cursor <= entries.count else { throw SpoolError(.invalid, "cursor \(cursor) is past the journal's \(entries.count) records") }
        let ctx = WorkflowContext(runID: runID, workflowName: record.workflow, spool: spool, config: try spool.config(), entries: entries, physicalCount: physical.count, superseded: superseded(physical, effective: effective), clock: clock, logger: logger, cursor: cursor, trace: trace)
        // A helper after `cairn continue-as-new` in the same execution: the run has ended.
        if let c = entries[..<cursor].last(where: { $0.kind == .continueAsNew }), let id = c.data?["run"]?.stringValue { _ = ctx.continued(as: id) }
        return ctx
    }

    /// Records consumed so far in this execution (not counting `start`).
    public var cursor: Int { state.withLock { $0.cursor } }

    /// The journal position the next record appended here takes.
    public var nextPosition: Int { state.withLock { $0.nextSeq } }

    /// Whether this execution appended any record (or announced that it is running).
    public var appendedRecords: Bool { state.withLock { $0.appended } }

    /// The checks every live operation makes first (`cancel`: records it and throws; `pause`:
    /// waits), for executors that do work before their first durable operation, even while
    /// records remain to replay: a script re-run from the top would otherwise do that work
    /// again before any helper could see the cancel.
    public func checkControlFiles() throws {
        try beforeLive()
    }

    /// Marks the run `running` in state.json now, before any record (once per execution):
    /// for executors whose work starts before their first durable operation, like a script.
    public func markRunning() throws {
        try state.withLock { s in
            if !s.appended {
                try beforeFirstAppend()
                s.appended = true
            }
        }
    }

    /// Re-reads the journal after another process appended to it (a script's helpers),
    /// keeping the cursor at the end. Returns every record, superseded ones included.
    @discardableResult
    public func reloadJournal() throws -> [JournalEntry] {
        let contents = try journal.read()
        let physical = contents.entries
        let effective = Array(Journal.effective(physical).dropFirst())
        state.withLock { s in
            s.entries = effective
            s.nextSeq = physical.count + 1
            s.cursor = effective.count
            s.tailCount = contents.tailCount
        }
        return physical
    }

    /// Single record files after the journal's last segment.
    var tailCount: Int { state.withLock { $0.tailCount } }

    /// The error to throw to make the run wait on `waitingFor` (for executors that learn
    /// of a wait from outside, like the script runner).
    public func waiting(_ waitingFor: WaitingFor) -> any Error { suspend(waitingFor) }

    /// Schedules a new execution of the whole workflow from the top at `until` (a script
    /// workflow's retry policy): a `retry` record named `run` that supersedes nothing
    /// (`resume_from` is its own position, so replay never sees it), and the wait to throw.
    public func retryExecution(until: Date, error: ErrorInfo, attempt: Int) throws -> any Error {
        try record("retry", "run") {
            $0.resumeFrom = $0.seq
            $0.until = until
            $0.error = error
            $0.attempt = attempt
            $0.data = ["execution_retry": true]
        }
        return suspend(.retry(step: "(whole run)", attempt: attempt + 1, until: until))
    }

    /// The suspension's `waiting_for`, when `error` is the engine's wait signal.
    public static func waitingFor(_ error: any Error) -> WaitingFor? { (error as? Suspension)?.waitingFor }

    /// A durable operation defined outside the engine (the agent layer's `llm`): replays the
    /// record KIND-NAME when there is one (its value and data resolved from blobs);
    /// otherwise runs `body` and records what it returns. A recorded error is rethrown as
    /// `StepFailedError` on first execution and on replay alike.
    public func operation(_ kind: RecordKind, _ name: String, _ body: @escaping @Sendable () async throws -> OperationRecord) async throws -> OperationRecord {
        try await perform(RecordedOperation(kind: kind, name: name, body: body))
    }

    /// Stores a value in the run's blobs (always, with `force`), returning what to put in a
    /// record. Arrays become list chains, so a growing conversation costs O(n) bytes.
    public func storeValue(_ value: JSONValue, force: Bool = false) throws -> JSONValue {
        try blobs.externalize(value, force: force)
    }

    /// Resolves blob references in a recorded value.
    public func resolveValue(_ value: JSONValue) throws -> JSONValue { try blobs.resolve(value) }

    /// The run's logs directory (streamed output goes here).
    public var logsDirectory: FilePath { paths.logsDirectory }

    /// The spool's settings (cairn.json).
    public var spoolConfig: SpoolConfig { config }

    /// A recorded value of any kind: on first execution `compute` runs and its result is
    /// journaled as KIND[-NAME]; on replay the recorded value is returned.
    public func recorded(_ kind: RecordKind, _ name: String?, _ compute: @escaping () throws -> JSONValue) throws -> JSONValue {
        try perform(RecordedValue(kind, name, compute))
    }

    /// The spool's root directory.
    public var spoolRoot: FilePath { spool.root }

    /// This run's directory.
    public var runDirectory: FilePath { paths.directory }

    /// True while operations are being answered from the journal.
    public var isReplaying: Bool { state.withLock { $0.cursor < $0.entries.count } }

    // MARK: - journal cursor

    /// The next unconsumed record, if replaying.
    package func peek() -> JournalEntry? {
        state.withLock { $0.cursor < $0.entries.count ? $0.entries[$0.cursor] : nil }
    }

    func consume() {
        let e = state.withLock { s in
            let e = s.entries[s.cursor]
            if e.data?["tokens"] != nil { s.replayed.append(e) }
            s.cursor += 1
            return e
        }
        // A decision recorded by a process that died before moving its file out of approvals/.
        if e.data?["consumed"] != nil { try? consumeDecision(e) }
    }

    /// The position the current operation starts at (its first record's seq).
    package func currentPosition() -> Int {
        state.withLock { $0.cursor < $0.entries.count ? $0.entries[$0.cursor].seq : $0.nextSeq }
    }

    func mismatch(_ e: JournalEntry, kind: RecordKind, name: String?) -> NondeterminismError {
        nondeterminism(mismatchInfo(e, kind: kind, name: name))
    }

    /// Remembers a nondeterminism error (the run stops on it whatever the code does with it).
    package func nondeterminism(_ info: ErrorInfo) -> NondeterminismError {
        let e = NondeterminismError(info: info)
        state.withLock { if $0.nondeterminism == nil { $0.nondeterminism = e } }
        return e
    }

    /// Remembers that the run was cancelled and returns the error to throw.
    func cancelled() -> RunCancelledError {
        state.withLock { $0.cancelled = true }
        return RunCancelledError()
    }

    func mismatchInfo(_ e: JournalEntry, kind: RecordKind, name: String?) -> ErrorInfo {
        let (file, where_) = journal.locate(fileName: e.fileName)
        let expected: JSONValue = ["kind": .string(e.kind.rawValue), "name": e.name.map { .string($0) } ?? .null]
        let actual: JSONValue = ["kind": .string(kind.rawValue), "name": name.map { .string($0) } ?? .null]
        let msg = "nondeterminism: \(where_) recorded \(e.kind) \(e.name.map { "'\($0)'" } ?? "(unnamed)") at position \(e.seq), but the workflow code asked for \(kind) \(name.map { "'\($0)'" } ?? "(unnamed)"); the code changed under a running run (guard changes with ctx.patched, or fix the code and `cairn retry`)"
        return ErrorInfo(type: "nondeterminism", message: msg, file: file, expected: expected, actual: actual, retryable: false)
    }

    /// Durably appends a record at the next position.
    @discardableResult
    package func record(_ kind: RecordKind, _ name: String?, _ fill: (inout JournalEntry) throws -> Void = { _ in }) throws -> JournalEntry {
        try state.withLock { s in
            if !s.appended {
                try beforeFirstAppend()
                s.appended = true
            }
            var e = JournalEntry(seq: s.nextSeq, kind: kind, name: name, at: clock.now())
            try fill(&e)
            do {
                try journal.append(e)
            } catch let failure as SpoolError {
                // The spool failed (disk full, EIO): never the run's failure, whatever the
                // workflow code does with this error.
                if s.spoolFailure == nil { s.spoolFailure = failure }
                throw failure
            }
            s.nextSeq += 1
            s.entries.append(e)
            s.cursor = s.entries.count
            s.tailCount += 1
            if s.compactEvery > 0, s.tailCount >= s.compactEvery { compactJournal(&s) }
            return e
        }
    }

    /// Moves the journal's tail into a segment (the record just appended is durable either
    /// way). A failure stops compaction for this execution and is logged: it is never the
    /// run's failure, and a crash in the middle leaves a journal that reads the same.
    func compactJournal(_ s: inout State) {
        do {
            s.tailCount = try journal.compact(threshold: s.compactEvery)
        } catch {
            logger.warning("cannot move journal records into a segment; they stay single files", metadata: ["run": "\(runID)", "error": "\(error)"])
            s.compactEvery = 0
        }
    }

    /// Live-mode checks before an operation acts: an earlier suspension, `cancel`, `pause`.
    /// The step (or parallel branch) whose body is running in this task, if any.
    @TaskLocal static var enclosingStep: String?

    /// Durable operations cannot run inside a step's body or a parallel branch: the body is
    /// one recorded unit (it may run again as a whole), and a wait inside it could not
    /// resume the body where it was. Refused at once, saying so, rather than misbehaving.
    func refuseNesting(_ kind: RecordKind, _ name: String?) throws {
        guard let outer = Self.enclosingStep else { return }
        throw StepError.nonRetryable("ctx.\(kind)\(name.map { "(\"\($0)\")" } ?? "") was called inside the body of step '\(outer)': durable operations (steps, waits, approvals, events, sleeps, children, now/uuid) cannot be nested in a step or a parallel branch; call them between steps", type: "nested_operation")
    }

    func beforeLive() throws {
        try refuseNesting("operation", nil)
        try throwIfSuspended()
        if DurableFile.exists(paths.cancelFile) {
            try record("cancel", "requested") { $0.comment = "cancel file present" }
            throw cancelled()
        }
        if DurableFile.exists(paths.pauseFile) {
            throw suspend(.pause)
        }
    }

    func throwIfSuspended() throws {
        let (s, n, c, f, d, a) = state.withLock { ($0.suspended, $0.nondeterminism, $0.cancelled, $0.spoolFailure, $0.deferred, $0.continuedAs) }
        if let f { throw f }
        if let n { throw n }
        if c { throw RunCancelledError() }
        if let a { throw ContinuedAsNewSignal(run: a) }
        if let s { throw s }
        if let d { throw d }
    }

    /// Throws what stopped this execution, if anything did: a wait, a cancel, a changed
    /// journal, a spool failure, or an error met by an operation that cannot throw.
    public func throwIfStopped() throws { try throwIfSuspended() }

    /// Remembers an error met where none can be thrown (see `State.deferred`).
    func deferError(_ error: any Error) {
        state.withLock { if $0.deferred == nil { $0.deferred = error } }
    }

    /// What the engine decides, whatever the workflow code returned or threw.
    enum Control {
        case spoolFailure(SpoolError)
        case nondeterminism(NondeterminismError)
        case cancelled
        case continued(String)
        case suspended(Suspension)
        case deferred(any Error)
    }

    var control: Control? {
        state.withLock { s in
            if let f = s.spoolFailure { return .spoolFailure(f) }
            if let n = s.nondeterminism { return .nondeterminism(n) }
            if s.cancelled { return .cancelled }
            if let a = s.continuedAs { return .continued(a) }
            if let w = s.suspended { return .suspended(w) }
            if let d = s.deferred { return .deferred(d) }
            return nil
        }
    }

    /// Marks the run as waiting and returns the error to throw.
    func suspend(_ waitingFor: WaitingFor) -> Suspension {
        let s = Suspension(waitingFor: waitingFor)
        state.withLock { $0.suspended = s }
        return s
    }

    var suspension: Suspension? { state.withLock { $0.suspended } }

    // MARK: - values

    package func store<T: Encodable>(_ value: T, force: Bool = false) throws -> JSONValue {
        try blobs.externalize(JSONValue(encoding: value), force: force)
    }

    package func load<T: Decodable>(_ stored: JSONValue?, as type: T.Type, file: @autoclosure () -> String) throws -> T {
        let v = try blobs.resolve(stored ?? .null)
        do {
            return try v.decode(as: T.self)
        } catch {
            var (file, where_) = (file(), file())
            if file.hasPrefix("journal/") { (file, where_) = journal.locate(fileName: String(file.dropFirst(8))) }
            throw nondeterminism(ErrorInfo(type: "nondeterminism", message: "nondeterminism: \(where_) holds a value that does not decode as \(T.self): \(JSONValue.describe(error))", file: file, retryable: false))
        }
    }

    static func key(run: String, seq: Int, name: String) -> String { "\(run):\(seq):\(name)" }

    /// The idempotency key the next operation will get (`RUN:POSITION:NAME`).
    public func nextIdempotencyKey(_ name: String) -> String { Self.key(run: runID, seq: currentPosition(), name: name) }
}

/// `ctx.operation`: an operation defined by a layer above the engine (the agent layer's
/// `llm`) as a body that returns what to record.
public struct RecordedOperation: DurableOperation {
    public let kind: RecordKind
    let operationName: String
    let body: @Sendable () async throws -> OperationRecord
    public var name: String? { operationName }

    public init(kind: RecordKind, name: String, body: @escaping @Sendable () async throws -> OperationRecord) {
        self.kind = kind
        self.operationName = name
        self.body = body
    }

    public func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<OperationRecord> {
        let r = OperationRecord(value: try ctx.blobs.resolve(e.value ?? .null), data: try e.data.map { try ctx.blobs.resolve($0) }, error: e.error, attempts: e.attempt ?? 1, replayed: true)
        if let err = r.error { throw StepFailedError(step: operationName, attempts: r.attempts, error: err) }
        return .done(r)
    }

    public func execute(in ctx: WorkflowContext) async throws -> OperationStep<OperationRecord> {
        let started = ctx.clock.now()
        var r: OperationRecord
        do {
            r = try await body()
        } catch let s as Suspension {
            throw s
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw error
        }
        let stored = r
        try ctx.record(kind, operationName) {
            $0.value = try ctx.blobs.externalize(stored.value)
            $0.data = stored.data
            $0.error = stored.error
            $0.attempt = stored.attempts
            $0.startedAt = started
            $0.durationMs = Int(ctx.clock.now().timeIntervalSince(started) * 1000)
        }
        if let err = r.error { throw StepFailedError(step: operationName, attempts: r.attempts, error: err) }
        r.replayed = false
        return .done(r)
    }
}

/// What an externally defined operation records (see `WorkflowContext.operation`).
public struct OperationRecord: Sendable {
    public var value: JSONValue
    public var data: JSONValue?
    public var error: ErrorInfo?
    public var attempts: Int
    /// True when the record came from the journal (nothing was executed).
    public var replayed: Bool

    public init(value: JSONValue, data: JSONValue? = nil, error: ErrorInfo? = nil, attempts: Int = 1, replayed: Bool = false) {
        self.value = value
        self.data = data
        self.error = error
        self.attempts = attempts
        self.replayed = replayed
    }
}
