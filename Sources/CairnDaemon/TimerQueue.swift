import Cairn
import Foundation
import Synchronization

/// One task sleeping on the injected clock until the earliest due time; never a polling
/// loop. `arm(_:)` with the same deadline is a no-op; a new deadline cancels the old sleep.
/// When the deadline comes, its time goes into `fired` (once per arming).
public final class TimerQueue: Sendable {
    private struct State {
        var deadline: Date?
        var task: Task<Void, Never>?
        var generation: UInt64 = 0
    }

    private let clock: any CairnClock
    private let state = Mutex(State())
    private let continuation: AsyncStream<Date>.Continuation
    /// The deadlines that came, in order (the newest only, when nobody reads in between).
    public let fired: AsyncStream<Date>

    public init(clock: any CairnClock) {
        self.clock = clock
        (fired, continuation) = AsyncStream.makeStream(of: Date.self, bufferingPolicy: .bufferingNewest(1))
    }

    deinit {
        state.withLock { $0.task?.cancel() }
        continuation.finish()
    }

    /// The deadline armed now (nil: none, or it came).
    public var deadline: Date? { state.withLock { $0.deadline } }

    /// Sleeps until `deadline` (nil: no timer), replacing any other deadline.
    public func arm(_ deadline: Date?) {
        let old: Task<Void, Never>? = state.withLock { s in
            if s.deadline == deadline { return nil }
            let old = s.task
            s.generation &+= 1
            s.deadline = deadline
            s.task = nil
            if let deadline {
                let generation = s.generation
                s.task = Task { [clock] in
                    do { try await clock.sleep(until: deadline) } catch { return }
                    self.came(generation, deadline)
                }
            }
            return old
        }
        old?.cancel()
    }

    /// No timer until the next `arm`.
    public func cancel() { arm(nil) }

    private func came(_ generation: UInt64, _ deadline: Date) {
        let current = state.withLock { s -> Bool in
            guard s.generation == generation else { return false }
            s.deadline = nil
            s.task = nil
            return true
        }
        if current { continuation.yield(deadline) }
    }
}
