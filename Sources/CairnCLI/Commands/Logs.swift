import ArgumentParser
import CairnSpool
import CairnWatch
import Foundation
import Synchronization

struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs",
        abstract: "A run's output: a script's stdout and stderr, and its LLM calls' answers as they arrived.",
        discussion: prose("""
            Reads runs/RUN/logs/: stdout.log and stderr.log (every execution appends; each
            starts with a `--- TIME execution UUID ---` line in stderr.log) and NAME.stream.jsonl
            of each LLM call, shown as text: the answer as it streamed, each attempt and its
            failure. With several logs, each part is headed `==> NAME <==`, as tail does.
            With --follow, what lands is printed as it lands (inotify, no polling) until the
            run is completed, failed or cancelled; Ctrl-C stops following earlier.

            Examples:
              cairn logs RUN
              cairn logs RUN stderr
              cairn logs RUN draft-reply --follow
            """)
    )

    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.runs) var runID: String
    @Argument(help: ArgumentHelp("stdout, stderr, or an LLM call's name (default: all of them).", valueName: "log"), completion: Completions.logs) var log: String?
    @Flag(name: [.customShort("f"), .long], help: "Keep printing what lands until the run ends.") var follow = false
    @Option(name: .customLong("rescan-interval"), help: "With --follow, also look this often (writes from other hosts of a shared filesystem; at least 100ms).") var rescanInterval = DurationArgument(argument: "1s")!
    @Flag(name: .customLong("no-pager"), help: "Print straight to the terminal (without --follow, a terminal gets $CAIRN_PAGER, else $PAGER, else less).") var noPager = false
    @OptionGroup var options: SpoolOptions

    func validate() throws {
        guard rescanInterval.duration >= .milliseconds(100) else { throw ValidationError("--rescan-interval must be at least 100ms, not \(rescanInterval.text)") }
    }

    func run() async throws {
        let spool = try options.open()
        _ = try requireRun(spool, runID)
        if let log, log.contains("/") || log.hasPrefix(".") {
            // An LLM call's log is NAME.stream.jsonl with NAME as the file-safe form of the call's
            // name (`draft reply` is draft_reply's): a path is no call's name.
            throw CLIError(.usage, "'\(Names.printable(log))' is not a log name (stdout, stderr, or an LLM call's name)")
        }
        let logs = spool.run(runID).logsDirectory.string
        let reader = LogReader(directory: logs, only: log)
        if let log, !reader.exists(log) {
            let known = reader.names()
            let list = known.isEmpty ? "it has none yet" : "it has " + known.joined(separator: ", ")
            // A name that may appear later (an LLM call not made yet) is fine to follow, while
            // the run can still make it.
            let ended = (try? spool.readState(runID))??.status.isTerminal ?? false
            if !follow || ended { throw CLIError(.notFound, "\(runID) has no log '\(Names.printable(log))' (\(list))") }
        }
        guard follow else {
            Pager.start(disabled: noPager)
            if reader.names().isEmpty && log == nil { Output.warn("\(runID) has no logs yet (logs/ is empty)") }
            for rotated in reader.rotated() { Output.warn("the earlier part of \(rotated.dropLast(2)) is in \(logs)/\(rotated) (rotated at script_log_limit)") }
            reader.printNew(final: true)
            return
        }
        let id = runID
        let runDir = spool.run(runID).directory.string
        try await Follow.until(watching: [(logs, Watcher.appendMask), (runDir, Watcher.dropMask)], rescan: rescanInterval.duration) { _ in
            // Read the state first: whatever was written before the run ended is in the
            // logs by then, so the last pass prints all of it.
            let ended = (try? spool.readState(id))??.status.isTerminal ?? false
            reader.printNew(final: ended)
            return ended
        }
    }
}

/// Reads a run's logs/ from where it stopped last time, and prints what is new.
final class LogReader: Sendable {
    let directory: String
    let only: String?
    private struct Source {
        var offset: Int = 0
        var pending = Data()
    }
    private let sources = Mutex<[String: Source]>([:])
    private let lastHeader = Mutex<String?>(nil)
    private let warned = Mutex<Set<String>>([])

    init(directory: String, only: String?) {
        self.directory = directory
        self.only = only
    }

    /// The logs there are, as people name them: stdout, stderr, then the LLM calls.
    func names() -> [String] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var out: [String] = []
        for std in ["stdout", "stderr"] where files.contains(std + ".log") { out.append(std) }
        out += files.filter { $0.hasSuffix(".stream.jsonl") && !$0.hasPrefix(".") }.map { String($0.dropLast(".stream.jsonl".count)) }.sorted()
        return out
    }

    func exists(_ name: String) -> Bool { names().contains(Self.fileName(name)) || names().contains(name) }

    static func fileName(_ name: String) -> String { name == "stdout" || name == "stderr" ? name : Names.fileSafe(name) }

    func file(_ name: String) -> String {
        directory + "/" + (name == "stdout" || name == "stderr" ? name + ".log" : Self.fileName(name) + ".stream.jsonl")
    }

    /// Rotated logs there are (`stdout.log.1`), for the note that the earlier part is there.
    func rotated() -> [String] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let wanted = only.map { [Self.fileName($0)] } ?? ["stdout", "stderr"]
        return files.filter { f in wanted.contains { f == $0 + ".log.1" } }.sorted()
    }

    /// Prints what each log gained since the last call, a chunk at a time (a log of any
    /// size costs a 64 KiB buffer and one held-back partial line of at most 1 MiB).
    /// `final`: also a last line that has no line break yet (nothing more will come).
    func printNew(final: Bool) {
        let wanted = only.map { [Self.fileName($0)] } ?? names()
        let headed = only == nil && wanted.count > 1
        for name in wanted {
            read(name, final: final) { chunk in
                guard !chunk.isEmpty else { return }
                if headed, lastHeader.withLock({ $0 }) != name {
                    let first = lastHeader.withLock { h in defer { h = name }; return h == nil }
                    Output.write((first ? "" : "\n") + "==> \(Names.printable(name)) <==\n")
                }
                Output.write(chunk, untrusted: true)
            }
        }
    }

    /// Hands the new text of one log (rendered, for an LLM stream) to `emit`, in chunks.
    private func read(_ name: String, final: Bool, _ emit: (String) -> Void) {
        let path = file(name)
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else {
            if errno == ELOOP, warned.withLock({ $0.insert(name).inserted }) { Output.warn("\(path) is a symbolic link, which the runtime never writes: not shown") }
            return
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return }
        var source = sources.withLock { $0[name] } ?? Source()
        if Int(st.st_size) < source.offset {
            // Rotated (script_log_limit: the old one is now NAME.log.1): start over.
            source = Source()
            Output.warn("\(name).log was rotated; its earlier part is in \(directory)/\(name).log.1")
        }
        let isStream = name != "stdout" && name != "stderr"
        func deliver(_ data: Data) {
            guard !data.isEmpty else { return }
            let s = String(decoding: data, as: UTF8.self)
            emit(isStream ? s.split(separator: "\n").map { Self.render(String($0)) }.joined() : s)
        }
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        var off = source.offset
        while true {
            let n = pread(fd, &buf, buf.count, off_t(off))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            off += n
            source.pending.append(contentsOf: buf[0..<n])
            // Whole lines out; the partial last one waits for the rest — unless it grew past
            // 1 MiB (a script writing without line breaks): then it goes out as it is.
            if let nl = source.pending.lastIndex(of: UInt8(ascii: "\n")) {
                deliver(source.pending[source.pending.startIndex...nl])
                source.pending = Data(source.pending[(nl + 1)...])
            }
            if !isStream && source.pending.count > 1 << 20 {
                deliver(source.pending)
                source.pending = Data()
            }
        }
        source.offset = off
        if final {
            deliver(source.pending)
            source.pending = Data()
        }
        sources.withLock { $0[name] = source }
    }

    /// One line of an LLM stream log, for people.
    static func render(_ line: String) -> String {
        guard let v = try? JSONValue.parse(Data(line.utf8)), let o = v.objectValue else { return line + "\n" }
        if let d = o["delta"]?.stringValue { return d }
        let attempt = o["attempt"]?.intValue.map { "attempt \($0)" } ?? "an attempt"
        if let status = o["status"]?.stringValue {
            let error = o["error"]?.stringValue.map { ": \($0)" } ?? ""
            let model = o["model"]?.stringValue.map { " (\($0))" } ?? ""
            let retry = o["retry_at"]?.stringValue.map { "; retry at \($0)" } ?? o["retry_in_s"]?.doubleValue.map { "; retry in \(Output.duration(ms: Int($0 * 1000)))" } ?? ""
            return "\n[\(attempt)\(model) failed: \(status)\(error)\(retry)]\n"
        }
        if let model = o["model"]?.stringValue { return "[\(attempt): \(model)]\n" }
        if o["done"]?.boolValue == true {
            let t = o["tokens"]?.objectValue
            return "\n[done: \(t?["input"]?.intValue ?? 0) tokens in, \(t?["output"]?.intValue ?? 0) out]\n"
        }
        if o["resumed"]?.boolValue == true { return "[resumed after a durable wait until \(o["after"]?.stringValue ?? "?")]\n" }
        return line + "\n"
    }
}
