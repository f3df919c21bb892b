import ArgumentParser
import CairnSpool
import Foundation

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List runs, one line each: id, status, workflow, last change, what it waits for.",
        discussion: """
            With --status, only the runs the status index lists are read (the cost follows the
            matching runs, not the spool's size).

            Examples:
              cairn ls --status waiting
              cairn ls --workflow triage-ticket --json | jq -r '.[].run'
            """
    )

    @Option(name: .long, help: "queued, running, waiting, completed, failed or cancelled.", transform: StatusArgument.parse)
    var status: StatusArgument?

    @Option(name: .long, help: "Only runs of this workflow type.")
    var workflow: String?

    @OptionGroup var options: SpoolOptions
    @OptionGroup var output: JSONOption

    func run() throws {
        let spool = try options.open()
        let ids: [String]
        if let status { ids = try spool.indexedRuns(status.status) } else { ids = try spool.runIDs() }
        var rows: [JSONValue] = []
        for id in ids {
            guard let state = try? spool.readState(id) else { continue }
            if let status, state.status != status.status { continue }
            if let workflow, state.workflow != workflow { continue }
            if output.json {
                rows.append(Self.row(state))
            } else {
                var line = "\(id)  \(Output.status(state.status))  \(state.workflow)  \(Timestamp.format(state.updatedAt))"
                if let w = state.waitingFor { line += "  " + Describe.waitingShort(w) }
                if let e = state.error, state.status == .failed { line += "  " + Output.red(Output.printable(e.type)) }
                Output.line(line)
            }
        }
        if output.json { Output.json(.array(rows)) }
    }

    static func row(_ s: RunState) -> JSONValue {
        var o: [String: JSONValue] = [
            "run": .string(s.run), "status": .string(s.status.rawValue), "workflow": .string(s.workflow),
            "updated_at": .string(Timestamp.format(s.updatedAt)),
        ]
        if let w = s.waitingFor { o["waiting_for"] = w.json }
        if let e = s.error { o["error"] = (try? JSONValue(encoding: e)) ?? .null }
        return .object(o)
    }
}
