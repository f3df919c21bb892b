import ArgumentParser
import CairnSpool
import Foundation

struct SignalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signal",
        abstract: "Send an event to a run (writes events/EVENT.TIME.json atomically).",
        discussion: prose("""
            Examples:
              cairn signal RUN payment-received --data payment.json
              echo '{"ok": true}' | cairn signal RUN go --data -
            """)
    )

    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.eventRuns) var runID: String
    @Argument(help: "The event name.", completion: Completions.events) var event: String
    @Option(name: .long, help: ArgumentHelp("The event's data as a JSON file, or - for stdin (default: null).", valueName: "file|-")) var data: String?
    @OptionGroup var options: SpoolOptions

    func validate() throws {
        guard Names.isValidName(event) else { throw ValidationError("invalid event name '\(event)'") }
    }

    func run() throws {
        let spool = try options.open()
        _ = try requireRun(spool, runID)
        let state = try? spool.readState(runID)
        if let state, state.status.isTerminal {
            throw CLIError(.failure, "run \(runID) is \(state.status.rawValue): nothing will read an event; nothing was written")
        }
        let value = try data.map { try Output.readJSONArgument($0, what: "event data") } ?? .null
        let name = "\(event).\(RunID.generate()).json"
        let data = value.canonicalData()
        let limit = try spool.config().dropSizeLimit
        guard data.count <= limit else {
            throw CLIError(.failure, "the event data is \(data.count) bytes, over the limit of \(limit) (drop_size_limit in cairn.json): the daemon would refuse it")
        }
        try DurableFile.drop(data, to: spool.run(runID).eventsDirectory.appending(name))
        Output.line("events/\(name)")
        // Delivered, but maybe to nobody yet: say so rather than exit 0 in silence.
        if let state, state.status == .waiting, let w = state.waitingFor, !(w.kind == .event && w["name"]?.stringValue == event) {
            Output.warn("warning: run \(runID) is waiting for \(Describe.waitingShort(w)), not event '\(event)'; the event is kept for when the run asks for it")
        }
    }
}
