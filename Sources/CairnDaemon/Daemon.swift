import Cairn
import CairnSpool
import CairnWatch
import Foundation
import Logging
import ServiceLifecycle
import SystemPackage

/// Settings of `cairn daemon`.
public struct DaemonOptions: Sendable {
    /// Runs advanced at once, over all workflows.
    public var concurrency: Int = 8
    /// Per workflow type (cairn.json `"concurrency": {"workflows": {NAME: N}}` adds to this).
    public var perWorkflow: [String: Int] = [:]
    /// A full rescan this often, for shared filesystems where inotify misses other hosts'
    /// writes (off by default: inotify sees every local write).
    public var rescanInterval: Duration? = nil
    /// On SIGTERM/SIGINT, running executions get this long to reach their next wait.
    public var shutdownGrace: Duration = .seconds(30)
    /// How soon to look again at a run another process holds (several daemons).
    public var busyRecheck: Duration = .seconds(1)

    public init() {}
}

/// `cairn daemon`: advances runs the instant a file lands, sleeps otherwise.
///
/// One watcher (inotify) reports drops in `inbox/`, new runs in `runs/`, and, for every
/// active run, its control files, `approvals/` and `events/`. One timer sleeps until the
/// earliest due time (durable sleeps, retry backoffs, gate timeouts). Ready runs are
/// advanced by the engine, at most `concurrency` at a time, each under its flock; a run
/// another daemon holds is looked at again after `busyRecheck`.
public actor Daemon: Service {
    public let spool: Spool
    let engine: Engine
    let watcher: Watcher
    var logger: Logger
    private var lastOverflowWarning: Date?
    private var overflowsSinceWarning = 0
    let options: DaemonOptions

    private var ready: [String] = []
    private var readySet: Set<String> = []
    private var running: [String: (workflow: String, key: String?)] = [:]
    private var dirty: Set<String> = []
    private var watchedRuns: Set<String> = []
    private var parked: Set<String> = []  // unknown workflow
    private var unwatchable: Set<String> = []  // no inotify watch (limit reached): a 30 s timer instead
    private var timers: [String: Date] = [:]
    private var timerTask: Task<Void, Never>?
    private var timerDeadline: Date?
    private var stopping = false
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []
    private var limits: [String: Int] = [:]
    private var keyLimits: [String: Int] = [:]
    private var defaultKeyLimit = 1
    /// Consecutive failed advances per run (spool errors), for the back-off.
    private var spoolFailures: [String: Int] = [:]

    /// Statistics for tests and `--stats`.
    public private(set) var advances = 0
    private var observer: (@Sendable (String, AdvanceOutcome) -> Void)?

    /// Called after every advance (the demo uses it to tell the person what to do).
    public func observe(_ f: @escaping @Sendable (String, AdvanceOutcome) -> Void) { observer = f }

    public init(spool: Spool, registry: WorkflowRegistry, watcher: Watcher, options: DaemonOptions = DaemonOptions(), logger: Logger, clock: any CairnClock = SystemClock()) {
        var reg = registry
        if reg.fallback == nil { reg.fallback = ScriptWorkflow.resolver(spool: spool) }
        self.spool = spool
        self.engine = Engine(spool: spool, registry: reg, clock: clock, logger: logger)
        self.watcher = watcher
        self.logger = logger
        self.options = options
    }

    // MARK: Service

    public func run() async throws {
        try await start()
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.consumeEvents() }
                if let every = self.options.rescanInterval {
                    group.addTask {
                        while !Task.isCancelled {
                            try? await Task.sleep(for: every)
                            if Task.isCancelled { break }
                            await self.rescan(reason: "rescan interval")
                        }
                    }
                }
                await self.waitUntilStopped()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            Task { await self.beginShutdown() }
        }
        await drain()
        watcher.stop()
        ScriptWorkflow.removeHelperDirectory()
        logger.info("daemon stopped")
    }

    private var stopWaiters: [CheckedContinuation<Void, Never>] = []
    private func waitUntilStopped() async {
        if stopping { return }
        await withCheckedContinuation { stopWaiters.append($0) }
    }

    /// Stop taking work; running executions continue until `drain` gives up on them.
    public func beginShutdown() {
        guard !stopping else { return }
        stopping = true
        logger.info("shutting down", metadata: ["running": "\(running.count)", "grace_s": "\(options.shutdownGrace.seconds)"])
        timerTask?.cancel()
        for w in stopWaiters { w.resume() }
        stopWaiters.removeAll()
    }

    private var tasks: [String: Task<Void, Never>] = [:]

    private func drain() async {
        let deadline = ContinuousClock.now + options.shutdownGrace
        let watchdog = Task {
            try? await Task.sleep(until: deadline)
            if !Task.isCancelled { self.interruptAll() }
        }
        while !running.isEmpty { await withCheckedContinuation { idleWaiters.append($0) } }
        watchdog.cancel()
    }

    private func interruptAll() {
        logger.warning("grace period over; interrupting running executions (they resume on the next start)", metadata: ["runs": "\(running.keys.sorted())"])
        for t in tasks.values { t.cancel() }
    }

    // MARK: start and rescan

    /// Watches the spool and finds every active run (cost: the active runs, via the index).
    public func start() async throws {
        // A script that closes its stdin early, or a reader that goes away, must never kill
        // the daemon: write errors come back as EPIPE instead (scripts get SIGPIPE back).
        signal(SIGPIPE, SIG_IGN)
        // The runtime's files are written by one user only (SPEC §3): the owner of runs/.
        guard spool.isServiceUser else {
            let owner = spool.serviceUID.map { Principal.userName(uid: $0) ?? String($0) } ?? "?"
            throw SpoolError(.invalid, path: spool.runsDirectory.string, "belongs to \(owner), the spool's service user; run the daemon as \(owner) (e.g. sudo -u \(owner) cairn daemon), so that nobody else writes the runtime's files")
        }
        try spool.checkConfigurationFiles()
        let hooks = CrashPoints.activeHooks
        if !hooks.isEmpty {
            logger.warning("test hooks active (a debug build; never in a release build)", metadata: ["hooks": "\(hooks.joined(separator: ","))"])
        }
        // How first writers win on this filesystem, found once (the service user owns tmp/).
        DurableFile.probeNoReplace(in: spool.tmpDirectory)
        let cfg = try spool.config()
        if let c = cfg.raw["concurrency"]?["workflows"]?.objectValue {
            for (k, v) in c { if let n = v.intValue { limits[k] = Int(n) } }
        }
        for (k, v) in options.perWorkflow { limits[k] = v }
        if let c = cfg.raw["concurrency"]?["keys"]?.objectValue {
            for (k, v) in c { if let n = v.intValue { keyLimits[k] = Int(n) } }
        }
        if let d = cfg.raw["concurrency"]?["default_key_limit"]?.intValue { defaultKeyLimit = Int(d) }
        try await watcher.watch(spool.inboxDirectory.string)
        try await watcher.watch(spool.runsDirectory.string)
        try await watcher.watch(spool.workflowsDirectory.string, mask: Watcher.dropAndModeMask)
        await rescan(reason: "start")
    }

    /// Inbox, then every queued, running or waiting run. Waiting runs are advanced once
    /// too: a decision may have been dropped while no daemon was watching.
    public func rescan(reason: String) async {
        let started = Date()
        for name in ((try? Spool.list(spool.inboxDirectory)) ?? []).sorted() { acceptInbox(name) }
        var n = 0
        for status in [RunStatus.queued, .running, .waiting] {
            for id in (try? spool.indexedRuns(status)) ?? [] where running[id] == nil {
                guard let state = try? spool.readState(id), !state.status.isTerminal else { continue }
                await watchRun(id)
                markReady(id)
                n += 1
            }
        }
        // Failed runs wait for a person: watch them for a `retry` file (and honour one that
        // was dropped while no daemon was watching).
        for id in (try? spool.runs(withStatus: .failed)) ?? [] where running[id] == nil {
            await watchRun(id)
            if DurableFile.exists(spool.run(id).retryFile) { markReady(id) }
        }
        logger.log(level: reason == "overflow" ? .debug : .info, "scanned spool", metadata: ["reason": "\(reason)", "active_runs": "\(n)", "ms": "\(Int(Date().timeIntervalSince(started) * 1000))"])
        pump()
        // The index is derived: a process killed between writing state.json and moving the
        // index entry leaves it behind. Reconcile it (after the active runs are on their way)
        // so that no run is ever lost to it. Interval rescans do it at most once a minute.
        if reason != "rescan interval" || Date().timeIntervalSince(lastReconcile) >= 60 {
            lastReconcile = Date()
            reconcileIndex()
        }
    }

    private var lastReconcile = Date.distantPast

    private func reconcileIndex() {
        do {
            let drift = try spool.reconcileIndex()
            guard !drift.isEmpty else { return }
            logger.warning("index disagreed with state.json; reconciled", metadata: [
                "unlisted": "\(drift.missing.map { "\($0.run) (\($0.status.rawValue))" })",
                "stale": "\(drift.stale.map { "\($0.run) (\($0.listed.rawValue))" })",
            ])
            for m in drift.missing where !m.status.isTerminal && running[m.run] == nil {
                Task { await self.watchRun(m.run); self.markReady(m.run); self.pump() }
            }
            for m in drift.missing where m.status == .failed && running[m.run] == nil {
                Task { await self.watchRun(m.run); if DurableFile.exists(self.spool.run(m.run).retryFile) { self.markReady(m.run); self.pump() } }
            }
        } catch {
            logger.error("cannot reconcile the status index", metadata: ["error": "\(Names.printable(String(describing: error)))"])
        }
    }

    // MARK: events

    private func consumeEvents() async {
        for await e in watcher.events {
            if Task.isCancelled { break }
            await handle(e)
        }
    }

    func handle(_ e: WatchEvent) async {
        if e.kind == .overflow {
            // A flood of file churn can overflow the queue again and again: one warning a
            // minute, with the count, not one per overflow.
            overflowsSinceWarning += 1
            if lastOverflowWarning.map({ Date().timeIntervalSince($0) >= 60 }) ?? true {
                logger.warning("event queue overflowed; rescanning", metadata: ["overflows": "\(overflowsSinceWarning)"])
                lastOverflowWarning = Date()
                overflowsSinceWarning = 0
            }
            await rescan(reason: "overflow")
            return
        }
        let runs = spool.runsDirectory.string
        switch e.directory {
        case spool.inboxDirectory.string:
            // A directory named like a submission is rejected at once, like any bad drop.
            if e.kind == .landed || e.kind == .directoryLanded { acceptInbox(e.name) }
        case runs:
            if e.kind == .directoryLanded, Names.isValidRunID(e.name) {
                logger.debug("new run", metadata: ["run": "\(e.name)"])
                await watchRun(e.name)
                markReady(e.name)
            }
        case spool.workflowsDirectory.string:
            if e.kind == .landed, !parked.isEmpty {
                for id in parked { markReady(id) }
                parked.removeAll()
            }
        default:
            guard e.directory.hasPrefix(runs + "/") else { return }
            let rest = e.directory.dropFirst(runs.count + 1).split(separator: "/", maxSplits: 1)
            guard let idPart = rest.first else { return }
            let id = String(idPart)
            if e.kind == .watchGone {
                if rest.count == 1 { forget(id) }
                return
            }
            let sub = rest.count > 1 ? String(rest[1]) : ""
            let arrived = e.kind == .landed || e.kind == .directoryLanded
            let relevant: Bool
            switch sub {
            case "": relevant = ["cancel", "pause", "retry"].contains(e.name)
            // Only what the run waits on wakes it (a decision dropped early for another gate
            // counts when the run gets there): a flood of other files costs a name check each,
            // not a replay each.
            case "approvals": relevant = arrived && wakes(id, approvalsFile: e.name)
            case "events": relevant = arrived && wakes(id, eventsFile: e.name)
            default: relevant = false
            }
            if relevant {
                logger.debug("wake", metadata: ["run": "\(id)", "file": "\(sub.isEmpty ? "" : sub + "/")\(Names.printable(e.name))"])
                markReady(id)
                if e.name == "cancel", running[id] != nil, engine.registry[running[id]!.workflow]?.replaysOnEveryWake == false {
                    // A script that never calls a helper would never see the cancel: stop
                    // it (its whole group); the run is advanced again and records the cancel.
                    logger.info("cancel requested; stopping the running script", metadata: ["run": "\(id)"])
                    tasks[id]?.cancel()
                }
            }
        }
        pump()
    }

    private func acceptInbox(_ name: String) {
        guard !stopping else { return }
        do {
            let outcome = try Inbox.process(name, spool: spool, isKnownWorkflow: { self.engine.registry[$0] != nil })
            switch outcome {
            case .accepted(let run, let created):
                logger.info(created ? "submission accepted" : "duplicate submission (same id or idempotency key)", metadata: ["file": "inbox/\(Names.printable(name))", "run": "\(run)"])
            case .rejected(let reason):
                logger.warning("submission rejected", metadata: ["file": "inbox/\(Names.printable(name))", "reason": "\(Names.printable(reason))"])
            case .ignored: break
            }
        } catch {
            // A spool error (a full disk, EIO): the file stays in inbox/; look at the inbox
            // again soon, then less often (1 s, 2 s, 4 s … 60 s), like a run's advance.
            let delay = scheduleInboxRetry()
            logger.error("cannot accept or reject an inbox file now; trying again in \(delay)s", metadata: ["file": "inbox/\(Names.printable(name))", "error": "\(Names.printable(String(describing: error)))"])
        }
    }

    private var inboxRetry: Task<Void, Never>?
    private var inboxFailures = 0
    private var inboxRetryDelay = 1

    /// Arms the inbox's next look (unless one is armed); returns its delay in seconds.
    private func scheduleInboxRetry() -> Int {
        guard inboxRetry == nil, !stopping else { return inboxRetryDelay }
        inboxFailures += 1
        inboxRetryDelay = Int(min(60, pow(2, Double(min(inboxFailures - 1, 6)))))
        let delay = inboxRetryDelay
        inboxRetry = Task {
            try? await Task.sleep(for: .seconds(delay))
            self.retryInbox()
        }
        return delay
    }

    private func retryInbox() {
        inboxRetry = nil
        for name in ((try? Spool.list(spool.inboxDirectory)) ?? []).sorted() { acceptInbox(name) }
        if inboxRetry == nil { inboxFailures = 0 }  // every file went through: back to 1 s
        pump()
    }

    // MARK: scheduling

    func markReady(_ id: String) {
        guard !stopping else { return }
        if running[id] != nil {
            dirty.insert(id)
            return
        }
        if readySet.insert(id).inserted { ready.append(id) }
    }

    private func pump() {
        guard !stopping else { return }
        var deferred: [String] = []
        while running.count < options.concurrency, !ready.isEmpty {
            let id = ready.removeFirst()
            readySet.remove(id)
            guard let record = try? spool.readRun(id) else { continue }
            if let limit = limits[record.workflow], running.values.filter({ $0.workflow == record.workflow }).count >= limit {
                deferred.append(id)
                continue
            }
            if let key = record.concurrencyKey, running.values.filter({ $0.key == key }).count >= (keyLimits[key] ?? defaultKeyLimit) {
                deferred.append(id)
                continue
            }
            running[id] = (record.workflow, record.concurrencyKey)
            waitingOn[id] = nil  // it may reach another wait: every drop wakes it until it ends
            advances += 1
            let engine = self.engine
            tasks[id] = Task {
                let outcome: Result<AdvanceOutcome, any Error>
                var acted = true
                do {
                    let r = try await engine.advanceReporting(id)
                    outcome = .success(r.outcome)
                    acted = r.acted
                } catch { outcome = .failure(error) }
                await self.finished(id, outcome, acted: acted)
            }
        }
        for id in deferred where readySet.insert(id).inserted { ready.append(id) }
    }

    private func finished(_ id: String, _ result: Result<AdvanceOutcome, any Error>, acted: Bool) async {
        if case .success(.waiting(let w)) = result { waitingOn[id] = w } else { waitingOn[id] = nil }
        // Log what this daemon did; what it only found (another daemon's work) is debug.
        let level: Logger.Level = acted ? .info : .debug
        running[id] = nil
        tasks[id] = nil
        let wasDirty = dirty.remove(id) != nil
        switch result {
        case .failure(let error):
            // A spool error (a full disk, EIO) or a file the runtime will not trust: the run is
            // not failed; look again soon, then less often (1 s, 2 s, 4 s … 60 s).
            let n = (spoolFailures[id] ?? 0) + 1
            spoolFailures[id] = n
            let delay = min(60, pow(2, Double(min(n - 1, 6))))
            logger.error("advancing failed; will look again in \(Int(delay))s", metadata: ["run": "\(id)", "error": "\(Names.printable(String(describing: error)))"])
            setTimer(id, Date().addingTimeInterval(delay))
        case .success(let outcome):
            spoolFailures[id] = nil
            observer?(id, outcome)
            switch outcome {
            case .completed:
                logger.log(level: level, "run completed", metadata: ["run": "\(id)"])
                forget(id)
            case .failed(let e):
                logger.log(level: acted ? .warning : .debug, "run failed", metadata: ["run": "\(id)", "error": "\(Names.printable(e.message))"])
                // Stay watching: a `retry` file brings it back.
            case .cancelled:
                logger.log(level: level, "run cancelled", metadata: ["run": "\(id)"])
                forget(id)
            case .waiting(let w):
                logger.log(level: level, "run waiting", metadata: ["run": "\(id)", "on": "\(w.kind)"])
                var due = w.until
                if unwatchable.contains(id) {
                    // No watch: look again in 30 s (and try to watch again then).
                    let soon = Date().addingTimeInterval(30)
                    due = min(due ?? soon, soon)
                    unwatchable.remove(id)
                    await watchRun(id)
                }
                if let due { setTimer(id, due) } else { clearTimer(id) }
            case .busy:
                setTimer(id, Date().addingTimeInterval(options.busyRecheck.seconds))
            case .unknownWorkflow(let w):
                logger.error("no such workflow; the run waits until it is installed in workflows/", metadata: ["run": "\(id)", "workflow": "\(w)"])
                parked.insert(id)
                if var state = try? spool.readState(id), state.error?.type != "unknown_workflow" {
                    let script = spool.workflowsDirectory.appending(w).string
                    let why = DurableFile.exists(atPath: script) ? "\(script) exists but is not an executable regular file (chmod +x it: the daemon notices)" : "no executable \(script)"
                    state.error = ErrorInfo(type: "unknown_workflow", message: "no workflow '\(w)' in this daemon and \(why); install it (the run starts then) or cancel the run")
                    state.updatedAt = Date()
                    try? spool.writeState(state)
                }
            case .interrupted:
                break
            }
        }
        // A relevant file landed while it ran (a decision, `retry`, `cancel`…): look again.
        if wasDirty, case .success(let o) = result, !isFinished(o) { markReady(id) }
        if running.isEmpty {
            for w in idleWaiters { w.resume() }
            idleWaiters.removeAll()
        }
        pump()
    }

    /// What each watched run waits on, from its last advance (nil: not known, or running).
    private var waitingOn: [String: WaitingFor] = [:]

    /// Whether a file landing in run `id`'s `approvals/` wakes it: when it is not known to
    /// wait (running, queued, failed…: wake, to be safe), or it waits for that gate's decision.
    private func wakes(_ id: String, approvalsFile file: String) -> Bool {
        guard file.hasSuffix(".approved") || file.hasSuffix(".rejected") else { return false }
        guard let w = waitingOn[id] else { return true }
        guard case .decision(let gate) = w.wake else { return false }
        return file.hasPrefix(gate + ".")
    }

    /// The same for `events/`: the event it waits for, or its child's wake-up file.
    private func wakes(_ id: String, eventsFile file: String) -> Bool {
        guard file.hasSuffix(".json"), !file.hasSuffix(".error.json") else { return false }
        guard let w = waitingOn[id] else { return true }
        switch w.wake {
        case .child: return file.hasPrefix("_child.")
        case .event(let name): return !file.hasPrefix("_child.") && Spool.isEventFile(file, for: name)
        default: return false
        }
    }

    private func isFinished(_ o: AdvanceOutcome) -> Bool {
        switch o {
        case .completed, .cancelled: return true
        default: return false
        }
    }

    // MARK: watches

    private func watchRun(_ id: String) async {
        guard watchedRuns.insert(id).inserted else { return }
        let p = spool.run(id)
        do {
            try await watcher.watch(p.directory.string)
            try await watcher.watch(p.approvalsDirectory.string)
            try await watcher.watch(p.eventsDirectory.string)
        } catch {
            logger.error("cannot watch run; looking at it every 30 s instead", metadata: ["run": "\(id)", "error": "\(Names.printable(String(describing: error)))"])
            watchedRuns.remove(id)
            unwatchable.insert(id)
            setTimer(id, Date().addingTimeInterval(30))
        }
    }

    private func forget(_ id: String) {
        unwatchable.remove(id)
        waitingOn[id] = nil
        if watchedRuns.remove(id) != nil {
            let p = spool.run(id)
            for d in [p.directory, p.approvalsDirectory, p.eventsDirectory] { watcher.unwatch(d.string) }
        }
        clearTimer(id)
        parked.remove(id)
    }

    // MARK: timers (one task sleeping until the earliest due time; never a polling loop)

    private func setTimer(_ id: String, _ at: Date) {
        timers[id] = at
        rearm()
    }

    private func clearTimer(_ id: String) {
        if timers.removeValue(forKey: id) != nil { rearm() }
    }

    private func rearm() {
        guard !stopping else { return }
        let next = timers.values.min()
        if next == timerDeadline { return }
        timerTask?.cancel()
        timerDeadline = next
        guard let next else { timerTask = nil; return }
        timerTask = Task {
            let delay = next.timeIntervalSinceNow
            if delay > 0 { try? await Task.sleep(for: .milliseconds(Int64((delay * 1000).rounded(.up)))) }
            if Task.isCancelled { return }
            self.timersFired()
        }
    }

    private func timersFired() {
        timerDeadline = nil
        let now = Date()
        for (id, at) in timers where at <= now {
            timers[id] = nil
            markReady(id)
        }
        rearm()
        pump()
    }

    // MARK: introspection (tests)

    public var runningCount: Int { running.count }
    public var pendingTimers: Int { timers.count }
    public var watchedRunCount: Int { watchedRuns.count }
}
