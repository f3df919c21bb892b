import Cairn
import CairnDaemon
import CairnTesting
import Foundation
import Synchronization
import Testing

/// Reads a timer queue's firings into a list the test can look at.
final class Firings: Sendable {
    private final class Seen: Sendable { let dates = Mutex<[Date]>([]) }
    private let seen = Seen()
    private let reader: Task<Void, Never>

    init(_ q: TimerQueue) {
        let seen = self.seen
        reader = Task { for await d in q.fired { seen.dates.withLock { $0.append(d) } } }
    }

    deinit { reader.cancel() }

    var all: [Date] { seen.dates.withLock { $0 } }

    /// Waits (real time, bounded) until `n` firings were seen.
    func wait(for n: Int, timeout: Duration = .seconds(30)) async throws {
        let start = ContinuousClock.now
        while all.count < n {
            if ContinuousClock.now - start > timeout { throw Timeout(expected: n, seen: all.count) }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    struct Timeout: Error { var expected: Int, seen: Int }
}

@Suite struct TimerQueueTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func firesAtTheDeadlineAndNotBefore() async throws {
        let clock = ManualClock(now: t0)
        let q = TimerQueue(clock: clock)
        let f = Firings(q)
        q.arm(t0.addingTimeInterval(10))
        try await clock.waitForSleepers(1)
        clock.advance(by: .milliseconds(9_999))
        // Still asleep on the clock: nothing can have fired.
        #expect(clock.pendingSleepers == 1 && q.deadline == t0.addingTimeInterval(10))
        clock.advance(by: .milliseconds(1))
        try await f.wait(for: 1)
        #expect(f.all == [t0.addingTimeInterval(10)])
        #expect(q.deadline == nil && clock.pendingSleepers == 0)
        #expect(clock.sleepDeadlines == [t0.addingTimeInterval(10)])
    }

    @Test func anEarlierDeadlineReplacesTheSleepAndTheSameOneIsANoOp() async throws {
        let clock = ManualClock(now: t0)
        let q = TimerQueue(clock: clock)
        let f = Firings(q)
        q.arm(t0.addingTimeInterval(60))
        try await clock.waitForSleepers(1)
        q.arm(t0.addingTimeInterval(60))
        q.arm(t0.addingTimeInterval(5))
        try await waitFor { clock.sleepDeadlines.count == 2 && clock.pendingSleepers == 1 }
        #expect(clock.sleepDeadlines == [t0.addingTimeInterval(60), t0.addingTimeInterval(5)])
        clock.advance(by: .seconds(5))
        try await f.wait(for: 1)
        clock.advance(by: .seconds(600))
        // The replaced 60 s sleep was cancelled: it never fires.
        try await Task.sleep(for: .milliseconds(50))
        #expect(f.all == [t0.addingTimeInterval(5)])
        // Armed again after it came (the same deadline as before is a new arming).
        q.arm(t0.addingTimeInterval(5))
        try await f.wait(for: 2)
        #expect(f.all == [t0.addingTimeInterval(5), t0.addingTimeInterval(5)])
    }

    @Test func cancelledItNeverFires() async throws {
        let clock = ManualClock(now: t0)
        let q = TimerQueue(clock: clock)
        let f = Firings(q)
        q.arm(t0.addingTimeInterval(1))
        try await clock.waitForSleepers(1)
        q.cancel()
        try await waitFor { clock.pendingSleepers == 0 }
        clock.advance(by: .seconds(10))
        try await Task.sleep(for: .milliseconds(50))
        #expect(f.all.isEmpty && q.deadline == nil)
    }

    /// The scheduler and the timer queue together, as the daemon wires them: a run sleeping
    /// 90 s is advanced when the manual clock reaches its due time, not before.
    @Test func theSchedulerOverTheTimerQueueWakesASleepingRunOnTime() async throws {
        let clock = ManualClock(now: t0)
        let q = TimerQueue(clock: clock)
        var s = Scheduler(limits: SchedulerLimits())
        var started: [String] = []
        func apply(_ actions: [Scheduler.Action]) {
            for a in actions {
                if case .advance(let id) = a { started.append(id) }
                if case .setTimer(let at) = a { q.arm(at) }
            }
        }
        apply(s.handle(.learned("a", RunInfo(workflow: "w")), now: clock.now()))
        apply(s.handle(.wake("a"), now: clock.now()))
        apply(s.handle(.advanced("a", .success(waiting(until: t0.addingTimeInterval(90)))), now: clock.now()))
        try await clock.waitForSleepers(1)
        var it = q.fired.makeAsyncIterator()
        clock.advance(by: .seconds(89))
        #expect(clock.pendingSleepers == 1 && started == ["a"])
        clock.advance(by: .seconds(1))
        let deadline = try #require(await it.next())
        apply(s.handle(.timerFired(deadline), now: clock.now()))
        #expect(started == ["a", "a"] && q.deadline == nil && s.pendingTimers == 0)
    }
}

/// Waits (real time, bounded) until `condition` holds.
func waitFor(timeout: Duration = .seconds(30), _ condition: () -> Bool) async throws {
    let start = ContinuousClock.now
    while !condition() {
        if ContinuousClock.now - start > timeout { throw Firings.Timeout(expected: 1, seen: 0) }
        try await Task.sleep(for: .milliseconds(1))
    }
}
