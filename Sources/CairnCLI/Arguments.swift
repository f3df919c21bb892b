import ArgumentParser
import Cairn
import CairnSpool
import Logging

/// A duration option: a number and a unit, `250ms`, `90s`, `15m`, `2h`, `7d` (decimals allowed:
/// `1.5h`), the syntax of `DurationText`. The parser refuses anything else with its standard
/// error, which names the option; help shows a default as it was written (`30s`).
struct DurationArgument: ExpressibleByArgument, Sendable {
    let duration: Duration
    let text: String

    init?(argument: String) {
        guard let d = DurationText.parse(argument) else { return nil }
        duration = d
        text = argument
    }

    var defaultValueDescription: String { text }

    /// What TAB offers: a few common durations (any other is typed as it is).
    static var defaultCompletionKind: CompletionKind { .list(["30s", "5m", "15m", "1h", "2h", "1d", "7d", "30d"]) }
}

/// `cairn wait --for`: the state to wait for.
enum WaitTarget: String, ExpressibleByArgument, CaseIterable, Sendable {
    case completed, waiting, terminal
}

/// `cairn daemon --log-format`.
enum LogFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case human, json
}

/// `cairn daemon --log-level`: swift-log's levels by their names.
enum LogLevelArgument: String, ExpressibleByArgument, CaseIterable, Sendable {
    case trace, debug, info, notice, warning, error, critical

    var level: Logger.Level { Logger.Level(rawValue: rawValue)! }
}

/// `cairn ls --status`: a run status. A bad value is refused by the parser with
/// "unknown status 'x' (queued, running, …)" after its standard "The value 'x' is invalid for
/// '--status <status>'".
struct StatusArgument: ExpressibleByArgument, Sendable {
    let status: RunStatus

    init?(argument: String) {
        guard let s = RunStatus(rawValue: argument) else { return nil }
        status = s
    }

    static var allValueStrings: [String] { RunStatus.allCases.map(\.rawValue) }

    struct Unknown: Error, CustomStringConvertible {
        let value: String
        var description: String { "unknown status '\(value)' (\(StatusArgument.allValueStrings.joined(separator: ", ")))" }
    }

    /// The `transform:` of `--status`, for the message above.
    static func parse(_ text: String) throws -> StatusArgument {
        guard let s = StatusArgument(argument: text) else { throw Unknown(value: text) }
        return s
    }
}
