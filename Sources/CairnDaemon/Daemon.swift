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
    /// Counts what the daemon and the runs do (`--metrics-file`); nil: nothing counted.
    public var metrics: DaemonMetrics? = nil
    /// Called with a run's id after an advance that changed it (`--report-dir`), off the
    /// daemon's actor.
    public var afterAdvance: (@Sendable (String) -> Void)? = nil

    public init() {}
}

/// `cairn daemon`: advances runs the instant a file lands, sleeps otherwise.
///
/// A thin shell around `Scheduler` (the decisions, pure) and `TimerQueue` (one sleep on the
/// injected clock until the earliest due time): watcher events, timer firings and engine
/// outcomes go into the scheduler; the actions it returns (advance, watch, unwatch, set the
/// timer) are executed here. One watcher (inotify) reports drops in `inbox/`, new runs in
/// `runs/`, and, for every active run, its control files, `approvals/` and `events/`. Ready
/// runs are advanced by the engine, at most `concurrency` at a time, each under its flock; a
/// run another daemon holds is looked at again after `busyRecheck`.
public actor Daemon: Service {
    public let spool: Spool
    let engine: Engine
    let watcher: Watcher
    let clock: any CairnClock
    var logger: Logger
    private var lastOverflowWarning: Date?
    private var overflowsSinceWarning = 0
    /// The watcher's epoch when the last rescan began.
    private var lastRescanEpoch: UInt64 = 0
    let options: DaemonOptions

    private var scheduler: Scheduler
    private let timer: TimerQueue
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []
    private var tasks: [String: Task<Void, Never>] = [:]

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
        self.clock = clock
        self.logger = logger
        self.options = options
        self.scheduler = Scheduler(limits: SchedulerLimits(concurrency: options.concurrency, perWorkflow: options.perWorkflow), busyRecheck: options.busyRecheck.seconds)
        self.timer = TimerQueue(clock: clock)
        watcher.ignore(Self.ownWrites(runs: spool.runsDirectory.string))
    }

    /// The daemon's own writes in the run directories it watches for people's drops: a
    /// run's state.json, result.json and run.json, and an approval's request file. Never a
    /// wake; under load (each advance writes state.json) they overflowed the watcher's queue,
    /// and each overflow costs a rescan of every active run.
    static func ownWrites(runs: String) -> @Sendable (String, String) -> Bool {
        let prefix = runs + "/"
        return { dir, name in
            guard dir.hasPrefix(prefix) else { return false }
            let rest = dir.dropFirst(prefix.count)
            guard let slash = rest.firstIndex(of: "/") else { return name == "state.json" || name == "result.json" || name == "run.json" }
            return rest[rest.index(after: slash)...] == "approvals" && name.hasSuffix(".request.json")
        }
    }

    // MARK: Service

    public func run() async throws {
        try await start()
        defer {
            if let presence { DaemonPresence.withdraw(spool, fd: presence) }
            presence = nil
        }
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.consumeEvents() }
                group.addTask {
                    for await deadline in self.timer.fired { await self.send(.timerFired(deadline)) }
                }
                if let every = self.options.rescanInterval {
                    group.addTask {
                        while !Task.isCancelled {
                            try? await self.clock.sleep(for: every)
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

    /// The announcement's descriptor (its lock says this daemon runs), from start to stop.
    private var presence: Int32? = nil

    private var stopWaiters: [CheckedContinuation<Void, Never>] = []
    private func waitUntilStopped() async {
        if scheduler.stopping { return }
        await withCheckedContinuation { stopWaiters.append($0) }
    }

    /// Stop taking work; running executions continue until `drain` gives up on them.
    public func beginShutdown() {
        guard !scheduler.stopping else { return }
        if scheduler.runningCount > 0 {
            // Say what it waits for, and how not to (docs/operations.md, "Stopping").
            logger.notice("shutting down: waiting up to \(Int(options.shutdownGrace.seconds))s for running runs to reach a durable point; Ctrl-C again (SIGINT) interrupts them now, and they resume on the next start", metadata: ["runs": "\(scheduler.runningRuns.joined(separator: ","))"])
        } else {
            logger.info("shutting down", metadata: ["running": "0"])
        }
        send(.shutdown)
        inboxRetry?.cancel()
        for w in stopWaiters { w.resume() }
        stopWaiters.removeAll()
    }

    private func drain() async {
        let clock = self.clock
        let deadline = clock.now().addingTimeInterval(options.shutdownGrace.seconds)
        let watchdog = Task {
            do { try await clock.sleep(until: deadline) } catch { return }
            self.interruptAll()
        }
        while scheduler.runningCount > 0 { await withCheckedContinuation { idleWaiters.append($0) } }
        watchdog.cancel()
    }

    /// A second Ctrl-C during a graceful shutdown: interrupt the running executions now
    /// (as when the grace period is over; they resume on the next start).
    public func interruptNow() {
        guard scheduler.stopping, scheduler.runningCount > 0 else { return }
        interruptAll(because: "Ctrl-C again")
    }

    private func interruptAll(because reason: String = "grace period over") {
        logger.warning("\(reason); interrupting running executions (they resume on the next start)", metadata: ["runs": "\(scheduler.runningRuns.joined(separator: ","))"])
        for t in tasks.values { t.cancel() }
    }

    // MARK: the scheduler's actions

    /// One event into the scheduler; its actions executed. Watches it asks for are added
    /// by a task of their own (only a waiting run that had none gets them this way).
    private func send(_ event: Scheduler.Event) {
        for id in perform(event) { Task { await self.addWatches(id) } }
    }

    /// Executes the actions of `event` but the watches, which it returns for the caller to add.
    private func perform(_ event: Scheduler.Event) -> [String] {
        var watches: [String] = []
        var reads: [String] = []
        for a in scheduler.handle(event, now: clock.now()) {
            switch a {
            case .advance(let id): startAdvance(id)
            case .read(let id): reads.append(id)
            case .watch(let id): watches.append(id)
            case .unwatch(let id):
                let p = spool.run(id)
                for d in [p.directory, p.approvalsDirectory, p.eventsDirectory] { watcher.unwatch(d.string) }
            case .setTimer(let at): timer.arm(at)
            case .idle:
                for w in idleWaiters { w.resume() }
                idleWaiters.removeAll()
            }
        }
        for id in reads { watches += readRun(id) }
        return watches
    }

    /// The `read` action: run.json once per run. A run whose run.json cannot be read is not
    /// dropped: the error is logged (naming the file) and it is looked at again after the
    /// spool-failure back-off, as an advance that failed.
    private func readRun(_ id: String) -> [String] {
        do {
            return perform(.learned(id, RunInfo(try spool.readRun(id))))
        } catch {
            logger.error("cannot read the run's run.json; will look again", metadata: ["run": "\(id)", "error": "\(Names.printable(String(describing: error)))"])
            return perform(.unreadable(id))
        }
    }

    private func startAdvance(_ id: String) {
        advances += 1
        let engine = self.engine, spool = self.spool, clock = self.clock, metrics = options.metrics, after = options.afterAdvance
        tasks[id] = Task {
            let outcome: Result<AdvanceOutcome, any Error>
            var acted = true
            do {
                let r = try await engine.advanceReporting(id)
                outcome = .success(r.outcome)
                acted = r.acted
            } catch { outcome = .failure(error) }
            // What the run recorded (read off the actor, from its journal).
            if let metrics {
                if case .failure = outcome { metrics.error("advance_failed") } else if acted { metrics.observe(spool, run: id) }
            }
            if acted, case .success = outcome { after?(id) }
            if case .success(.unknownWorkflow(let w)) = outcome { await Self.recordUnknownWorkflow(id, w, spool: spool, now: clock.now()) }
            self.finished(id, outcome, acted: acted)
        }
    }

    private func finished(_ id: String, _ result: Result<AdvanceOutcome, any Error>, acted: Bool) {
        tasks[id] = nil
        // Log what this daemon did; what it only found (another daemon's work) is debug.
        let level: Logger.Level = acted ? .info : .debug
        switch result {
        case .failure(let error):
            send(.advanced(id, .failure(Scheduler.SpoolFailure())))
            // A spool error (a full disk, EIO) or a file the runtime will not trust: the run is
            // not failed; look again soon, then less often (1 s, 2 s, 4 s … 60 s).
            let delay = scheduler.spoolFailureDelay(id) ?? 1
            logger.error("advancing failed; will look again in \(Int(delay))s", metadata: ["run": "\(id)", "error": "\(Names.printable(String(describing: error)))"])
            return
        case .success(let outcome):
            observer?(id, outcome)
            switch outcome {
            case .completed: logger.log(level: level, "run completed", metadata: ["run": "\(id)"])
            case .failed(let e): logger.log(level: acted ? .warning : .debug, "run failed", metadata: ["run": "\(id)", "error": "\(Names.printable(e.message))"])
            case .cancelled: logger.log(level: level, "run cancelled", metadata: ["run": "\(id)"])
            case .waiting(let w): logger.log(level: level, "run waiting", metadata: ["run": "\(id)", "on": "\(w.kind)"])
            case .unknownWorkflow(let w): logger.error("no such workflow; the run waits until it is installed in workflows/", metadata: ["run": "\(id)", "workflow": "\(w)"])
            case .busy, .interrupted: break
            }
            send(.advanced(id, .success(outcome)))
        }
    }

    /// The run's state.json says why it does not start (once; off the actor, in the advance's task).
    nonisolated private static func recordUnknownWorkflow(_ id: String, _ w: String, spool: Spool, now: Date) async {
        guard var state = try? spool.readState(id), state.error?.type != "unknown_workflow" else { return }
        let script = spool.workflowsDirectory.appending(w).string
        let why = DurableFile.exists(atPath: script) ? "\(script) exists but is not an executable regular file (chmod +x it: the daemon notices)" : "no executable \(script)"
        let started = ((try? spool.journal(id).lastPosition()) ?? 0) > 0
        let next = started
            ? "install it again: the run goes on where it stopped (a cancel, too, waits for it: the run's compensations are in its code)"
            : "install it (the run starts then) or cancel the run (it has not started: it ends cancelled at once)"
        state.error = ErrorInfo(type: "unknown_workflow", message: "no workflow '\(w)' in this daemon and \(why); \(next)")
        state.updatedAt = now
        try? spool.writeState(state)
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
        // `cairn status` (and why, approve) tell whether a daemon serves the spool by this:
        // announced first, before any run is looked at, so that it is done by the time the
        // daemon acts (and a test stopping it then finds it complete).
        if presence == nil {
            do {
                presence = try DaemonPresence.announce(spool, concurrency: options.concurrency)
            } catch {
                logger.warning("cannot announce this daemon in daemons/ (cairn status will not see it)", metadata: ["error": "\(Names.printable(String(describing: error)))"])
            }
        }
        let hooks = CrashPoints.activeHooks
        if !hooks.isEmpty {
            logger.warning("test hooks active (a debug build; never in a release build)", metadata: ["hooks": "\(hooks.joined(separator: ","))"])
        }
        // How first writers win on this filesystem, found once (the service user owns tmp/).
        DurableFile.probeNoReplace(in: spool.tmpDirectory)
        scheduler = Scheduler(limits: SchedulerLimits(config: try spool.config().raw, options: options), busyRecheck: options.busyRecheck.seconds)
        try await watcher.watch(spool.inboxDirectory.string)
        try await watcher.watch(spool.runsDirectory.string)
        try await watcher.watch(spool.workflowsDirectory.string, mask: Watcher.dropAndModeMask)
        await rescan(reason: "start")
    }

    /// Inbox, then every queued, running or waiting run. Waiting runs are advanced once
    /// too: a decision may have been dropped while no daemon was watching.
    public func rescan(reason: String) async {
        options.metrics?.rescan(reason)
        let started = ContinuousClock.now
        lastRescanEpoch = watcher.epoch
        for name in ((try? Spool.list(spool.inboxDirectory)) ?? []).sorted() { acceptInbox(name) }
        // state.json and run.json of every listed run are read off the actor.
        let found = await Self.scanSpool(spool)
        var wake: [String] = []
        for (id, info) in found.active where !scheduler.isRunning(id) {
            learn(id, info)
            await watchRun(id)
            wake.append(id)
        }
        let n = wake.count
        // Failed runs wait for a person: watch them for a `retry` file (and honour one that
        // was dropped while no daemon was watching).
        for (id, info) in found.failed where !scheduler.isRunning(id) {
            learn(id, info)
            await watchRun(id)
            if DurableFile.exists(spool.run(id).retryFile) { wake.append(id) }
        }
        let ms = (ContinuousClock.now - started).seconds * 1000
        logger.log(level: reason == "overflow" ? .debug : .info, "scanned spool", metadata: ["reason": "\(reason)", "active_runs": .stringConvertible(n), "ms": .stringConvertible(Int(ms))])
        // All queued first, then started in order (not each as soon as it is watched).
        send(.wakeAll(wake))
        // The index is derived: a process killed between writing state.json and moving the
        // index entry leaves it behind. Reconcile it (after the active runs are on their way)
        // so that no run is ever lost to it. Interval rescans do it at most once a minute.
        if reason != "rescan interval" || clock.now().timeIntervalSince(lastReconcile) >= 60 {
            lastReconcile = clock.now()
            await reconcileIndex()
        }
    }

    /// Every queued, running or waiting run (by the index) whose state.json is not terminal,
    /// and every failed run, each with its run.json (a run whose run.json cannot be read is left out).
    /// A run whose run.json does not read comes with no info: the scheduler asks for it
    /// again when the run is due (`read`), which logs the error and backs off.
    nonisolated private static func scanSpool(_ spool: Spool) async -> (active: [(String, RunInfo?)], failed: [(String, RunInfo?)]) {
        var active: [(String, RunInfo?)] = []
        for status in [RunStatus.queued, .running, .waiting] {
            for id in (try? spool.indexedRuns(status)) ?? [] {
                // A state.json that does not read (a `running` mark a power loss tore: it is
                // not fsync'd) is active too: the advance writes it again from the journal.
                if let state = try? spool.readState(id), state.status.isTerminal { continue }
                active.append((id, (try? spool.readRun(id)).map(RunInfo.init)))
            }
        }
        let failed = ((try? spool.runs(withStatus: .failed)) ?? []).map { id in (id, (try? spool.readRun(id)).map(RunInfo.init)) }
        return (active, failed)
    }

    private var lastReconcile = Date.distantPast

    private func reconcileIndex() async {
        do {
            // Off the actor: two listings of every run (seconds, in a spool of a million
            // runs) must not keep the advances just started from running.
            let drift = try await Self.reconcileOffActor(spool)
            guard !drift.isEmpty else { return }
            logger.warning("index disagreed with state.json; reconciled", metadata: [
                "unlisted": "\(drift.missing.map { "\($0.run) (\($0.status.rawValue))" })",
                "stale": "\(drift.stale.map { "\($0.run) (\($0.listed.rawValue))" })",
            ])
            for m in drift.missing where !m.status.isTerminal && !scheduler.isRunning(m.run) {
                await watchRun(m.run)
                send(.wake(m.run))
            }
            for m in drift.missing where m.status == .failed && !scheduler.isRunning(m.run) {
                await watchRun(m.run)
                if DurableFile.exists(spool.run(m.run).retryFile) { send(.wake(m.run)) }
            }
        } catch {
            logger.error("cannot reconcile the status index", metadata: ["error": "\(Names.printable(String(describing: error)))"])
        }
    }

    nonisolated private static func reconcileOffActor(_ spool: Spool) async throws -> Spool.IndexDrift {
        try spool.reconcileIndex()
    }

    // MARK: events

    private func consumeEvents() async {
        for await e in watcher.events {
            if Task.isCancelled { break }
            await handle(e)
        }
    }

    func handle(_ e: WatchEvent) async {
        options.metrics?.wakeup()
        if e.kind == .overflow {
            options.metrics?.overflow()
            // Reported before the last rescan began: that rescan found what was lost. (While
            // a rescan runs, the queue may fill and take one overflow each time a slot frees:
            // a rescan each would be a loop of rescans.)
            if e.epoch <= lastRescanEpoch { return }
            // A flood of file churn can overflow the queue again and again: one warning a
            // minute, with the count, not one per overflow.
            overflowsSinceWarning += 1
            let now = clock.now()
            if lastOverflowWarning.map({ now.timeIntervalSince($0) >= 60 }) ?? true {
                logger.warning("event queue overflowed; rescanning", metadata: ["overflows": "\(overflowsSinceWarning)"])
                lastOverflowWarning = now
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
                send(.wake(e.name))
            }
        case spool.workflowsDirectory.string:
            if e.kind == .landed { send(.workflowsChanged) }
        default:
            guard e.directory.hasPrefix(runs + "/") else { return }
            let rest = e.directory.dropFirst(runs.count + 1).split(separator: "/", maxSplits: 1)
            guard let idPart = rest.first else { return }
            let id = String(idPart)
            if e.kind == .watchGone {
                if rest.count == 1 { send(.gone(id)) }
                return
            }
            let sub = rest.count > 1 ? String(rest[1]) : ""
            let arrived = e.kind == .landed || e.kind == .directoryLanded
            // Only what the run waits on wakes it: a flood of other files costs a name check
            // each, not a replay each.
            guard scheduler.wakes(id, sub: sub, file: e.name, arrived: arrived) else { return }
            logger.debug("wake", metadata: ["run": "\(id)", "file": "\(sub.isEmpty ? "" : sub + "/")\(Names.printable(e.name))"])
            // A script that never calls a helper would never see the cancel: stop it (its
            // whole group); the run is advanced again and records the cancel. Only a script
            // already running: the wake below may start an execution for this very cancel
            // (a run that waited), and that one must not be stopped.
            let stopScript = e.name == "cancel" && scheduler.workflow(ofRunning: id).map { engine.registry[$0]?.replaysOnEveryWake == false } == true
            send(.wake(id))
            if stopScript {
                logger.info("cancel requested; stopping the running script", metadata: ["run": "\(id)"])
                tasks[id]?.cancel()
            }
        }
    }

    private func learn(_ id: String, _ info: RunInfo?) {
        if let info, !scheduler.knows(id) { send(.learned(id, info)) }
    }

    private func acceptInbox(_ name: String) {
        guard !scheduler.stopping else { return }
        do {
            let outcome = try Inbox.process(name, spool: spool, isKnownWorkflow: { self.engine.registry[$0] != nil }, now: clock.now())
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
        guard inboxRetry == nil, !scheduler.stopping else { return inboxRetryDelay }
        inboxFailures += 1
        inboxRetryDelay = Int(Scheduler.spoolFailureBackoff(failures: inboxFailures))
        let delay = inboxRetryDelay
        let clock = self.clock
        inboxRetry = Task {
            do { try await clock.sleep(for: .seconds(delay)) } catch { return }
            self.retryInbox()
        }
        return delay
    }

    private func retryInbox() {
        inboxRetry = nil
        for name in ((try? Spool.list(spool.inboxDirectory)) ?? []).sorted() { acceptInbox(name) }
        if inboxRetry == nil { inboxFailures = 0 }  // every file went through: back to 1 s
    }

    // MARK: watches

    /// Watch first, wake second: nothing lands unseen between the two.
    private func watchRun(_ id: String) async {
        for w in perform(.watch(id)) { await addWatches(w) }
    }

    private func addWatches(_ id: String) async {
        let p = spool.run(id)
        do {
            try await watcher.watch(p.directory.string)
            try await watcher.watch(p.approvalsDirectory.string)
            try await watcher.watch(p.eventsDirectory.string)
        } catch {
            logger.error("cannot watch run; looking at it every 30 s instead", metadata: ["run": "\(id)", "error": "\(Names.printable(String(describing: error)))"])
            send(.watchFailed(id))
        }
    }

    // MARK: introspection (tests)

    public var runningCount: Int { scheduler.runningCount }
    public var pendingTimers: Int { scheduler.pendingTimers }
    public var watchedRunCount: Int { scheduler.watchedCount }
}
