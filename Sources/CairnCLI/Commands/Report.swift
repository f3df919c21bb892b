import ArgumentParser
import CairnSpool
import Foundation
import Synchronization
import SystemPackage

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write a static HTML report of runs: an index, and a page per run with its timeline.",
        discussion: prose("""
            No server and no JavaScript: open DIR/index.html in a browser, or serve DIR with any
            web server. The index lists the runs with status, age, what each waits for and
            tokens; each run's page has a timeline chart (SVG) of its steps, waits, retries and
            LLM calls with their durations, the approval request with the exact command or
            file drop that decides it, and the result or the error. Files are replaced
            atomically. `cairn daemon --report-dir DIR` keeps such a report current.

            Examples:
              cairn report --out /var/www/cairn
              cairn report RUN --out /tmp/r && xdg-open /tmp/r/RUN.html
            """)
    )

    @Argument(help: ArgumentHelp("Runs to report (default: every run; the index lists those reported).", valueName: "run"), completion: Completions.runs) var runs: [String] = []
    @Option(name: .long, help: ArgumentHelp("The directory to write (made if missing).", valueName: "dir"), completion: .directory) var out: String
    @OptionGroup var options: SpoolOptions

    func run() throws {
        let spool = try options.open()
        let ids = runs.isEmpty ? try spool.runIDs() : runs
        for id in runs { _ = try requireRun(spool, id) }
        let report = try Report(spool: spool, directory: out)
        let progress = Progress(total: ids.count, what: "runs")
        var failed = 0
        var states: [RunState] = []
        for id in ids {
            let (written, state) = report.writeRun(id)
            if !written { failed += 1 }
            if let state { states.append(state) }
            progress.step()
        }
        progress.done()
        if !report.writeIndex(states: states) { failed += 1 }
        // Each failure was named on stderr; a report with holes is not a success (cron, CI).
        guard failed == 0 else { throw CLIError(.failure, "\(Output.count(failed, "file")) of the report could not be written in \(report.directory.string)") }
        Output.line("\(report.directory.string)/index.html")
    }
}

/// A progress line on a terminal's stderr for long work over many runs (`fsck`, `gc`,
/// `report`, `bench`'s million runs): never when stderr is piped, nor for fewer than 200, redrawn at most 5 times a
/// second.
final class Progress: @unchecked Sendable {
    private var total: Int
    let what: String
    private var done_ = 0
    private var last = Date.distantPast
    private var drawn = false
    private let terminal = isatty(STDERR_FILENO) == 1

    init(total: Int, what: String) {
        self.total = total
        self.what = what
    }

    func step() { update(done_ + 1, of: total) }

    func update(_ n: Int, of total: Int) {
        done_ = n
        self.total = total
        guard terminal, total >= 200, Date().timeIntervalSince(last) > 0.2 else { return }
        last = Date()
        drawn = true
        FileHandle.standardError.write(Data("\r\(n)/\(total) \(what)".utf8))
    }

    func done() {
        if drawn { FileHandle.standardError.write(Data("\r\(total)/\(total) \(what)\n".utf8)) }
    }
}

/// The static HTML report.
struct Report: Sendable {
    let spool: Spool
    let directory: FilePath

    /// What a page that could not be written does: a warning on stderr (`cairn report`), or
    /// the daemon's log and error counter (`--report-dir`).
    let failed: @Sendable (_ file: String, _ error: any Error) -> Void

    /// The directory, judged and held open (what is written goes there, whatever happens to
    /// the path later).
    let output: OutputDirectory

    init(spool: Spool, directory: String, flag: String = "--out", failed: @escaping @Sendable (_ file: String, _ error: any Error) -> Void = { Output.warn("\($0): cannot write: \($1)") }) throws {
        output = try OutputDirectory.trusted(directory, flag: flag, create: true, spool: spool)
        self.directory = output.given
        self.spool = spool
        self.failed = failed
    }

    /// HTML-escaped, control characters shown escaped; line breaks kept (for `<pre>`).
    static func h(_ s: String) -> String {
        s.split(separator: "\n", omittingEmptySubsequences: false).map { escapeLine(String($0)) }.joined(separator: "\n")
    }

    static func escapeLine(_ s: String) -> String {
        var out = ""
        for c in Names.printable(s) {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }

    static let style = """
        body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2327;background:#fbfbfa}
        h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
        table{border-collapse:collapse;width:100%;background:#fff}
        th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e3e0;vertical-align:top}
        th{font-weight:600;background:#f1f1ee}code,pre{font:12px/1.4 ui-monospace,monospace}
        pre{background:#fff;border:1px solid #e3e3e0;padding:10px;overflow:auto;white-space:pre-wrap}
        .status{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
        .completed{background:#dcf5e3;color:#146c2e}.failed{background:#fde2e1;color:#a4161a}
        .waiting,.queued,.running{background:#fff3cd;color:#7a5b00}.cancelled{background:#e9e9e6;color:#555}
        .meta{color:#666}.ask{border-left:4px solid #e0a800;background:#fff;padding:10px 14px}
        a{color:#0b57d0;text-decoration:none}a:hover{text-decoration:underline}
        """

    static func page(_ title: String, _ body: String) -> String {
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>\(h(title))</title><style>\(style)</style></head><body>\(body)</body></html>\n"
    }

    static func age(_ d: Date) -> String { ListCommand.age(Date().timeIntervalSince(d)) }

    /// Writes one file of the report; false (and `failed` told) when it could not.
    @discardableResult
    func write(_ name: String, _ html: String) -> Bool {
        do {
            try output.writing { dir in
                try DurableFile(tmpDirectory: dir).write(Data(html.utf8), to: dir.appending(name), durability: .atomicOnly)
            }
            return true
        } catch {
            failed("\(directory.string)/\(name)", OutputError(output.describe(error)))
            return false
        }
    }

    /// The index of these runs' states (newest change first).
    func writeIndex(states: [RunState]) -> Bool {
        var states = states
        states.sort { ($0.updatedAt, $0.run) > ($1.updatedAt, $1.run) }
        var rows = ""
        for s in states {
            let waits = s.waitingFor.map { Self.h(Describe.waitingShort($0)) } ?? (s.status == .failed ? Self.h(s.error?.type ?? "") : "")
            let tokens = s.tokens?["total"]?.intValue.map(String.init) ?? "–"
            rows += "<tr class=\"run\"><td><a href=\"\(Self.h(s.run)).html\"><code>\(Self.h(s.run))</code></a></td><td><span class=\"status \(s.status.rawValue)\">\(s.status.rawValue)</span></td><td>\(Self.h(s.workflow))</td><td title=\"\(Timestamp.format(s.updatedAt))\">\(Self.age(s.updatedAt))</td><td>\(waits)</td><td>\(tokens)</td></tr>\n"
        }
        let counts = RunStatus.allCases.compactMap { st -> String? in
            let n = states.filter { $0.status == st }.count
            return n == 0 ? nil : "\(n) \(st.rawValue)"
        }.joined(separator: ", ")
        return write("index.html", Self.page("Cairn runs", """
            <h1>Cairn runs</h1><p class="meta">\(Self.h(spool.root.string)) · \(counts.isEmpty ? "no runs" : counts) · written \(Timestamp.format(Date()))</p>
            <table id="runs"><tr><th>Run</th><th>Status</th><th>Workflow</th><th>Changed</th><th>Waiting for / error</th><th>Tokens</th></tr>
            \(rows)</table>
            """))
    }

    /// One bar or mark of the timeline.
    struct Bar {
        var label: String
        var kind: String  // step, llm, wait, retry, mark
        var start: Date
        var end: Date
        var detail: String
    }

    static func bars(_ entries: [JournalEntry], now: Date) -> [Bar] {
        var bars: [Bar] = []
        var open: [String: JournalEntry] = [:]
        for e in entries {
            let name = e.name ?? ""
            switch e.kind.rawValue {
            case "step", "llm":
                let ms = e.durationMs ?? 0
                let start = e.startedAt ?? e.at.addingTimeInterval(-Double(ms) / 1000)
                let failed = e.error != nil
                bars.append(Bar(label: "\(e.kind.rawValue) \(name)", kind: failed ? "failed" : e.kind.rawValue, start: start, end: e.at,
                                detail: "\(Output.duration(ms: ms))" + (e.attempt.map { $0 > 1 ? ", attempt \($0)" : "" } ?? "") + (failed ? ", failed: \(e.error?.message ?? "")" : "")))
            case "approval", "event", "sleep", "child":
                let key = "\(e.kind.rawValue) \(name)"
                if e.phase?.rawValue == "requested" || e.phase?.rawValue == "started" {
                    open[key] = e
                } else if let began = open.removeValue(forKey: key) {
                    let who = e.decidedBy.map { " by \($0.user ?? String($0.uid))" } ?? ""
                    bars.append(Bar(label: key, kind: "wait", start: began.at, end: e.at, detail: (e.decision?.rawValue ?? "done") + who + ", " + Output.duration(ms: Int(e.at.timeIntervalSince(began.at) * 1000))))
                }
            case "retry":
                bars.append(Bar(label: "retry \(name)", kind: "retry", start: e.at, end: e.at, detail: e.error?.message ?? "retry"))
            default:
                bars.append(Bar(label: name.isEmpty ? e.kind.rawValue : "\(e.kind.rawValue) \(name)", kind: "mark", start: e.at, end: e.at, detail: e.kind.rawValue))
            }
        }
        // Waits still open run to now.
        for (key, began) in open.sorted(by: { $0.value.seq < $1.value.seq }) {
            bars.append(Bar(label: key + " (waiting)", kind: "wait open", start: began.at, end: now, detail: "waiting, \(Output.duration(ms: Int(now.timeIntervalSince(began.at) * 1000))) so far"))
        }
        return bars.sorted { $0.start < $1.start }
    }

    static func svg(_ bars: [Bar]) -> String {
        guard let t0 = bars.map(\.start).min(), let t1 = bars.map(\.end).max() else { return "<p class=\"meta\">No records yet.</p>" }
        let span = max(t1.timeIntervalSince(t0), 0.001)
        let labelW = 260.0, chartW = 640.0, rowH = 22.0
        let height = Double(bars.count) * rowH + 30
        let colours = ["step": "#3b82f6", "llm": "#8b5cf6", "wait": "#f59e0b", "wait open": "#fbbf24", "retry": "#ef4444", "failed": "#ef4444", "mark": "#6b7280"]
        var out = "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(labelW + chartW + 20))\" height=\"\(Int(height))\" role=\"img\" aria-label=\"timeline\" font-family=\"system-ui,sans-serif\" font-size=\"12\">"
        // Axis: 0 and the span.
        out += "<line x1=\"\(labelW)\" y1=\"\(height - 18)\" x2=\"\(labelW + chartW)\" y2=\"\(height - 18)\" stroke=\"#ccc\"/>"
        out += "<text x=\"\(labelW)\" y=\"\(height - 4)\" fill=\"#666\">0</text><text x=\"\(labelW + chartW)\" y=\"\(height - 4)\" fill=\"#666\" text-anchor=\"end\">\(h(Output.duration(ms: Int(span * 1000))))</text>"
        for (i, b) in bars.enumerated() {
            let y = Double(i) * rowH + 4
            let x = labelW + b.start.timeIntervalSince(t0) / span * chartW
            let w = max(3, b.end.timeIntervalSince(b.start) / span * chartW)
            let colour = colours[b.kind] ?? "#6b7280"
            out += "<g class=\"bar \(b.kind.replacingOccurrences(of: " ", with: "-"))\"><title>\(h(b.label)): \(h(b.detail))</title>"
            out += "<text x=\"4\" y=\"\(y + 14)\" fill=\"#1d2327\">\(h(String(b.label.prefix(38))))</text>"
            out += "<rect x=\"\(String(format: "%.1f", x))\" y=\"\(y + 3)\" width=\"\(String(format: "%.1f", w))\" height=\"\(rowH - 8)\" rx=\"3\" fill=\"\(colour)\"/>"
            out += "</g>"
        }
        return out + "</svg>"
    }

    /// A run's page, and the state it showed; false when it could not be written (a run that
    /// is gone is no failure).
    @discardableResult
    func writeRun(_ id: String) -> (written: Bool, state: RunState?) {
        guard let record = try? spool.readRun(id) else { return (true, nil) }
        let state = (try? spool.readState(id)) ?? nil
        let entries = (try? spool.journal(id).load()).map { Journal.effective($0) } ?? []
        let status = state?.status.rawValue ?? "unknown"
        var body = "<p><a href=\"index.html\">← all runs</a></p><h1><code>\(Self.h(id))</code> <span class=\"status \(status)\">\(status)</span></h1>"
        body += "<p class=\"meta\">\(Self.h(record.workflow)) · submitted \(Timestamp.format(record.submittedAt)) by \(Self.h(record.submittedBy.user ?? String(record.submittedBy.uid)))"
        if let s = state {
            body += " · \(Output.count(s.counters.steps, "step")), \(Output.count(s.counters.retries, "retry", "retries")), \(Output.count(s.counters.executions, "execution"))"
            if let t = s.tokens { body += " · tokens \(t["input"]?.intValue ?? 0) in, \(t["output"]?.intValue ?? 0) out" + ((t["saved"]?.intValue ?? 0) > 0 ? ", \(t["saved"]!.intValue!) saved by replay" : "") }
        }
        body += "</p>"
        if let s = state, s.status == .waiting, let w = s.waitingFor {
            let lines = Describe.unblock(w, run: id, spool: spool).map { Output.printable($0) }
            var request = ""
            if let gate = w.gate, let req = try? DurableFile.readJSON(spool.run(id).approvalsDirectory.appending("\(gate).request.json")) {
                request = "<pre class=\"request\">\(Self.h(req.canonicalText()))</pre>"
            }
            body += "<h2>Waiting for \(Self.h(Describe.waitingShort(w)))</h2><div class=\"ask\" id=\"unblock\"><pre>\(Self.h(lines.joined(separator: "\n")))</pre></div>\(request)"
        }
        body += "<h2>Timeline</h2>" + Self.svg(Self.bars(entries, now: Date()))
        if let s = state, s.status == .completed, let data = FileManager.default.contents(atPath: spool.run(id).resultFile.string) {
            let text = (try? JSONValue.parse(data))?.canonicalText() ?? String(decoding: data.prefix(65536), as: UTF8.self)
            body += "<h2>Result</h2><pre id=\"result\">\(Self.h(String(text.prefix(65536))))</pre>"
        } else if let s = state, s.status == .failed, let e = s.error {
            body += "<h2>Error</h2><pre id=\"error\">\(Self.h("\(e.type): \(e.message)"))</pre><p>Retry: <code>cairn retry \(Self.h(id)) --spool \(Self.h(spool.root.string))</code></p>"
        }
        body += "<h2>Records</h2><table><tr><th>#</th><th>At</th><th>Record</th><th></th></tr>"
        for e in entries.suffix(500) {
            body += "<tr><td>\(e.seq)</td><td><code>\(Timestamp.format(e.at))</code></td><td>\(Self.h(e.name.map { "\(e.kind) \($0)" } ?? e.kind.rawValue))</td><td>\(Self.h(Describe.record(e)))</td></tr>"
        }
        body += "</table>"
        return (write("\(Names.fileSafe(id)).html", Self.page("\(id) — Cairn", body)), state)
    }
}

/// `cairn daemon --report-dir`: the report kept current — a run's page and the index within
/// a second of an advance that changed the run (one write for a burst), the index from the
/// states this keeper last read (not every run's state.json again). One task writes
/// everything: every page first, in the background, so that a large spool does not hold the
/// daemon's start; then what changed, each second; a page or index that could not be written
/// (a full disk) again every 15 s until it is. An advance only notes its run: the page is
/// not built in the advance's slot, and an older rendering can never be renamed over a newer.
final class ReportKeeper: Sendable {
    let report: Report
    private struct State {
        var pending: Set<String> = []
        var indexFailed = false
        var failedPages: Set<String> = []
        var states: [String: RunState] = [:]
    }
    private let state = Mutex(State())

    init(report: Report) { self.report = report }

    /// Every run's page, then the index; then what changed, and the retries, until cancelled.
    func run() async {
        for id in (try? report.spool.runIDs()) ?? [] {
            if Task.isCancelled { return }
            page(id)
        }
        index()
        var lastRetry = ContinuousClock.now
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            let retry = ContinuousClock.now - lastRetry >= .seconds(15)
            if retry { lastRetry = .now }
            let (pages, indexDue) = state.withLock { s in
                var pages = s.pending
                s.pending = []
                if retry { pages.formUnion(s.failedPages) }
                return (pages, !pages.isEmpty || (retry && s.indexFailed))
            }
            for id in pages.sorted() { page(id) }
            if indexDue { index() }
        }
    }

    /// After an advance that changed run `id`: written within a second by `run()`.
    func changed(_ id: String) {
        _ = state.withLock { $0.pending.insert(id) }
    }

    func page(_ id: String) {
        let (ok, read) = report.writeRun(id)
        state.withLock { s in
            if ok { s.failedPages.remove(id) } else { s.failedPages.insert(id) }
            s.states[id] = read
        }
    }

    /// The index from the states kept; a run gc removed drops out (a directory listing, no
    /// file read), a run not seen yet is read.
    func index() {
        let ids = Set((try? report.spool.runIDs()) ?? [])
        let unseen = state.withLock { s in
            s.states = s.states.filter { ids.contains($0.key) }
            return ids.subtracting(s.states.keys)
        }
        var read: [String: RunState] = [:]
        for id in unseen { if let st = (try? report.spool.readState(id)) ?? nil { read[id] = st } }
        let states = state.withLock { s in
            s.states.merge(read) { _, new in new }
            return Array(s.states.values)
        }
        let ok = report.writeIndex(states: states)
        state.withLock { $0.indexFailed = !ok }
    }
}
