import Foundation
import CairnSpool

/// Time as the engine sees it. Injected, so tests run hours of timers in microseconds
/// (CairnTesting's ManualClock).
public protocol CairnClock: Sendable {
    /// The current time.
    func now() -> Date
    /// Returns at or after `deadline`; throws CancellationError when the task is cancelled.
    func sleep(until deadline: Date) async throws
}

extension CairnClock {
    /// Sleeps for `duration` from the clock's `now()`.
    public func sleep(for duration: Duration) async throws {
        try await sleep(until: now().addingTimeInterval(duration.seconds))
    }
}

/// The wall clock.
public struct SystemClock: CairnClock {
    /// The wall clock.
    public init() {}
    /// The current wall-clock time.
    public func now() -> Date { Date() }
    /// Sleeps with `Task.sleep` until `deadline` (at once when it has passed).
    public func sleep(until deadline: Date) async throws {
        let d = deadline.timeIntervalSinceNow
        if d > 0 { try await Task.sleep(for: .milliseconds(Int64((d * 1000).rounded(.up)))) }
    }
}

// Helpers for Cairn's own modules, `package` so that they do not leak into every importer of
// Cairn (a user's `Duration` gets only `.minutes/.hours/.days` below, which docs/workflows.md uses).
extension Duration {
    /// The duration in seconds, as a Double.
    package var seconds: Double {
        let (s, a) = components
        return Double(s) + Double(a) / 1e18
    }

    /// Parses `90s`, `15m`, `2h`, `7d`, `250ms` (SPEC §5); nil when malformed.
    package static func parse(_ text: String) -> Duration? { DurationText.parse(text) }
}

/// Durations for workflow authors: `.minutes(15)`, `.hours(2)`, `.days(7)` next to the standard `.seconds(90)`.
extension Duration {
    /// `n` minutes.
    public static func minutes(_ n: Int64) -> Duration { .seconds(n * 60) }
    /// `n` hours.
    public static func hours(_ n: Int64) -> Duration { .seconds(n * 3600) }
    /// `n` days of 24 hours.
    public static func days(_ n: Int64) -> Duration { .seconds(n * 86400) }
}
