import Cairn
import Foundation
import Synchronization

/// A clock that moves only when told: tests run days of durable timers and retry backoffs
/// without sleeping. With `autoAdvance`, a sleep jumps the clock to its deadline at once.
public final class ManualClock: CairnClock {
    private struct Sleeper {
        var deadline: Date
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now: Date
        var sleepers: [UInt64: Sleeper] = [:]
        var nextID: UInt64 = 0
        var sleeps: [Date] = []
    }

    private let state: Mutex<State>
    /// Whether every sleep jumps the clock to its deadline at once (set at creation).
    public let autoAdvance: Bool

    /// A clock at `now` (a fixed instant in 2027 by default) that moves only by `advance`,
    /// or by each sleep when `autoAdvance` is true.
    public init(now: Date = Date(timeIntervalSince1970: 1_800_000_000), autoAdvance: Bool = false) {
        self.state = Mutex(State(now: now))
        self.autoAdvance = autoAdvance
    }

    /// The clock's current time.
    public func now() -> Date { state.withLock { $0.now } }

    /// Every deadline a sleep was asked for, in order.
    public var sleepDeadlines: [Date] { state.withLock { $0.sleeps } }

    /// Returns when the clock reaches `deadline`: at once if it has (or, with `autoAdvance`,
    /// after moving it there), else when `advance` gets there. Throws `CancellationError`
    /// when the task is cancelled.
    public func sleep(until deadline: Date) async throws {
        let id: UInt64? = state.withLock { s in
            s.sleeps.append(deadline)
            if deadline <= s.now { return nil }
            if autoAdvance {
                s.now = deadline
                return nil
            }
            s.nextID += 1
            return s.nextID
        }
        guard let id else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let resumeNow = state.withLock { s -> Bool in
                    if deadline <= s.now || Task.isCancelled { return true }
                    s.sleepers[id] = Sleeper(deadline: deadline, continuation: c)
                    return false
                }
                if resumeNow {
                    if Task.isCancelled { c.resume(throwing: CancellationError()) } else { c.resume() }
                }
            }
        } onCancel: {
            let s = state.withLock { $0.sleepers.removeValue(forKey: id) }
            s?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves time forward, waking every sleeper whose deadline has come.
    public func advance(by duration: Duration) {
        advance(to: now().addingTimeInterval(duration.seconds))
    }

    /// Moves the clock to `date` (never backwards) and wakes every sleep due by then.
    public func advance(to date: Date) {
        let due = state.withLock { s -> [Sleeper] in
            if date > s.now { s.now = date }
            let ready = s.sleepers.filter { $0.value.deadline <= s.now }
            for k in ready.keys { s.sleepers.removeValue(forKey: k) }
            return Array(ready.values)
        }
        for s in due { s.continuation.resume() }
    }

    /// How many sleeps are waiting.
    public var pendingSleepers: Int { state.withLock { $0.sleepers.count } }

    /// Waits (without blocking a thread) until `count` sleeps are waiting; throws after
    /// `timeout` of real time, so that a test fails with a message instead of hanging. The
    /// default is long (120 s) because it only matters when something is wrong: a test suite
    /// whose other tests hold Swift Testing's few cooperative threads (2 on a 2-core machine)
    /// in blocking waits can delay the task under test for tens of seconds — 30 s was missed
    /// twice in a full run beside a fuzz run and a soak, with nothing wrong.
    public func waitForSleepers(_ count: Int, timeout: Duration = .seconds(120)) async throws {
        let start = ContinuousClock.now
        while pendingSleepers < count {
            if ContinuousClock.now - start > timeout {
                throw SleepersTimedOut(expected: count, found: pendingSleepers, timeout: timeout)
            }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    /// `waitForSleepers` gave up: fewer sleeps than expected were waiting when it timed out.
    public struct SleepersTimedOut: Error, CustomStringConvertible {
        /// How many sleeps were awaited, how many were waiting, and how long it waited.
        public var expected: Int, found: Int, timeout: Duration
        /// The failure, in a sentence.
        public var description: String { "timed out after \(timeout) waiting for \(expected) sleeps on the manual clock (\(found) waiting)" }
    }
}
