import CairnSpool
import Foundation
import Logging
import SystemPackage
import Tracing

/// What one `advance` of a run ended with.
public enum AdvanceOutcome: Sendable, Equatable {
    case completed(JSONValue)
    case failed(ErrorInfo)
    case cancelled
    /// Waiting on what `waiting_for` says (approval, timer, event, retry, uncertain, child, pause).
    case waiting(WaitingFor)
    /// Another process holds the run's lock.
    case busy
    /// The run names a workflow this process does not have.
    case unknownWorkflow(String)
    /// The execution was cancelled (a daemon shutting down): nothing was recorded for the
    /// interrupted operation; the run resumes like after a crash.
    case interrupted

    /// The status state.json holds for this outcome (nil: busy, unknown workflow, interrupted).
    var settledStatus: RunStatus? {
        switch self {
        case .completed: return .completed
        case .failed: return .failed
        case .cancelled: return .cancelled
        case .waiting: return .waiting
        case .busy, .unknownWorkflow, .interrupted: return nil
        }
    }

    /// The outcome's word on a trace's `cairn.advance` span.
    var traceLabel: String {
        switch self {
        case .completed: return "completed"
        case .failed: return "failed"
        case .cancelled: return "cancelled"
        case .waiting(let w): return "waiting: \(w.kind.rawValue)"
        case .busy: return "busy"
        case .unknownWorkflow: return "unknown workflow"
        case .interrupted: return "interrupted"
        }
    }

    public var isTerminal: Bool {
        switch self {
        case .completed, .failed, .cancelled: return true
        default: return false
        }
    }
}

/// Runs workflows against a spool: takes a run's lock, replays its journal through the
/// workflow's code, executes what is new, and writes the derived state. No daemon needed;
/// the daemon calls `advance` when a file lands or a timer fires.
public struct Engine: Sendable {
    public let spool: Spool
    public let registry: WorkflowRegistry
    public let clock: any CairnClock
    public var logger: Logger

    public init(spool: Spool, registry: WorkflowRegistry, clock: any CairnClock = SystemClock(), logger: Logger = Logger(label: "cairn")) {
        self.spool = spool
        self.registry = registry
        self.clock = clock
        self.logger = logger
    }

    /// Advances a run as far as it goes: to completion, failure, or the next wait.
    public func advance(_ runID: String) async throws -> AdvanceOutcome {
        try await advanceReporting(runID).outcome
    }

    /// The same, and whether this call did anything (appended a record or wrote state):
    /// false when it only found the run as another process left it, so that a daemon logs
    /// what it did, not what it saw.
    ///
    /// In phases, each a function below: take the lock and read the run (`RunSnapshot`);
    /// settle a run that already ended (or carry out its `retry` file); find the workflow;
    /// skip a wait where nothing happened; record `start`; execute the workflow's code from
    /// the top; conclude (the engine's control decisions, the terminal records and
    /// compensations); persist (state.json, or nothing when nothing changed) and wake a
    /// parent.
    ///
    /// When it wrote nothing (state.json was already right), it still puts the run's status
    /// index right: the index is derived and written after state.json, so a process killed
    /// between the two left it behind for good otherwise (a completed run listed as running).
    public func advanceReporting(_ runID: String) async throws -> (outcome: AdvanceOutcome, acted: Bool) {
        let r = try await advanceOnce(runID)
        if !r.acted, let status = r.outcome.settledStatus { spool.updateIndex(runID, status: status) }
        return r
    }

    func advanceOnce(_ runID: String) async throws -> (outcome: AdvanceOutcome, acted: Bool) {
        let paths = spool.run(runID)
        guard let lock = try RunLock.tryAcquire(paths.directory) else { return (.busy, false) }
        defer { withExtendedLifetime(lock) {} }
        try spool.verifyRuntimeFiles(runID)
        var run = try RunSnapshot(runID, spool: spool)
        if let ended = try settleEnded(&run) { return ended }
        guard let workflow = registry[run.record.workflow] else {
            // Cancelled before it ever started: nothing ran, so nothing is to compensate and
            // the workflow's code is not needed — it ends cancelled now (`cairn why` offers
            // this for a run of a workflow that is not installed). A run that started keeps
            // waiting for its workflow: its compensations are in its code.
            if run.entries.isEmpty, DurableFile.exists(paths.cancelFile) {
                let start = modify(JournalEntry(seq: run.physical.count + 1, kind: .start, at: clock.now())) {
                    $0.data = ["workflow": .string(run.record.workflow), "version": "none: cancelled before it started", "pid": .int(Int64(getpid()))]
                }
                try run.journal.append(start)
                let cancel = modify(JournalEntry(seq: run.physical.count + 2, kind: .cancel, at: clock.now())) {
                    $0.error = ErrorInfo(type: "cancelled", message: "cancelled before it started (no workflow '\(run.record.workflow)' was installed)", retryable: false)
                    $0.status = .cancelled
                }
                try run.journal.append(cancel)
                try writeState(run.record, entries: [start, cancel], executions: 0, status: .cancelled, error: nil)
                return (.cancelled, true)
            }
            return (.unknownWorkflow(run.record.workflow), false)
        }
        if let w = unchangedWait(run, workflow) { return (.waiting(w), false) }
        guard RunTracing.enabled else { return try await execute(&run, workflow, trace: nil) }
        // Traced (docs/operations.md, "Traces"): the advance is a span in the run's trace.
        let span = InstrumentationSystem.tracer.startSpan("cairn.advance", context: RunTracing.context(runID: runID))
        defer { span.end() }
        span.attributes["cairn.run_id"] = runID
        span.attributes["cairn.workflow"] = run.record.workflow
        let before = run.physical.count
        _ = RunTracing.takeClaimed(runID)
        defer {
            // The records this advance wrote that no operation's span carries.
            let claimed = RunTracing.takeClaimed(runID)
            if let last = try? spool.journal(runID).lastPosition(), last > before {
                let own = (before + 1...last).filter { !claimed.contains($0) }.map { Int64($0) }
                if !own.isEmpty { span.attributes["cairn.appended"] = own }
            }
        }
        do {
            let r = try await execute(&run, workflow, trace: span.context)
            span.attributes["cairn.outcome"] = r.outcome.traceLabel
            span.attributes["cairn.execution"] = (run.previous?.counters.executions ?? 0) + 1
            if case .failed(let info) = r.outcome { span.setStatus(SpanStatus(code: .error, message: String(info.message.prefix(500)))) }
            return r
        } catch {
            span.recordError(error)
            throw error
        }
    }

    /// The workflow's code from the top, then the outcome concluded and persisted.
    func execute(_ run: inout RunSnapshot, _ workflow: AnyWorkflow, trace: ServiceContext?) async throws -> (outcome: AdvanceOutcome, acted: Bool) {
        let runID = run.id
        try recordStart(&run, workflow)
        let executions = (run.previous?.counters.executions ?? 0) + 1
        let ctx = context(for: run, executions: executions, trace: trace)
        let input = try spool.blobs(runID).resolve(run.record.input)
        var result: Result<JSONValue, any Error>
        do { result = .success(try await workflow.body(ctx, input)) } catch { result = .failure(error) }
        if case .failure = result, Task.isCancelled {
            logger.info("interrupted", metadata: ["run": "\(runID)"])
            return (.interrupted, true)
        }
        let outcome = try await conclude(result, ctx, run)
        let persisted = try persist(outcome, ctx, run, executions: executions)
        compactJournal(run, tailCount: ctx.tailCount)
        return persisted
    }

    /// Between executions (the lock held, no script helper running): the journal's tail moved
    /// into a segment when it is long enough, and what an interrupted compaction left behind
    /// removed. Never fails the advance: the records are durable either way.
    func compactJournal(_ run: RunSnapshot, tailCount: Int) {
        let every = run.config.journalSegmentRecords
        guard every > 0, tailCount >= every else { return }
        do {
            try run.journal.compact(threshold: every)
        } catch {
            logger.warning("cannot move journal records into a segment; they stay single files", metadata: ["run": "\(run.id)", "error": "\(error)"])
        }
    }

    /// What `advance` reads of a run before it executes anything.
    struct RunSnapshot {
        let id: String
        let paths: RunPaths
        let record: RunRecord
        let config: SpoolConfig
        let journal: Journal
        /// Every record on disk, superseded ones included.
        var physical: [JournalEntry]
        /// The effective journal (`start` first, once recorded).
        var entries: [JournalEntry]
        /// state.json as the last execution left it.
        let previous: RunState?

        init(_ id: String, spool: Spool) throws {
            self.id = id
            paths = spool.run(id)
            record = try spool.readRun(id)
            config = try spool.config()
            journal = spool.journal(id)
            let contents = try journal.read()
            physical = contents.entries
            tailCount = contents.tailCount
            entries = Journal.effective(physical)
            previous = try? spool.readState(id)
            // A compaction stopped after writing its segment: finish it (the lock is held).
            if !contents.redundant.isEmpty { try journal.removeRedundant(contents.redundant) }
        }

        /// Single record files after the journal's last segment.
        var tailCount: Int

        mutating func reload() throws {
            let contents = try journal.read()
            physical = contents.entries
            tailCount = contents.tailCount
            entries = Journal.effective(physical)
        }
    }

    /// A run that already ended: its outcome (and state.json brought up to date), unless a
    /// `retry` file asks to retry a failed run, which is recorded here and the run goes on. A
    /// run stopped on a nondeterminism error stays stopped until someone asks to retry.
    func settleEnded(_ run: inout RunSnapshot) throws -> (outcome: AdvanceOutcome, acted: Bool)? {
        let paths = run.paths
        if let last = run.entries.last, let status = last.terminalStatus {
            if status == .failed, DurableFile.exists(paths.retryFile) {
                let point = Self.retryPoint(run.entries, failedWithoutError: registry[run.record.workflow]?.failedWithoutError ?? { _ in false })
                try run.journal.append(modify(JournalEntry(seq: run.physical.count + 1, kind: .retry, name: "run", at: clock.now())) {
                    $0.resumeFrom = point.from
                    $0.comment = "retry file present"
                    if let exact = point.superseded { $0.data = ["superseded": .array(exact.map { .int(Int64($0)) })] }
                })
                try? FileManager.default.removeItem(atPath: paths.retryFile.string)
                try DurableFile.fsyncDirectory(paths.directory)
                try run.reload()
                logger.info("retrying failed run", metadata: ["run": "\(run.id)", "from": "\(point.from)"])
                return nil
            }
            let outcome: AdvanceOutcome
            switch status {
            case .completed: outcome = .completed(try spool.blobs(run.id).resolve(last.value ?? .null))
            case .cancelled: outcome = .cancelled
            default: outcome = .failed(last.error ?? ErrorInfo(type: "failed", message: "failed"))
            }
            if run.previous?.status != status {
                try writeState(run.record, entries: run.entries, executions: run.previous?.counters.executions ?? 0, status: status, error: last.error)
                return (outcome, true)
            }
            return (outcome, false)
        }
        if let p = run.previous, p.status == .failed, let e = p.error, e.type == "nondeterminism", !DurableFile.exists(paths.retryFile) {
            return (.failed(e), false)
        }
        if DurableFile.exists(paths.retryFile) { try? FileManager.default.removeItem(atPath: paths.retryFile.string) }
        return nil
    }

    /// Still waiting on something that has not happened (time not come, no decision or event
    /// dropped, the child not finished), and no control file to act on: nothing a replay
    /// could change. A daemon's start looks at every waiting run; a script would otherwise
    /// run again from the top only to find out.
    func unchangedWait(_ run: RunSnapshot, _ workflow: AnyWorkflow) -> WaitingFor? {
        guard !workflow.replaysOnEveryWake, let p = run.previous, p.status == .waiting, let w = p.waitingFor,
              p.counters.journalEntries == run.entries.count,
              !DurableFile.exists(run.paths.cancelFile), !DurableFile.exists(run.paths.pauseFile),
              nothingHappened(w, run: run) else { return nil }
        return w
    }

    /// The `start` record, on a run's first execution (the workflow's version in it).
    func recordStart(_ run: inout RunSnapshot, _ workflow: AnyWorkflow) throws {
        if run.entries.isEmpty {
            let e = modify(JournalEntry(seq: run.physical.count + 1, kind: .start, at: clock.now())) {
                $0.data = ["workflow": .string(workflow.name), "version": .string(workflow.version), "pid": .int(Int64(getpid()))]
            }
            try run.journal.append(e)
            run.physical.append(e)
            run.tailCount += 1
            run.entries.append(e)
        } else if run.entries[0].kind != .start {
            throw SpoolError(.malformed, path: run.journal.directory.appending(run.entries[0].fileName).string, "the first journal record must be 'start'")
        }
        if let recorded = run.entries[0].data?["version"]?.stringValue, recorded != workflow.version {
            logger.notice("run started with another workflow version; replay checks determinism", metadata: ["run": "\(run.id)", "recorded": "\(recorded)", "code": "\(workflow.version)"])
        }
    }

    /// The context the workflow's code runs with: positioned after `start`, marking the run
    /// `running` just before its first record.
    func context(for run: RunSnapshot, executions: Int, trace: ServiceContext? = nil) -> WorkflowContext {
        let startEntries = run.entries
        let previous = run.previous
        let inline = registry[run.record.workflow]?.recordsFromOtherProcesses == false
        return WorkflowContext(runID: run.id, workflowName: run.record.workflow, spool: spool, config: run.config, entries: Array(run.entries.dropFirst()), physicalCount: run.physical.count, superseded: WorkflowContext.superseded(run.physical, effective: run.entries), clock: clock, logger: logger, tailCount: run.tailCount, compactEvery: inline ? run.config.journalSegmentRecords : 0, trace: trace) { [self] in
            // Not fsync'd (see Spool.writeState): the next step does not wait for it.
            if previous?.status != .running {
                try writeState(run.record, entries: startEntries, executions: executions, status: .running, error: nil, durability: .atomicOnly)
            }
        }
    }

    /// The outcome, decided by the engine whatever the workflow code returned, threw, wrapped
    /// or swallowed after a wait, cancel, nondeterminism or spool failure began; the terminal
    /// record (`complete` with result.json, or compensations then `fail`/`cancel`).
    func conclude(_ result: Result<JSONValue, any Error>, _ ctx: WorkflowContext, _ run: RunSnapshot) async throws -> AdvanceOutcome {
        var result = result
        switch ctx.control {
        case .spoolFailure(let e)?:
            // The spool, not the workflow, failed (disk full, EIO): do not fail the run or
            // compensate; the caller looks again later (or fsck repairs).
            throw e
        case .nondeterminism(let e)?:
            result = .failure(e)
        case .cancelled?:
            result = .failure(RunCancelledError())
        case .continued(let id)?:
            // `continueAsNew`: the run completes, its value naming the run that goes on.
            result = .success(["continued_as": .string(id)])
        case .suspended(let s)?:
            result = .failure(s)
        case .deferred(let e)?:
            if let f = e as? SpoolError { throw f }
            result = .failure(e)
        case nil:
            break
        }
        switch result {
        case .success(let output):
            do {
                if let extra = ctx.peek() {
                    let (file, where_) = run.journal.locate(fileName: extra.fileName)
                    throw NondeterminismError(info: ErrorInfo(type: "nondeterminism", message: "nondeterminism: the workflow returned, but \(where_) records \(extra.kind) '\(extra.name ?? "")' that the code no longer asked for", file: file, expected: ["kind": .string(extra.kind.rawValue), "name": extra.name.map { .string($0) } ?? .null], actual: ["kind": "return"], retryable: false))
                }
                let stored = try ctx.store(output)
                Spool.setAsideForeign(run.paths.resultFile)
                try spool.durable.write(json: output, to: run.paths.resultFile)
                try ctx.record(.complete, nil) {
                    $0.value = stored
                    $0.status = .completed
                }
                return .completed(output)
            } catch let e as NondeterminismError {
                logger.error("nondeterminism", metadata: ["run": "\(run.id)", "error": "\(e.info.message)"])
                return .failed(e.info)
            }
        case .failure(let s as Suspension):
            return .waiting(s.waitingFor)
        case .failure(let e as NondeterminismError):
            logger.error("nondeterminism", metadata: ["run": "\(run.id)", "error": "\(e.info.message)"])
            return .failed(e.info)
        case .failure(let e as SpoolError):
            throw e
        case .failure(let error):
            // Failure or cancellation: compensations, then the terminal record.
            let cancelled = error is RunCancelledError
            let info = cancelled ? ErrorInfo(type: "cancelled", message: "cancelled", retryable: false) : ErrorInfo.from(error)
            if cancelled { cancelChildren(of: ctx) }
            do {
                try await ctx.runCompensations()
                try ctx.record(cancelled ? .cancel : .fail, nil) {
                    $0.error = info
                    $0.status = cancelled ? .cancelled : .failed
                }
                return cancelled ? .cancelled : .failed(info)
            } catch let e as NondeterminismError {
                return .failed(e.info)
            }
        }
    }

    /// state.json for the outcome (nothing, when a wake replayed to the same wait and
    /// recorded nothing), with the tokens replay saved; a finished child wakes its parent.
    func persist(_ outcome: AdvanceOutcome, _ ctx: WorkflowContext, _ run: RunSnapshot, executions: Int) throws -> (outcome: AdvanceOutcome, acted: Bool) {
        let full = [run.entries[0]] + ctx.state.withLock { $0.entries }
        // Records that carry token usage (`data.tokens`: the agent layer's LLM calls) that this
        // execution replayed instead of sending again.
        let replayedUsage = ctx.state.withLock { $0.replayed.filter { $0.data?["tokens"] != nil } }
        let previous = run.previous
        if case .waiting(let w) = outcome, !ctx.appendedRecords, replayedUsage.isEmpty, previous?.status == .waiting, previous?.waitingFor == w,
           previous?.counters.journalEntries == full.count {
            // Woken, replayed, waiting on the same thing: nothing to write.
            return (outcome, false)
        }
        let savedNow = replayedUsage.reduce(Int64(0)) { $0 + ($1.data?["tokens"]?["input"]?.intValue ?? 0) + ($1.data?["tokens"]?["output"]?.intValue ?? 0) }
        let saved = (previous?.tokens?["saved"]?.intValue ?? 0) + savedNow
        switch outcome {
        case .completed: try writeState(run.record, entries: full, executions: executions, status: .completed, error: nil, tokensSaved: saved)
        case .cancelled: try writeState(run.record, entries: full, executions: executions, status: .cancelled, error: nil, tokensSaved: saved)
        case .failed(let info): try writeState(run.record, entries: full, executions: executions, status: .failed, error: info, tokensSaved: saved)
        case .waiting(let w): try writeState(run.record, entries: full, executions: executions, status: .waiting, error: nil, waitingFor: w, tokensSaved: saved)
        default: break
        }
        if outcome.isTerminal, let parent = run.record.parent, spool.runExists(parent.run) {
            // Wake the parent: it reads this run's journal when it resumes.
            let wake = spool.run(parent.run).eventsDirectory.appending("_child.\(run.id).json")
            Spool.setAsideForeign(wake)  // something planted at that name must not stop the wake
            try? spool.durable.write(json: ["run": .string(run.id)], to: wake)
        }
        logger.debug("advanced", metadata: ["run": "\(run.id)", "outcome": "\(outcome)"])
        return (outcome, true)
    }

    /// Whether the thing `w` waits for has certainly not happened yet.
    ///
    /// A decision or event file there is judged as its operation would judge it (owner,
    /// approvers, mode, size, JSON): one the operation would refuse is refused here — set
    /// aside with its error file, as the operation does — and counts as nothing. A script is
    /// not run again from the top for a drop its helper would only set aside (an outside
    /// attack re-ran a waiting script once per refused drop: 7 executions for one gate).
    func nothingHappened(_ w: WaitingFor, run: RunSnapshot) -> Bool {
        let paths = run.paths
        let until = w.until
        if let until, clock.now() >= until { return false }
        switch w.wake {
        case .time:
            return until != nil
        case .decision(let gate):
            guard w.kind == .approval || w.kind == .uncertain else { return false }
            let policy = run.config.approvalPolicy(gate: gate)
            return !["rejected", "approved"].contains { suffix in
                wouldTake(paths.approvalsDirectory.appending("\(gate).\(suffix)"), policy: policy, run: run)
            }
        case .event(let name):
            guard let files = try? Spool.list(paths.eventsDirectory) else { return false }
            let consumed = Set(run.physical.filter { $0.kind == .event }.compactMap(\.file))
            return !files.contains { f in
                Spool.isEventFile(f, for: name) && !consumed.contains("events/" + f) && wouldTake(paths.eventsDirectory.appending(f), policy: nil, run: run)
            }
        case .child(let child):
            guard let s = try? spool.readState(child) else { return false }
            return !s.status.isTerminal
        case .resume, .unknown:
            return false
        }
    }

    /// Whether the drop at `path` is there and would be taken. One that would be refused is
    /// set aside now (as the operation would); if even that fails, it counts as there, and the
    /// execution meets the same file and says what is wrong.
    func wouldTake(_ path: FilePath, policy: SpoolConfig.Approvers?, run: RunSnapshot) -> Bool {
        switch Drops.read(path, limit: run.config.dropSizeLimit, policy: policy) {
        case .absent: return false
        case .valid: return true
        case .refused(let p, let reason, let identity):
            do {
                try Drops.refuse(p, reason: reason, identity: identity, durable: spool.durable, now: clock.now(), setAsideIn: run.paths.refusedDirectory)
            } catch {
                return true
            }
            logger.warning("refused a dropped file", metadata: ["run": "\(run.id)", "file": "\(Names.printable(p.string))", "reason": "\(Names.printable(reason))"])
            return false
        }
    }

    /// Cancelling a run cancels the child runs it started and is not done with (each gets a
    /// `cancel` file, and compensates on its own).
    func cancelChildren(of ctx: WorkflowContext) {
        let entries = ctx.state.withLock { $0.entries }
        let started = entries.filter { $0.kind == "child" && $0.phase == "started" }.compactMap { $0.data?["run"]?.stringValue }
        let finished = Set(entries.filter { $0.kind == "child" && $0.phase == "finished" }.compactMap { $0.data?["run"]?.stringValue })
        for child in started where !finished.contains(child) && spool.runExists(child) {
            do {
                try spool.durable.write(Data(), to: spool.run(child).cancelFile, mode: .noReplace)
            } catch let e as SpoolError where e.code == .exists {
            } catch {
                logger.error("cannot cancel child run", metadata: ["run": "\(ctx.runID)", "child": "\(child)", "error": "\(error)"])
            }
        }
    }

    /// Where a run-level retry resumes (SPEC: "retry retries a failed run from its failed
    /// step"), and, when only some records go, exactly which:
    /// - compensations ran: from the first operation after `start` — what the run did was
    ///   undone, so it starts again (fresh attempts) rather than resuming past undone steps;
    /// - a `parallel` group failed: exactly its failed branch records and what followed the
    ///   group (the fail record); branches that succeeded keep their records;
    /// - an event that did not decode (`invalid_event`, recorded with its error): from its
    ///   `requested` record (the bad file stays consumed; the run waits for a new event);
    /// - a failed operation — an operation outcome (a step, an LLM call: `isOperationOutcome`),
    ///   a child or an event recorded with an error, or what the workflow's layer counts as
    ///   failed (`AnyWorkflow.failedWithoutError`: a `cairn step` whose exit code is not 0):
    ///   from its first record (its intent/retry/started records included);
    /// - otherwise: the terminal record.
    static func retryPoint(_ entries: [JournalEntry], failedWithoutError: (JournalEntry) -> Bool = { _ in false }) -> (from: Int, superseded: [Int]?) {
        guard let failIndex = entries.lastIndex(where: { $0.kind == "fail" }) else { return (entries.last?.seq ?? 1, nil) }
        let failed = entries[failIndex]
        if entries[..<failIndex].contains(where: { $0.kind == "compensate" }) {
            return (entries.count > 1 ? entries[1].seq : failed.seq, nil)
        }
        let failedStep: (JournalEntry) -> Bool = { e in
            (e.isOperationOutcome || e.kind == .child || e.kind == .event) && e.error != nil || failedWithoutError(e)
        }
        guard let stepIndex = entries[..<failIndex].lastIndex(where: failedStep) else {
            return (failed.seq, nil)
        }
        if let group = entries[stepIndex].group {
            let groupFailures = entries[..<failIndex].filter { $0.group == group && $0.error != nil }.map(\.seq)
            let lastOfGroup = entries[..<failIndex].lastIndex { $0.group == group } ?? stepIndex
            let after = entries[(lastOfGroup + 1)...].map(\.seq)
            let exact = groupFailures + after
            return (exact.min() ?? failed.seq, exact)
        }
        var i = stepIndex
        let name = entries[stepIndex].name
        while i > 0, entries[i - 1].name == name, ["retry", "intent", "uncertain", "child", "event"].contains(entries[i - 1].kind) { i -= 1 }
        return (entries[i].seq, nil)
    }

    func writeState(_ record: RunRecord, entries: [JournalEntry], executions: Int, status: RunStatus, error: ErrorInfo?, waitingFor: WaitingFor? = nil, tokensSaved: Int64? = nil, durability: DurableFile.Durability = .durable) throws {
        var state = StateDerivation.derive(record: record, entries: entries, now: clock.now())
        if let saved = tokensSaved, saved > 0 {
            var t = state.tokens?.objectValue ?? ["input": 0, "output": 0, "total": 0]
            t["saved"] = .int(saved)
            state.tokens = .object(t)
        }
        state.status = status
        state.error = error
        state.waitingFor = waitingFor
        state.counters.executions = executions
        try spool.writeState(state, durability: durability)
    }

    // MARK: in-process driving

    /// Advances a run until it finishes or waits on something other than time: timers and
    /// retry backoffs are slept through with the engine's clock, and child runs are driven
    /// in process. For tests, tools and embedding without a daemon.
    public func drive(_ runID: String, maxAdvances: Int = 10_000) async throws -> AdvanceOutcome {
        var outcome = AdvanceOutcome.busy
        for _ in 0..<maxAdvances {
            outcome = try await advance(runID)
            guard case .waiting(let w) = outcome else { return outcome }
            switch w.wake {
            case .time:
                if let until = w.until { try await clock.sleep(until: until) }
            case .child(let child):
                let c = try await drive(child, maxAdvances: maxAdvances)
                if !c.isTerminal { return outcome }
            default:
                return outcome
            }
        }
        return outcome
    }
}

func modify<T>(_ value: T, _ f: (inout T) -> Void) -> T {
    var v = value
    f(&v)
    return v
}
