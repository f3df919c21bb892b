import Cairn
import CairnSpool
import Foundation

/// What the scheduler needs to know of a run: fixed at submission (run.json), read once.
public struct RunInfo: Sendable, Equatable {
    public var workflow: String
    public var concurrencyKey: String?

    public init(workflow: String, concurrencyKey: String? = nil) {
        self.workflow = workflow
        self.concurrencyKey = concurrencyKey
    }

    public init(_ record: RunRecord) { self.init(workflow: record.workflow, concurrencyKey: record.concurrencyKey) }
}

/// How many runs may execute at once: over all workflows, per workflow type, per
/// `concurrency_key` (with a default for keys cairn.json does not name).
public struct SchedulerLimits: Sendable, Equatable {
    public var concurrency: Int
    public var perWorkflow: [String: Int]
    public var perKey: [String: Int]
    public var defaultKeyLimit: Int

    public init(concurrency: Int = 8, perWorkflow: [String: Int] = [:], perKey: [String: Int] = [:], defaultKeyLimit: Int = 1) {
        self.concurrency = concurrency
        self.perWorkflow = perWorkflow
        self.perKey = perKey
        self.defaultKeyLimit = defaultKeyLimit
    }

    /// cairn.json `"concurrency": {"workflows": {NAME: N}, "keys": {KEY: N}, "default_key_limit": N}`,
    /// with the daemon's options on top (`--concurrency`, per-workflow limits given in code).
    public init(config: JSONValue, options: DaemonOptions) {
        self.init(concurrency: options.concurrency)
        let c = config["concurrency"]
        for (k, v) in c?["workflows"]?.objectValue ?? [:] { if let n = v.intValue { perWorkflow[k] = Int(n) } }
        for (k, v) in options.perWorkflow { perWorkflow[k] = v }
        for (k, v) in c?["keys"]?.objectValue ?? [:] { if let n = v.intValue { perKey[k] = Int(n) } }
        if let d = c?["default_key_limit"]?.intValue { defaultKeyLimit = Int(d) }
    }

    func limit(forKey key: String) -> Int { perKey[key] ?? defaultKeyLimit }
}

/// What a waiting run waits on, as far as the daemon cares: what wakes it, and when it is due.
public struct WaitSummary: Sendable, Equatable {
    public var kind: WaitKind
    public var wake: WaitingFor.Wake
    /// When the wait ends by itself (durable sleep, retry backoff, gate timeout).
    public var due: Date?

    public init(_ waitingFor: WaitingFor) {
        kind = waitingFor.kind
        wake = waitingFor.wake
        due = waitingFor.until
    }
}

/// The daemon's decisions, with no I/O and no clock: events in (`handle(_:now:)`), actions
/// out. The `Daemon` actor executes the actions (advance, watch, unwatch, set the timer) and
/// reports back what happened as further events.
///
/// Order: ready runs start first come, first served; a run held back by a workflow or key
/// limit keeps its turn over runs that became ready after the pump (it goes behind those
/// that were already queued). Running counts per workflow and per key are kept as counts.
public struct Scheduler: Sendable {
    public enum Event: Sendable {
        /// run.json was read: the run's workflow and concurrency key.
        case learned(String, RunInfo)
        /// run.json could not be read (EIO, a damaged file): try again after the
        /// spool-failure back-off, as after a failed advance.
        case unreadable(String)
        /// Watch this run's directory, approvals/ and events/ (a new run, a rescan).
        case watch(String)
        /// Adding the run's watches failed (inotify watch limit): look at it every 30 s instead.
        case watchFailed(String)
        /// Something relevant happened to the run (a drop, a new run): advance it.
        case wake(String)
        /// A rescan found these runs: all are queued, in this order, before any starts.
        case wakeAll([String])
        /// A file landed in workflows/: runs parked on an unknown workflow try again.
        case workflowsChanged
        /// An advance ended: with the engine's outcome, or with an error (a spool error).
        case advanced(String, Result<AdvanceOutcome, SpoolFailure>)
        /// The timer armed for this deadline came: runs whose due time came (by `now`) are
        /// woken, and the timer is set again (also when the clock reads earlier than the deadline).
        case timerFired(Date)
        /// The run's directory went away (gc): forget it.
        case gone(String)
        /// Shutdown began: start nothing more, no timers.
        case shutdown
    }

    /// An advance that threw (a spool error, a file the runtime will not trust).
    public struct SpoolFailure: Error, Sendable, Equatable {
        public init() {}
    }

    public enum Action: Sendable, Equatable {
        case advance(String)
        /// A ready run whose run.json the scheduler has not seen: read it, then report
        /// `learned` (the run is queued again) or `unreadable`.
        case read(String)
        case watch(String)
        case unwatch(String)
        /// Sleep until this time (nil: no timer); given only when the earliest due time changes.
        case setTimer(Date?)
        /// Nothing runs any more (a draining shutdown can end).
        case idle
    }

    public let limits: SchedulerLimits
    /// How soon a run another process holds is looked at again.
    public let busyRecheck: TimeInterval
    /// How soon a run without watches is looked at again.
    public static let unwatchableRecheck: TimeInterval = 30

    private var info: [String: RunInfo] = [:]
    /// Runs whose run.json a `read` action is fetching.
    private var reading: Set<String> = []
    private var ready = ReadyQueue()
    private var running: [String: RunInfo] = [:]
    private var runningPerWorkflow: [String: Int] = [:]
    private var runningPerKey: [String: Int] = [:]
    private var dirty: Set<String> = []
    private var watched: Set<String> = []
    private var parked: Set<String> = []
    private var unwatchable: Set<String> = []
    private var due: [String: Date] = [:]
    private var armed: Date?
    private var waitingOn: [String: WaitSummary] = [:]
    /// Consecutive failed advances per run (spool errors), for the back-off.
    private var spoolFailures: [String: Int] = [:]
    public private(set) var stopping = false

    public init(limits: SchedulerLimits, busyRecheck: TimeInterval = 1) {
        self.limits = limits
        self.busyRecheck = busyRecheck
    }

    // MARK: queries

    public func knows(_ id: String) -> Bool { info[id] != nil }
    public func isRunning(_ id: String) -> Bool { running[id] != nil }
    public func workflow(ofRunning id: String) -> String? { running[id]?.workflow }
    public var runningCount: Int { running.count }
    public var runningRuns: [String] { running.keys.sorted() }
    public var pendingTimers: Int { due.count }
    public var watchedCount: Int { watched.count }
    public func dueTime(_ id: String) -> Date? { due[id] }
    public var readyRuns: [String] { ready.elements }
    public var nextDue: Date? { stopping ? nil : due.values.min() }
    public func isParked(_ id: String) -> Bool { parked.contains(id) }

    /// The spool-failure back-off: after `n` consecutive failed advances, look again in
    /// 1 s, 2 s, 4 s … at most 60 s.
    public static func spoolFailureBackoff(failures n: Int) -> TimeInterval {
        min(60, pow(2, Double(min(max(n, 1) - 1, 6))))
    }

    /// The back-off in force for a run after a failed advance (nil: its last advance worked).
    public func spoolFailureDelay(_ id: String) -> TimeInterval? {
        spoolFailures[id].map { Self.spoolFailureBackoff(failures: $0) }
    }

    // MARK: wakes

    /// Whether a file `file` landing in the run's `sub` directory ("" for the run directory,
    /// "approvals", "events") wakes run `id`. Only what the run waits on wakes it (a decision
    /// dropped early for another gate counts when the run gets there); a run not known to
    /// wait (running, queued, failed…) is woken, to be safe.
    public func wakes(_ id: String, sub: String, file: String, arrived: Bool) -> Bool {
        switch sub {
        case "": return ["cancel", "pause", "retry"].contains(file)
        case "approvals":
            guard arrived, file.hasSuffix(".approved") || file.hasSuffix(".rejected") else { return false }
            guard let w = waitingOn[id] else { return true }
            guard case .decision(let gate) = w.wake else { return false }
            return file.hasPrefix(gate + ".")
        case "events":
            guard arrived, file.hasSuffix(".json"), !file.hasSuffix(".error.json") else { return false }
            guard let w = waitingOn[id] else { return true }
            switch w.wake {
            case .child: return file.hasPrefix("_child.")
            case .event(let name): return !file.hasPrefix("_child.") && Spool.isEventFile(file, for: name)
            default: return false
            }
        default: return false
        }
    }

    // MARK: events

    public mutating func handle(_ event: Event, now: Date) -> [Action] {
        var out: [Action] = []
        switch event {
        case .learned(let id, let i):
            info[id] = i
            if reading.remove(id) != nil { markReady(id) }
        case .unreadable(let id):
            reading.remove(id)
            let n = (spoolFailures[id] ?? 0) + 1
            spoolFailures[id] = n
            setDue(id, now.addingTimeInterval(Self.spoolFailureBackoff(failures: n)))
        case .watch(let id):
            if watched.insert(id).inserted { out.append(.watch(id)) }
        case .watchFailed(let id):
            watched.remove(id)
            unwatchable.insert(id)
            setDue(id, now.addingTimeInterval(Self.unwatchableRecheck), earliest: true)
        case .wake(let id):
            markReady(id)
        case .wakeAll(let ids):
            for id in ids { markReady(id) }
        case .workflowsChanged:
            for id in parked.sorted() { markReady(id) }
            parked.removeAll()
        case .advanced(let id, let result):
            finished(id, result, now: now, &out)
        case .timerFired(let deadline):
            if armed == deadline { armed = nil }
            for (id, at) in due.sorted(by: { ($0.value, $0.key) < ($1.value, $1.key) }) where at <= now {
                due[id] = nil
                markReady(id)
            }
        case .gone(let id):
            forget(id, &out)
        case .shutdown:
            stopping = true
        }
        pump(&out)
        if !stopping, nextDue != armed {
            armed = nextDue
            out.append(.setTimer(armed))
        }
        if stopping, armed != nil {
            armed = nil
            out.append(.setTimer(nil))
        }
        return out
    }

    private mutating func markReady(_ id: String) {
        guard !stopping else { return }
        if running[id] != nil {
            dirty.insert(id)
            return
        }
        ready.append(id)
    }

    private mutating func pump(_ out: inout [Action]) {
        guard !stopping else { return }
        var deferred: [String] = []
        while running.count < limits.concurrency, let id = ready.popFirst() {
            guard let i = info[id] else {
                // run.json not read yet: read it first (the run is queued again once known).
                if reading.insert(id).inserted { out.append(.read(id)) }
                continue
            }
            if let limit = limits.perWorkflow[i.workflow], runningPerWorkflow[i.workflow, default: 0] >= limit {
                deferred.append(id)
                continue
            }
            if let key = i.concurrencyKey, runningPerKey[key, default: 0] >= limits.limit(forKey: key) {
                deferred.append(id)
                continue
            }
            running[id] = i
            runningPerWorkflow[i.workflow, default: 0] += 1
            if let key = i.concurrencyKey { runningPerKey[key, default: 0] += 1 }
            waitingOn[id] = nil  // it may reach another wait: every drop wakes it until it ends
            out.append(.advance(id))
        }
        for id in deferred { ready.append(id) }
    }

    private mutating func finished(_ id: String, _ result: Result<AdvanceOutcome, SpoolFailure>, now: Date, _ out: inout [Action]) {
        guard let i = running.removeValue(forKey: id) else { return }
        runningPerWorkflow[i.workflow, default: 1] -= 1
        if runningPerWorkflow[i.workflow] == 0 { runningPerWorkflow[i.workflow] = nil }
        if let key = i.concurrencyKey {
            runningPerKey[key, default: 1] -= 1
            if runningPerKey[key] == 0 { runningPerKey[key] = nil }
        }
        if case .success(.waiting(let w)) = result { waitingOn[id] = WaitSummary(w) } else { waitingOn[id] = nil }
        let wasDirty = dirty.remove(id) != nil
        switch result {
        case .failure:
            // Not failed: look again soon, then less often.
            let n = (spoolFailures[id] ?? 0) + 1
            spoolFailures[id] = n
            setDue(id, now.addingTimeInterval(Self.spoolFailureBackoff(failures: n)))
        case .success(let outcome):
            spoolFailures[id] = nil
            switch outcome {
            case .completed, .cancelled:
                forget(id, &out)
            case .failed, .interrupted:
                break  // a failed run stays watched: a `retry` file brings it back
            case .waiting:
                var at = waitingOn[id]?.due
                if unwatchable.remove(id) != nil {
                    // No watch: look again in 30 s (and try to watch again now).
                    let soon = now.addingTimeInterval(Self.unwatchableRecheck)
                    at = min(at ?? soon, soon)
                    if watched.insert(id).inserted { out.append(.watch(id)) }
                }
                if let at { setDue(id, at) } else { due[id] = nil }
            case .busy:
                setDue(id, now.addingTimeInterval(busyRecheck))
            case .unknownWorkflow:
                parked.insert(id)
            }
        }
        // A relevant file landed while it ran (a decision, `retry`, `cancel`…): look again.
        if wasDirty, case .success(let o) = result, !Self.isFinished(o) { markReady(id) }
        if running.isEmpty { out.append(.idle) }
    }

    private static func isFinished(_ o: AdvanceOutcome) -> Bool {
        switch o {
        case .completed, .cancelled: return true
        default: return false
        }
    }

    private mutating func forget(_ id: String, _ out: inout [Action]) {
        unwatchable.remove(id)
        waitingOn[id] = nil
        spoolFailures[id] = nil
        reading.remove(id)
        if watched.remove(id) != nil { out.append(.unwatch(id)) }
        due[id] = nil
        parked.remove(id)
        if running[id] == nil, !ready.contains(id) { info[id] = nil }
    }

    /// `earliest`: keep an earlier due time the run already has.
    private mutating func setDue(_ id: String, _ at: Date, earliest: Bool = false) {
        if earliest, let old = due[id], old <= at { return }
        due[id] = at
    }
}

/// First come, first served, each run at most once; O(1) append, pop and membership.
struct ReadyQueue: Sendable {
    private var items: [String] = []
    private var head = 0
    private var members: Set<String> = []

    mutating func append(_ id: String) {
        if members.insert(id).inserted { items.append(id) }
    }

    mutating func popFirst() -> String? {
        guard head < items.count else { return nil }
        let id = items[head]
        head += 1
        if head > 64, head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        members.remove(id)
        return id
    }

    func contains(_ id: String) -> Bool { members.contains(id) }
    var elements: [String] { Array(items[head...]) }
}
