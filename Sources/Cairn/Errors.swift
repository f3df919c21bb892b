import CairnSpool
import Foundation

/// An error a step body throws to control retries: `retryable: false` fails the step at
/// once. Other errors are retried per the step's RetryPolicy.
public struct StepError: Error, Sendable, CustomStringConvertible {
    /// The error's type as recorded (`StepError` unless given).
    public var type: String
    /// What went wrong, for people.
    public var message: String
    /// Whether the step's retry policy may try again.
    public var retryable: Bool

    /// An error with a message; retryable unless `retryable` is false.
    public init(_ message: String, type: String = "StepError", retryable: Bool = true) {
        self.message = message
        self.type = type
        self.retryable = retryable
    }

    /// An error that fails the step at once, without retries.
    public static func nonRetryable(_ message: String, type: String = "StepError") -> StepError {
        StepError(message, type: type, retryable: false)
    }

    /// `TYPE: MESSAGE`.
    public var description: String { "\(type): \(message)" }
}

/// A step (or LLM call, child run, compensation) failed for good; the workflow sees this,
/// the same on first execution and on replay.
public struct StepFailedError: Error, Sendable, CustomStringConvertible {
    /// The step's name.
    public var step: String
    /// How many attempts were made.
    public var attempts: Int
    /// The last attempt's error, as recorded.
    public var error: ErrorInfo

    /// The step, its attempts and the last error, in a sentence.
    public var description: String { "step '\(step)' failed after \(attempts) attempt(s): \(error.type): \(error.message)" }

    /// Operation `step` failed for good after `attempts` with `error` (for layers such as
    /// the agent layer that fail an operation of their own).
    public init(step: String, attempts: Int, error: ErrorInfo) {
        self.step = step
        self.attempts = attempts
        self.error = error
    }
}

/// The workflow's code no longer matches its journal (SPEC §1.5).
public struct NondeterminismError: Error, Sendable, CustomStringConvertible {
    /// The recorded error: `type` is `nondeterminism`, with the file, `expected` and `actual`.
    public var info: ErrorInfo
    /// An error carrying `info`.
    public init(info: ErrorInfo) { self.info = info }
    /// The message: which file recorded what, and what the code asked for.
    public var description: String { info.message }
}

/// The run was cancelled (a `cancel` file, or `cairn cancel`).
public struct RunCancelledError: Error, Sendable, CustomStringConvertible {
    /// The cancellation error.
    public init() {}
    /// "the run was cancelled".
    public var description: String { "the run was cancelled" }
}

/// A durable step timed out.
public struct StepTimeoutError: Error, Sendable, CustomStringConvertible {
    /// The step's name.
    public var step: String
    /// The limit each attempt had.
    public var timeout: Duration
    /// The step and its timeout, in a sentence.
    public var description: String { "step '\(step)' timed out after \(timeout)" }
}

/// A step body that cannot tell whether its effect happened: a request was sent and no
/// answer came (the server died or hung mid-call). An at-least-once step retries it, with
/// the same idempotency key; an at-most-once step never guesses: it stops at its
/// `uncertain` gate, exactly as when the process died between the intent and the result.
public struct StepOutcomeUnknown: Error, Sendable, CustomStringConvertible {
    /// What happened, for people (recorded with a retry, shown at the gate).
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Thrown through workflow code when the run must wait. Workflow code must not swallow
/// it; if it does, the engine still treats the run as waiting (the context remembers).
struct Suspension: Error, Sendable {
    var waitingFor: WaitingFor
}

extension ErrorInfo {
    /// Describes any error for a journal record.
    static func from(_ error: any Error) -> ErrorInfo {
        switch error {
        case let e as StepError: return ErrorInfo(type: e.type, message: e.message, retryable: e.retryable)
        case let e as StepFailedError: return ErrorInfo(type: "step_failed", message: e.description, retryable: false)
        case let e as NondeterminismError: return e.info
        case let e as StepTimeoutError: return ErrorInfo(type: "timeout", message: e.description, retryable: true)
        case let e as StepOutcomeUnknown: return ErrorInfo(type: "outcome_unknown", message: e.message, retryable: true)
        case let e as SpoolError: return ErrorInfo(type: "spool_\(e.code.rawValue)", message: e.description, file: e.path, retryable: false)
        case let e as WorkflowInputError: return ErrorInfo(type: "invalid_input", message: e.description, retryable: false)
        default: return ErrorInfo(type: String(describing: Swift.type(of: error)), message: String(describing: error))
        }
    }
}
