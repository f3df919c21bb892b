import ArgumentParser
import Cairn
import CairnSpool
import Foundation
import Logging

struct AdvanceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "advance",
        abstract: "Advance one run in the foreground, without a daemon, until it finishes or waits.",
        discussion: prose("""
            Sleeps through durable timers and retry backoffs shorter than --max-sleep. Useful for
            debugging a workflow and in scripts; `cairn daemon` does this for every run.

            Examples:
              cairn advance RUN
              cairn advance RUN --max-sleep 0s     # return at the first wait
            """)
    )

    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.runs) var runID: String
    @Option(name: .customLong("max-sleep"), help: "Sleep through timers up to this long.") var maxSleep = DurationArgument(argument: "1m")!
    @OptionGroup var options: SpoolOptions
    @OptionGroup var output: JSONOption

    func run() async throws {
        let spool = try options.open()
        _ = try requireRun(spool, runID)
        var logger = Logger(label: "cairn")
        logger.logLevel = .warning
        let engine = Engine(spool: spool, registry: CLIEnvironment.workflows(for: spool), logger: logger)
        let limit = maxSleep.duration.seconds
        var outcome: AdvanceOutcome
        while true {
            outcome = try await engine.advance(runID)
            if case .waiting(let w) = outcome, w.wake == .time,
               let until = w.until, until.timeIntervalSinceNow <= limit {
                try await SystemClock().sleep(until: until)
                continue
            }
            break
        }
        let state = try spool.readState(runID)
        if output.json {
            Output.json(state.map { ListCommand.row($0) } ?? .null)
        } else {
            switch outcome {
            case .busy: throw CLIError(.failure, "\(runID): another process holds the runID (a daemon?)")
            case .unknownWorkflow(let w): throw CLIError(.failure, "\(runID): workflow '\(w)' is not registered in this binary")
            default: Output.line("\(runID)  \(state.map { Output.status($0.status) } ?? "?")" + (state?.waitingFor.map { "  " + Describe.waitingShort($0) } ?? ""))
            }
        }
        if case .failed = outcome { throw ExitCode(1) }
    }
}
