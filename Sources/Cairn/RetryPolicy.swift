import Foundation

/// How a step is retried: exponential backoff with jitter, a cap on attempts, and errors
/// that are never retried.
public struct RetryPolicy: Sendable, Hashable {
    /// Total attempts including the first (1 = no retries).
    public var maxAttempts: Int
    /// The wait after the first failed attempt.
    public var initialDelay: Duration
    /// The factor each later wait grows by.
    public var multiplier: Double
    /// The longest wait between two attempts.
    public var maxDelay: Duration
    /// Fraction of the delay randomised (0.2 → ±20%).
    public var jitter: Double
    /// Swift type names (`String(describing: type(of: error))`) never retried.
    public var nonRetryableErrorTypes: Set<String>

    /// A policy; the defaults are 5 attempts, waits from 1 s doubling up to 300 s, ±20% jitter.
    public init(maxAttempts: Int = 5, initialDelay: Duration = .seconds(1), multiplier: Double = 2, maxDelay: Duration = .seconds(300), jitter: Double = 0.2, nonRetryableErrorTypes: Set<String> = []) {
        precondition(maxAttempts >= 1, "maxAttempts must be at least 1")
        self.maxAttempts = maxAttempts
        self.initialDelay = initialDelay
        self.multiplier = multiplier
        self.maxDelay = maxDelay
        self.jitter = jitter
        self.nonRetryableErrorTypes = nonRetryableErrorTypes
    }

    /// 5 attempts, waits from 1 s doubling up to 5 minutes, ±20% jitter.
    public static let `default` = RetryPolicy()
    /// One attempt: no retries.
    public static let none = RetryPolicy(maxAttempts: 1)

    /// The delay after failed attempt `attempt` (1-based), before jitter:
    /// initialDelay × multiplier^(attempt-1), capped at maxDelay.
    public func baseDelay(afterAttempt attempt: Int) -> Double {
        let raw = initialDelay.seconds * pow(multiplier, Double(max(0, attempt - 1)))
        return min(raw, maxDelay.seconds)
    }

    /// The delay with jitter; `unit` is a random number in [0, 1).
    public func delay(afterAttempt attempt: Int, unit: Double) -> Double {
        let base = baseDelay(afterAttempt: attempt)
        let j = base * jitter * (unit * 2 - 1)
        return max(0, min(maxDelay.seconds, base + j))
    }

    func shouldRetry(_ error: any Error, attempt: Int) -> Bool {
        guard attempt < maxAttempts else { return false }
        if let e = error as? StepError { return e.retryable }
        if error is CancellationError { return false }
        return !nonRetryableErrorTypes.contains(String(describing: type(of: error)))
    }
}
