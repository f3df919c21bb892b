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
        var unreadable = 0
        for id in ids {
            let state: RunState
            do {
                guard let s = try spool.readState(id) else { throw SpoolError(.io, path: spool.run(id).stateFile.string, "missing") }
                state = s
            } catch {
                // Listed, not hidden: a run whose state cannot be read is a run to look at.
                unreadable += 1
                Output.warn("runs/\(id)/state.json: \(Output.printable(String(describing: error))) (`cairn fsck --repair` rebuilds it from the journal)")
                guard status == nil, workflow == nil else { continue }
                if output.json {
                    rows.append(["run": .string(id), "status": .null, "error": ["type": "unreadable_state", "message": .string(String(describing: error))]])
                } else {
                    Output.line("\(id)  \(Output.red("unknown"))  (state.json unreadable)")
                }
                continue
            }
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
        if unreadable > 0 { throw ExitCode(1) }
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
