import ArgumentParser
import CairnSpool
import Foundation

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List runs, one line each: id, status, workflow, last change, what it waits for.",
        discussion: prose("""
            On a terminal: a header, aligned columns, ages ("3m ago"), newest first. Piped:
            one plain line per run, the run id first, no header (for grep, awk and cut).
            With --status, only the runs the status index lists are read (the cost follows the
            matching runs, not the spool's size).

            Examples:
              cairn ls --status waiting --status failed
              cairn ls --since 1h --limit 20
              cairn ls -o wide
              cairn ls --workflow triage-ticket --json | jq -r '.[].run'
            """)
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case plain, wide, json
    }

    @Option(name: .long, help: "queued, running, waiting, completed, failed or cancelled (repeat, or comma-separate, for several).")
    var status: [String] = []

    /// --status's values, comma lists split.
    var statuses: [RunStatus] { status.flatMap { $0.split(separator: ",") }.compactMap { RunStatus(rawValue: String($0).trimmingCharacters(in: .whitespaces)) } }

    @Option(name: .long, help: "Only runs of this workflow type.")
    var workflow: String?

    @Option(name: .long, help: "Only runs changed within this long (e.g. 30m, 2d).")
    var since: DurationArgument?

    @Option(name: .long, help: "At most this many runs (the newest).")
    var limit: Int?

    @Option(name: [.customShort("o"), .long], help: "plain, wide (adds steps, tokens, submitted) or json.")
    var format: Format = .plain

    @OptionGroup var options: SpoolOptions
    @OptionGroup var output: JSONOption

    func validate() throws {
        if let limit, limit < 1 { throw ValidationError("--limit must be 1 or more") }
        for v in status.flatMap({ $0.split(separator: ",") }) where RunStatus(rawValue: String(v).trimmingCharacters(in: .whitespaces)) == nil {
            throw ValidationError(StatusArgument.Unknown(value: String(v)).description)
        }
    }

    func run() throws {
        let spool = try options.open()
        let json = output.json || format == .json
        var ids: [String] = []
        if status.isEmpty { ids = try spool.runIDs() } else { for s in Set(statuses) { ids += try spool.indexedRuns(s) } }
        let wanted = Set(statuses)
        let cutoff = since.map { Date().addingTimeInterval(-$0.duration.seconds) }
        var states: [RunState] = []
        var unreadable = 0
        for id in Set(ids).sorted() {
            let state: RunState
            do {
                guard let s = try spool.readState(id) else { throw SpoolError(.io, path: spool.run(id).stateFile.string, "missing") }
                state = s
            } catch {
                // Listed, not hidden: a run whose state cannot be read is a run to look at.
                unreadable += 1
                Output.warn("runs/\(id)/state.json: \(Output.printable(String(describing: error))) (`cairn fsck --repair` rebuilds it from the journal)")
                guard wanted.isEmpty, workflow == nil else { continue }
                states.append(RunState(run: id, workflow: "", status: .queued, updatedAt: .distantPast, error: ErrorInfo(type: "unreadable_state", message: String(describing: error))))
                continue
            }
            if !wanted.isEmpty, !wanted.contains(state.status) { continue }
            if let workflow, state.workflow != workflow { continue }
            if let cutoff, state.updatedAt < cutoff { continue }
            states.append(state)
        }
        let terminal = isatty(STDOUT_FILENO) == 1
        // Newest first on a terminal, with --limit, or in wide form; piped plain lines keep
        // the id order they always had.
        if terminal || limit != nil || format == .wide { states.sort { ($0.updatedAt, $0.run) > ($1.updatedAt, $1.run) } }
        if let limit { states = Array(states.prefix(limit)) }
        if json {
            Output.json(.array(states.map { $0.error?.type == "unreadable_state" ? ["run": .string($0.run), "status": .null, "error": ["type": "unreadable_state", "message": .string($0.error?.message ?? "")]] : Self.row($0) }))
        } else if terminal || format == .wide {
            table(states, spool: spool, wide: format == .wide)
        } else {
            for state in states {
                if state.error?.type == "unreadable_state" {
                    Output.line("\(state.run)  \(Output.red("unknown"))  (state.json unreadable)")
                    continue
                }
                var line = "\(state.run)  \(Output.status(state.status))  \(state.workflow)  \(Timestamp.format(state.updatedAt))"
                if let w = state.waitingFor { line += "  " + Describe.waitingShort(w) }
                if let e = state.error, state.status == .failed { line += "  " + Output.red(Output.printable(e.type)) }
                Output.line(line)
            }
        }
        if unreadable > 0 { throw ExitCode(1) }
    }

    /// Aligned columns under a header (widths from the plain text, colour added after).
    func table(_ states: [RunState], spool: Spool, wide: Bool) {
        let now = Date()
        var header = ["RUN", "STATUS", "WORKFLOW", "CHANGED"]
        if wide { header += ["STEPS", "TOKENS", "SUBMITTED"] }
        header.append("WAITING FOR / ERROR")
        var rows: [[String]] = []
        var statuses: [RunStatus?] = []
        for s in states {
            if s.error?.type == "unreadable_state" {
                rows.append([s.run, "unknown", "?", "?"] + (wide ? ["", "", ""] : []) + ["state.json unreadable"])
                statuses.append(nil)
                continue
            }
            var row = [s.run, s.status.rawValue, s.workflow, Self.age(now.timeIntervalSince(s.updatedAt))]
            if wide {
                let submitted = (try? spool.readRun(s.run)).map { Self.age(now.timeIntervalSince($0.submittedAt)) } ?? "?"
                row += [String(s.counters.steps), s.tokens?["total"]?.intValue.map(String.init) ?? "-", submitted]
            }
            var last = s.waitingFor.map(Describe.waitingShort) ?? ""
            if let e = s.error, s.status == .failed { last = Output.printable(e.type) }
            row.append(Output.printable(last))
            rows.append(row)
            statuses.append(s.status)
        }
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String], status: RunStatus?) -> String {
            cells.enumerated().map { i, c in
                let padded = i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
                if i == 1, let status { return padded.replacingOccurrences(of: c, with: Output.status(status)) }
                if i == 1, status == nil, c == "unknown" { return padded.replacingOccurrences(of: c, with: Output.red(c)) }
                return padded
            }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        Output.line(line(header, status: nil))
        for (r, st) in zip(rows, statuses) { Output.line(line(r, status: st)) }
    }

    /// "just now", "42s ago", "3m ago", "5h ago", "2d ago".
    static func age(_ seconds: TimeInterval) -> String {
        let s = Int(max(0, seconds))
        if s < 5 { return "just now" }
        if s < 60 { return "\(s)s ago" }
        if s < 3600 { return "\(s / 60)m ago" }
        if s < 86400 { return "\(s / 3600)h ago" }
        return "\(s / 86400)d ago"
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
