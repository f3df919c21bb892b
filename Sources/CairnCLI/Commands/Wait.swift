import ArgumentParser
import Cairn
import CairnSpool
import CairnWatch
import Foundation

struct WaitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wait",
        abstract: "Block until a run reaches a state (inotify on its state.json, no polling).",
        discussion: prose("""
            Exit 0 when reached, 1 when the run ended otherwise (e.g. failed while waiting for
            completed), 4 on --timeout.

            Examples:
              cairn wait RUN                 # until completed, failed or cancelled
              cairn wait RUN --for waiting --timeout 30s
            """)
    )

    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.runs) var runID: String
    @Option(name: .customLong("for"), help: "The state to wait for (terminal: completed, failed or cancelled).") var target: WaitTarget = .terminal
    @Option(name: .long, help: "Give up after this long (exit 4).") var timeout: DurationArgument?
    @Option(name: .customLong("rescan-interval"), help: "Also re-read state.json this often (writes from other hosts of a shared filesystem).") var rescanInterval = DurationArgument(argument: "1s")!
    @OptionGroup var options: SpoolOptions
    @OptionGroup var output: JSONOption

    func validate() throws {
        guard rescanInterval.duration >= .milliseconds(100) else { throw ValidationError("--rescan-interval must be at least 100ms, not \(rescanInterval.text)") }
    }

    func run() async throws {
        let watcher = try Watcher.start()
        let spool = try options.open()
        _ = try requireRun(spool, runID)
        let dir = spool.run(runID).directory.string
        try await watcher.watch(dir)
        let deadline = timeout.map { ContinuousClock.now + $0.duration }
        let id = runID, target = self.target
        // Already there: said before any timeout (even --timeout 0s) can pass.
        if let now = Self.settled(try Self.read(spool, id), target, retryPending: Self.retryPending(spool, id)) {
            watcher.stop()
            return try report(now)
        }
        let rescan = rescanInterval.duration
        let reached: RunState? = try await withThrowingTaskGroup(of: RunState?.self) { group in
            group.addTask {
                // Check after the watch is in place, then on every wake-up, whatever it was:
                // an event on state.json, an overflow, or any other event of the directory.
                if let s = Self.settled(try Self.read(spool, id), target, retryPending: Self.retryPending(spool, id)) { return s }
                for await _ in watcher.events {
                    if let s = Self.settled(try Self.read(spool, id), target, retryPending: Self.retryPending(spool, id)) { return s }
                }
                return nil
            }
            // inotify does not see writes made through another host's mount of a shared
            // filesystem: look again every --rescan-interval too (one small read).
            group.addTask {
                while true {
                    try await Task.sleep(for: rescan)
                    if let s = Self.settled(try Self.read(spool, id), target, retryPending: Self.retryPending(spool, id)) { return s }
                }
            }
            if let deadline {
                group.addTask {
                    try await Task.sleep(until: deadline)
                    return nil
                }
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            return first
        }
        watcher.stop()
        guard let state = reached else {
            let now = (try? spool.readState(runID))??.status.rawValue ?? "?"
            let pending = Self.retryPending(spool, runID) ? "; a retry is pending: is a daemon serving \(spool.root.string)?" : ""
            throw CLIError(.timedOut, "\(runID): timed out waiting for \(target.rawValue) (status \(now)\(pending))")
        }
        try report(state)
    }

    func report(_ state: RunState) throws {
        if output.json { Output.json(ListCommand.row(state)) } else { Output.line("\(runID)  \(state.status.rawValue)") }
        let ok: Bool
        switch target {
        case .completed: ok = state.status == .completed
        case .waiting: ok = state.status == .waiting
        case .terminal: ok = true
        }
        if !ok { throw ExitCode(1) }
    }

    /// state.json, where a read that races a replacement on a shared filesystem (ENOENT,
    /// ESTALE) counts as "not yet", never as an error.
    static func read(_ spool: Spool, _ id: String) throws -> RunState? {
        do {
            return try spool.readState(id)
        } catch let e as SpoolError where e.errno == ENOENT || e.errno == ESTALE || e.code == .notFound {
            return nil
        }
    }

    /// Whether `runs/ID/retry` was dropped and not yet taken: the run's failure is about to
    /// be retried, so it is no answer (`cairn retry RUN && cairn wait RUN` must not return the
    /// old failure).
    static func retryPending(_ spool: Spool, _ id: String) -> Bool {
        DurableFile.exists(spool.run(id).directory.appending("retry"))
    }

    /// The state when the wait is over (the target, or a terminal state that rules it out).
    static func settled(_ s: RunState?, _ target: WaitTarget, retryPending: Bool = false) -> RunState? {
        guard let s else { return nil }
        if s.status == .failed && retryPending { return nil }
        switch target {
        case .waiting: return s.status == .waiting || s.status.isTerminal ? s : nil
        case .completed, .terminal: return s.status.isTerminal ? s : nil
        }
    }
}
