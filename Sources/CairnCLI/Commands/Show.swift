import ArgumentParser
import Cairn
import CairnSpool
import CairnWatch
import Foundation
import Synchronization

struct ShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "A run's timeline: every journal record with time, duration, attempts, tokens and errors.",
        discussion: prose("""
            Examples:
              cairn show 20261127-091700-123-k3f9qz
              cairn show RUN --json | jq '.journal[] | select(.kind == "step")'
              cairn show RUN --tail 20   # the last 20 records (only those are read)
              cairn show RUN --since 5000     # records from position 5000 on
              cairn show RUN --follow   # then each record as it lands, until the run ends
            """)
    )

    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.runs)
    var runID: String

    @Option(help: ArgumentHelp("Only the last N journal records.", valueName: "n"))
    var tail: Int?

    @Option(help: ArgumentHelp("Only the journal records from position SEQ on.", valueName: "seq"))
    var since: Int?

    @Flag(name: [.customShort("f"), .long], help: "Then print each record as it lands (inotify, no polling) until the run ends.")
    var follow = false

    @Flag(name: .customLong("no-pager"), help: "Print straight to the terminal ($CAIRN_PAGER, else $PAGER, else less, is used on a terminal otherwise).")
    var noPager = false

    @OptionGroup var options: SpoolOptions

    func validate() throws {
        if let tail, tail < 0 { throw ValidationError("--tail must be 0 or more") }
        if let since, since < 1 { throw ValidationError("--since must be a position, 1 or more") }
        if follow && output.json { throw ValidationError("--follow prints text; for JSON, follow the journal's files (docs/spool-format.md)") }
    }
    @OptionGroup var output: JSONOption

    func run() async throws {
        let spool = try options.open()
        let record = try requireRun(spool, runID)
        let state: RunState?
        var stateProblem: String? = nil
        do {
            state = try spool.readState(runID)
            if state == nil { stateProblem = "missing" }
        } catch {
            state = nil
            stateProblem = String(describing: error)
        }
        let journal = spool.journal(runID)
        Pager.start(disabled: noPager || follow)
        let entries: [JournalEntry]
        let start: JournalEntry?
        var total: Int? = nil
        if tail != nil || since != nil {
            // A window: only the files that hold it are read (a long run's journal is not).
            let last = try journal.lastPosition()
            let from = max(since ?? 1, tail.map { last - $0 + 1 } ?? 1, 1)
            entries = from <= last ? try journal.records(in: from...last) : []
            start = try journal.records(in: 1...1).first
            total = last
        } else {
            entries = try journal.load()
            start = entries.first
        }
        if output.json {
            var o: [String: JSONValue] = ["run": try JSONValue(encoding: record), "journal": .array(try entries.map { try JSONValue(encoding: $0) })]
            if let total { o["journal_records"] = .int(Int64(total)) }
            // The run's trace (docs/operations.md, "Traces"): derived from its id, whoever traced it.
            o["trace_id"] = .string(RunTracing.traceID(runID: runID))
            if let state { o["state"] = try JSONValue(encoding: state) }
            if let stateProblem { o["state_error"] = .string(stateProblem) }
            Output.json(.object(o))
            return
        }
        Output.line("\(Output.bold("run")) \(record.id)")
        Output.line("  workflow   \(record.workflow)" + (start?.data?["version"]?.stringValue.map { " (\(Self.version($0)))" } ?? ""))
        Output.line("  submitted  \(Timestamp.format(record.submittedAt)) by \(record.submittedBy.user ?? String(record.submittedBy.uid))" + (record.idempotencyKey.map { ", idempotency key \(Output.printable($0))" } ?? ""))
        if let p = record.parent { Output.line("  parent     \(p.run) (child '\(Output.printable(p.name))')") }
        if let from = record.continuedFrom { Output.line("  continues  \(from) (it ended with continueAsNew)") }
        if let next = entries.last(where: { $0.kind == .continueAsNew })?.data?["run"]?.stringValue { Output.line("  continued  as \(next)") }
        if let stateProblem {
            Output.line("  status     \(Output.red("unknown")): state.json \(Output.printable(stateProblem)) (`cairn fsck --repair` rebuilds it from the journal)")
        }
        if let state {
            Output.line("  status     \(Output.status(state.status)), updated \(Timestamp.format(state.updatedAt)); \(Output.count(state.counters.steps, "step")), \(Output.count(state.counters.retries, "retry", "retries")), \(Output.count(state.counters.executions, "execution"))")
            if let t = state.tokens {
                Output.line("  tokens     \(t["input"]?.intValue ?? 0) in, \(t["output"]?.intValue ?? 0) out" + ((t["saved"]?.intValue ?? 0) > 0 ? "; \(t["saved"]!.intValue!) saved by replay" : ""))
            }
        }
        Output.line("")
        if let total, let first = entries.first, first.seq > 1 {
            Output.line(Output.dim("  … positions 1–\(first.seq - 1) of \(total) not shown"))
        }
        // A run-level retry supersedes records before it: every record that can supersede one
        // in a window ending at the journal's end is in the window.
        let effective = Set(Journal.effective(entries).map(\.seq))
        for e in entries {
            Self.printRecord(e, superseded: !effective.contains(e.seq))
        }
        let final = follow ? try await followRecords(spool, after: entries.last?.seq ?? 0) : state
        if let state = final {
            Output.line("")
            if let w = state.waitingFor, state.status == .waiting {
                for l in Describe.unblock(w, run: runID, spool: spool) { Output.line(l) }
            } else if let e = state.error, state.status == .failed {
                Output.line(Output.red("failed: \(Output.printable(e.message))") + (e.file.map { " [\(Output.printable($0))]" } ?? ""))
                Output.line("  retry: cairn retry \(runID)")
            } else if state.status == .completed {
                let short = Self.shortResult(spool, runID)
                Output.line("result: \(short)")
                if short.hasSuffix("…") { Output.line(Output.dim("  (whole: \(spool.run(runID).resultFile.string))")) }
            }
        }
    }

    static func printRecord(_ e: JournalEntry, superseded: Bool) {
        let pos = String(e.seq)
        let label = Output.printable(e.name.map { "\(e.kind) \($0)" } ?? e.kind.rawValue)
        let control = e.kind == "retry" && e.name == "run"  // not an operation: never "superseded"
        let mark = !superseded || control ? "" : Output.dim(" (superseded by a run retry)")
        Output.line("  \(String(repeating: " ", count: max(0, 4 - pos.count)))\(pos)  \(Timestamp.format(e.at))  \(label.padding(toLength: max(label.count, 28), withPad: " ", startingAt: 0))  \(Describe.record(e))\(mark)")
    }

    /// --follow: each record after position `after` as it lands, and a line each time the
    /// run starts waiting for something new, until the run has ended. Returns its last state.
    func followRecords(_ spool: Spool, after: Int) async throws -> RunState? {
        let id = runID
        let journal = spool.journal(id)
        let printed = Mutex(after)
        let lastWait = Mutex<String?>(nil)
        let last = Mutex<RunState?>(nil)
        let dirs = [(journal.directory.string, Watcher.dropMask), (spool.run(id).directory.string, Watcher.dropMask)]
        try await Follow.until(watching: dirs, rescan: .seconds(1)) { _ in
            // The state first: records written before it ended are all there by then.
            let state = try? spool.readState(id)
            let end = try journal.lastPosition()
            let from = printed.withLock { $0 } + 1
            if from <= end {
                for e in try journal.records(in: from...end) { Self.printRecord(e, superseded: false) }
                printed.withLock { $0 = end }
            }
            guard let state = state ?? nil else { return false }
            last.withLock { $0 = state }
            if state.status == .waiting, let w = state.waitingFor {
                let short = Describe.waitingShort(w)
                if lastWait.withLock({ $0 }) != short {
                    lastWait.withLock { $0 = short }
                    Output.line(Output.dim("        … waiting for \(short) (cairn why \(id))"))
                }
            } else {
                lastWait.withLock { $0 = nil }
            }
            return state.status.isTerminal
        }
        return last.withLock { $0 }
    }

    /// The result on one line, cut at 200 characters.
    static func shortResult(_ spool: Spool, _ id: String) -> String {
        guard let data = FileManager.default.contents(atPath: spool.run(id).resultFile.string) else { return "(result.json unreadable)" }
        let text = ((try? JSONValue.parse(data))?.compactText() ?? String(decoding: data.prefix(400), as: UTF8.self)).trimmingCharacters(in: .whitespacesAndNewlines)
        return Output.printable(text.count > 200 ? String(text.prefix(200)) + "…" : text)
    }

    /// A workflow version for people: a script's (`script:MTIME`) is the script file's
    /// modification time.
    static func version(_ v: String) -> String {
        if v.hasPrefix("script:"), let t = Double(v.dropFirst(7)) {
            return "script modified \(Timestamp.format(Date(timeIntervalSince1970: t)))"
        }
        return "version \(v)"
    }
}
