import ArgumentParser
import CairnSpool
import CairnWatch
import Foundation
import Synchronization

struct ListCommand: AsyncParsableCommand {
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
              cairn ls --watch    # then a line each time a run changes status or wait
            """)
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case plain, wide, json
    }

    @Option(name: .long, help: "queued, running, waiting, completed, failed or cancelled (repeat, or comma-separate, for several).", completion: Completions.statuses)
    var status: [String] = []

    /// --status's values, comma lists split.
    var statuses: [RunStatus] { status.flatMap { $0.split(separator: ",") }.compactMap { RunStatus(rawValue: String($0).trimmingCharacters(in: .whitespaces)) } }

    @Option(name: .long, help: "Only runs of this workflow type.", completion: Completions.workflows)
    var workflow: String?

    @Option(name: .long, help: "Only runs changed within this long (e.g. 30m, 2d).")
    var since: DurationArgument?

    @Option(name: .long, help: "At most this many runs (the newest).")
    var limit: Int?

    @Option(name: [.customShort("o"), .long], help: "plain, wide (adds steps, tokens, submitted) or json.")
    var format: Format = .plain

    @Flag(name: [.customShort("w"), .long], help: "Then print a run again each time its status or wait changes (inotify, no polling), until Ctrl-C. With --json, one JSON object per line.")
    var watch = false

    @OptionGroup var options: SpoolOptions
    @OptionGroup var output: JSONOption

    func validate() throws {
        if let limit, limit < 1 { throw ValidationError("--limit must be 1 or more") }
        for v in status.flatMap({ $0.split(separator: ",") }) where RunStatus(rawValue: String(v).trimmingCharacters(in: .whitespaces)) == nil {
            throw ValidationError(StatusArgument.Unknown(value: String(v)).description)
        }
    }

    func run() async throws {
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
        if watch {
            return try await watchRuns(spool, initial: states, unreadable: unreadable)
        }
        if json {
            Output.json(.array(states.map { $0.error?.type == "unreadable_state" ? ["run": .string($0.run), "status": .null, "error": ["type": "unreadable_state", "message": .string($0.error?.message ?? "")]] : Self.row($0) }))
        } else if terminal || format == .wide {
            table(states, spool: spool, wide: format == .wide)
        } else {
            for state in states { Output.line(plainLine(state)) }
        }
        if unreadable > 0 { throw ExitCode(1) }
    }

    /// --watch: the runs as usual (JSON: a line each), then a run each time its status, its
    /// wait or its error changes — the status index tells which run changed (every state
    /// write touches its entry), runs/ when one is new; each rescan compares the index.
    func watchRuns(_ spool: Spool, initial: [RunState], unreadable: Int) async throws {
        let json = output.json || format == .json
        let terminal = isatty(STDOUT_FILENO) == 1
        let wanted = Set(statuses)
        @Sendable func key(_ s: RunState) -> String { "\(s.status.rawValue) \(s.waitingFor.map(Describe.waitingShort) ?? "") \(s.error?.type ?? "")" }
        var widths: [Int]? = nil
        if json {
            for s in initial { Output.line(Self.row(s).compactText()) }
        } else if terminal || format == .wide {
            widths = table(initial, spool: spool, wide: format == .wide)
        } else {
            for s in initial { Output.line(plainLine(s)) }
        }
        struct Seen { var key: [String: String] = [:]; var status: [String: RunStatus] = [:]; var workflow: [String: String] = [:] }
        let seen = Mutex(Seen())
        // Every run the spool has now, so that only changes are printed (not runs that
        // --since or --limit left out of the first list).
        // The listed ones as they were listed: a change since is printed.
        let listed = Set(initial.map(\.run))
        for s in initial { seen.withLock { $0.key[s.run] = key(s); $0.status[s.run] = s.status; $0.workflow[s.run] = s.workflow } }
        for id in try spool.runIDs() where !listed.contains(id) {
            if let s = try? spool.readState(id) { seen.withLock { $0.key[id] = key(s); $0.status[id] = s.status; $0.workflow[id] = s.workflow } }
        }
        let frozenWidths = widths
        let wide = format == .wide
        let workflow = self.workflow
        let me = self
        let dirs = [(spool.runsDirectory.string, Watcher.dropMask)] + RunStatus.allCases.map { (spool.indexDirectory.appending($0.rawValue).string, Watcher.dropMask) }
        try await Follow.until(watching: dirs, rescan: .seconds(2)) { event in
            var candidates: [String] = []
            if let event, !event.name.isEmpty, event.kind != .overflow {
                candidates = [event.name]
            } else {
                // First look, a rescan or an overflow: what the index says moved, and new runs.
                var listed: [String: RunStatus] = [:]
                for st in RunStatus.allCases { for id in (try? spool.indexedRuns(st)) ?? [] { listed[id] = st } }
                let known = seen.withLock { $0.status }
                candidates = listed.filter { known[$0.key] != $0.value }.map(\.key).sorted()
                // Runs gone from the index: removed (gc), or just between two entries.
                candidates += known.keys.filter { listed[$0] == nil }.sorted()
            }
            for id in candidates where Names.isValidRunID(id) {
                guard let s = (try? spool.readState(id)) ?? nil else {
                    // Gone (cairn gc): said once, as kubectl's DELETED.
                    guard !spool.runExists(id), let old = seen.withLock({ $0.status.removeValue(forKey: id) }) else { continue }
                    let wf = seen.withLock { $0.key.removeValue(forKey: id); return $0.workflow.removeValue(forKey: id) }
                    if let workflow, wf != workflow { continue }
                    if !wanted.isEmpty, !wanted.contains(old) { continue }
                    if json {
                        Output.line(JSONValue.object(["run": .string(id), "status": .null, "removed": true]).compactText())
                    } else if let frozenWidths {
                        Output.line(Self.format([id, "removed", "", ""] + (wide ? ["", "", ""] : []) + ["(cairn gc, or deleted)"], widths: frozenWidths, status: nil))
                    } else {
                        Output.line("\(id)  removed")
                    }
                    continue
                }
                let (old, oldStatus) = seen.withLock { ($0.key[id], $0.status[id]) }
                let k = key(s)
                guard k != old else { continue }
                seen.withLock { $0.key[id] = k; $0.status[id] = s.status; $0.workflow[id] = s.workflow }
                if let workflow, s.workflow != workflow { continue }
                if !wanted.isEmpty, !wanted.contains(s.status), oldStatus.map({ !wanted.contains($0) }) ?? true { continue }
                if json {
                    Output.line(Self.row(s).compactText())
                } else if let frozenWidths {
                    let (cells, _) = me.cells(s, spool: spool, wide: wide, now: Date())
                    Output.line(Self.format(cells, widths: frozenWidths, status: s.status))
                } else {
                    Output.line(me.plainLine(s))
                }
            }
            return false
        }
        if unreadable > 0 { throw ExitCode(1) }
    }

    func plainLine(_ state: RunState) -> String {
        if state.error?.type == "unreadable_state" { return "\(state.run)  \(Output.red("unknown"))  (state.json unreadable)" }
        var line = "\(state.run)  \(Output.status(state.status))  \(state.workflow)  \(Timestamp.format(state.updatedAt))"
        if let w = state.waitingFor { line += "  " + Describe.waitingShort(w) }
        if let e = state.error, state.status == .failed { line += "  " + Output.red(Output.printable(e.type)) }
        return line
    }

    /// One run's cells in the table, and its status (nil: state.json unreadable).
    func cells(_ s: RunState, spool: Spool, wide: Bool, now: Date) -> ([String], RunStatus?) {
        if s.error?.type == "unreadable_state" {
            return ([s.run, "unknown", "?", "?"] + (wide ? ["", "", ""] : []) + ["state.json unreadable"], nil)
        }
        var row = [s.run, s.status.rawValue, s.workflow, Self.age(now.timeIntervalSince(s.updatedAt))]
        if wide {
            let submitted = (try? spool.readRun(s.run)).map { Self.age(now.timeIntervalSince($0.submittedAt)) } ?? "?"
            row += [String(s.counters.steps), s.tokens?["total"]?.intValue.map(String.init) ?? "-", submitted]
        }
        var last = s.waitingFor.map(Describe.waitingShort) ?? ""
        if let e = s.error, s.status == .failed { last = Output.printable(e.type) }
        row.append(Output.printable(last))
        return (row, s.status)
    }

    static func format(_ cells: [String], widths: [Int], status: RunStatus?) -> String {
        cells.enumerated().map { i, c in
            let padded = i == cells.count - 1 ? c : c.padding(toLength: max(widths[i], c.count), withPad: " ", startingAt: 0)
            if i == 1, let status { return padded.replacingOccurrences(of: c, with: Output.status(status)) }
            if i == 1, status == nil, c == "unknown" { return padded.replacingOccurrences(of: c, with: Output.red(c)) }
            return padded
        }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
    }

    /// Aligned columns under a header (widths from the plain text, colour added after).
    /// Returns the widths.
    @discardableResult
    func table(_ states: [RunState], spool: Spool, wide: Bool) -> [Int] {
        let now = Date()
        var header = ["RUN", "STATUS", "WORKFLOW", "CHANGED"]
        if wide { header += ["STEPS", "TOKENS", "SUBMITTED"] }
        header.append("WAITING FOR / ERROR")
        var rows: [[String]] = []
        var statuses: [RunStatus?] = []
        for s in states {
            let (row, status) = cells(s, spool: spool, wide: wide, now: now)
            rows.append(row)
            statuses.append(status)
        }
        // At least what a run id and the statuses take, so that rows printed later by
        // --watch line up under a header printed over few (or no) runs.
        var widths = header.map(\.count)
        widths[0] = max(widths[0], 26)
        widths[1] = max(widths[1], 9)
        widths[2] = max(widths[2], 12)
        widths[3] = max(widths[3], 8)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        Output.line(Self.format(header, widths: widths, status: nil))
        for (r, st) in zip(rows, statuses) { Output.line(Self.format(r, widths: widths, status: st)) }
        return widths
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
