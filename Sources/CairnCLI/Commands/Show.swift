import ArgumentParser
import CairnSpool
import Foundation

struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "A run's timeline: every journal record with time, duration, attempts, tokens and errors.",
        discussion: prose("""
            Examples:
              cairn show 20261127-091700-123-k3f9qz
              cairn show RUN --json | jq '.journal[] | select(.kind == "step")'
              cairn show RUN --tail 20   # the last 20 records (only those are read)
              cairn show RUN --since 5000     # records from position 5000 on
            """)
    )

    @Argument(help: ArgumentHelp("The run id.", valueName: "run"))
    var runID: String

    @Option(help: ArgumentHelp("Only the last N journal records.", valueName: "n"))
    var tail: Int?

    @Option(help: ArgumentHelp("Only the journal records from position SEQ on.", valueName: "seq"))
    var since: Int?

    @OptionGroup var options: SpoolOptions

    func validate() throws {
        if let tail, tail < 0 { throw ValidationError("--tail must be 0 or more") }
        if let since, since < 1 { throw ValidationError("--since must be a position, 1 or more") }
    }
    @OptionGroup var output: JSONOption

    func run() throws {
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
            let pos = String(e.seq)
            let label = Output.printable(e.name.map { "\(e.kind) \($0)" } ?? e.kind.rawValue)
            let control = e.kind == "retry" && e.name == "run"  // not an operation: never "superseded"
            let superseded = effective.contains(e.seq) || control ? "" : Output.dim(" (superseded by a run retry)")
            Output.line("  \(String(repeating: " ", count: max(0, 4 - pos.count)))\(pos)  \(Timestamp.format(e.at))  \(label.padding(toLength: max(label.count, 28), withPad: " ", startingAt: 0))  \(Describe.record(e))\(superseded)")
        }
        if let state {
            Output.line("")
            if let w = state.waitingFor, state.status == .waiting {
                for l in Describe.unblock(w, run: runID, spool: spool) { Output.line(l) }
            } else if let e = state.error, state.status == .failed {
                Output.line(Output.red("failed: \(Output.printable(e.message))") + (e.file.map { " [\(Output.printable($0))]" } ?? ""))
                Output.line("  retry: cairn retry \(runID)")
            } else if state.status == .completed {
                Output.line("result: \(spool.run(runID).resultFile.string)")
            }
        }
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
