import ArgumentParser
import CSystemShims
import Cairn
import CairnDaemon
import CairnSpool
import Foundation
import Logging
import Synchronization
import SystemPackage

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure Cairn on this disk, next to the disk's own floor.",
        discussion: prose("""
            Runs in a new directory (--dir; default ./cairn-bench-PID, on the disk you run it
            from) and removes it afterwards. First the floor: write + fsync + rename +
            directory fsync with raw syscalls, alone and from 8 writers at once. Then, in the
            same run, Cairn's workloads on the same disk, each with its ratio to the floor: one
            run of 1,000 sequential steps, 2,000 runs of 5 steps under a daemon, an approval
            dropped by another process to the next step, SIGKILL of a daemon mid-run to the
            next step after a restart, a bash workflow's `cairn step` (live and replayed),
            bytes per step, and a daemon's idle CPU with 1,000 waiting runs.
            docs/benchmarks.md says what each figure means. Takes about a minute (--quick:
            a few seconds, smaller counts).

            Examples:
              cairn bench
              cairn bench --dir /srv/cairn-disk/bench --json > bench.json
            """)
    )

    @Option(name: .long, help: ArgumentHelp("Where to run (must not exist; default ./cairn-bench-PID).", valueName: "dir")) var dir: String?
    @Flag(name: .long, help: "Print the figures as JSON.") var json = false
    @Flag(name: .long, help: "Smaller counts: a quick look, not figures to record.") var quick = false
    @Option(name: .customLong("daemon-concurrency"), help: "The --concurrency of the daemons it starts (default: the daemon's default).") var daemonConcurrency: Int?
    @Flag(name: .long, help: "Also the long workloads: a 100,000-step run, and daemon start and `ls` with 1,000,000 finished runs (minutes, and about 12 GB).") var long = false
    @Flag(name: .long, help: "Keep the directory afterwards.") var keep = false
    @Option(name: .long, parsing: .upToNextOption, help: ArgumentHelp("Only these workloads (the floor is always measured): \((Bench.workloads + Bench.longWorkloads).joined(separator: ", ")).", valueName: "workload")) var only: [String] = []

    func validate() throws {
        let all = Bench.workloads + Bench.longWorkloads
        for w in only where !all.contains(w) {
            throw ValidationError("no workload '\(w)'; there are: \(all.joined(separator: ", "))")
        }
    }

    func run() async throws {
        let given = dir ?? "cairn-bench-\(getpid())"
        let root = Spool.absolute(given)
        if FileManager.default.fileExists(atPath: root) { throw CLIError(.usage, "\(root) exists: give --dir a path that does not exist yet") }
        // Only the last component is created (and removed afterwards): a missing parent is
        // the user's to make.
        guard mkdir(root, 0o755) == 0 else {
            throw CLIError(.failure, "\(root): cannot create (\(String(cString: strerror(errno))))")
        }
        BenchInterruption.install(root: root, keep: keep)
        defer { if !keep { try? FileManager.default.removeItem(atPath: root) } }
        var bench = try Bench(root: root, quick: quick, progress: !json)
        bench.daemonConcurrency = daemonConcurrency
        try await bench.runAll(only: only.isEmpty ? Bench.workloads + (long ? Bench.longWorkloads : []) : only)
        if json {
            Output.raw(Data((bench.report.json.canonicalText() + "\n").utf8), to: 1)
        } else {
            Output.raw(Data(bench.report.table.utf8), to: 1)
        }
    }
}

/// The daemon `cairn bench` starts: `cairn daemon` with the benchmark's workflows registered.
struct BenchDaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "__bench-daemon", abstract: "(internal) the daemon of `cairn bench`", shouldDisplay: false)

    @OptionGroup var options: SpoolOptions
    @Option(name: .long) var concurrency: Int?

    func run() async throws {
        var registry = CLIEnvironment.workflows
        for w in BenchWorkflows.all { try registry.register(w) }
        CLIEnvironment.set(workflows: registry)
        let daemon = try DaemonCommand.parse(["--spool", options.spool ?? "", "--log-level", "warning"] + (concurrency.map { ["--concurrency", String($0)] } ?? []))
        try await daemon.run()
    }
}

/// Ctrl-C or SIGTERM during `cairn bench`: the daemons it started are killed, its directory
/// removed (unless --keep), and it says so — instead of a run to the end, or a directory and
/// an orphaned daemon left behind.
enum BenchInterruption {
    static let daemons = Mutex<Set<pid_t>>([])
    nonisolated(unsafe) private static var sources: [any DispatchSourceSignal] = []

    static func install(root: String, keep: Bool) {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                let pids = daemons.withLock { $0 }
                for pid in pids {
                    kill(pid, SIGKILL)
                    var status: Int32 = 0
                    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                }
                if keep {
                    Output.raw(Data("cairn: interrupted; kept \(root)\n".utf8), to: 2)
                } else {
                    try? FileManager.default.removeItem(atPath: root)
                    Output.raw(Data("cairn: interrupted; removed \(root)\n".utf8), to: 2)
                }
                exit(128 + sig)
            }
            source.resume()
            sources.append(source)
        }
    }
}

/// One figure of the report.
struct BenchFigure {
    var key: String
    var what: String
    var value: Double
    var unit: String
    /// What the figure costs in floors: its time ÷ the floor's time for one durable write
    /// (for a rate, the 8-writer floor's rate ÷ this rate); nil: no floor to compare with.
    var ratio: Double?
    var note: String = ""
    /// The floor it is compared with, in ms (the mean of the floors measured right before
    /// and after its workload); nil: the headline floor.
    var floor: Double? = nil
}

struct BenchReport {
    var root: String
    var figures: [BenchFigure] = []

    var json: JSONValue {
        .object([
            "dir": .string(root),
            "filesystem": .string(Bench.filesystemName(root)),
            "cores": .int(Int64(ProcessInfo.processInfo.activeProcessorCount)),
            "date": .string(Timestamp.format(Date())),
            "version": .string(CairnCommand.configuration.version),
            "figures": .array(figures.map { f in
                var o: [String: JSONValue] = ["key": .string(f.key), "what": .string(f.what), "value": .double(f.value), "unit": .string(f.unit)]
                if let r = f.ratio { o["vs_floor"] = .double(r) }
                if let fl = f.floor { o["floor_ms"] = .double(fl) }
                if !f.note.isEmpty { o["note"] = .string(f.note) }
                return .object(o)
            }),
        ])
    }

    var table: String {
        var out = "cairn bench — \(root) (\(Bench.filesystemName(root)), \(ProcessInfo.processInfo.activeProcessorCount) cores)\n\n"
        let rows = figures.map { f -> (String, String, String) in
            (f.what, Bench.format(f.value, f.unit), f.ratio.map { String(format: "%.2f×", $0) + (f.floor.map { String(format: " (floor %.3f ms)", $0) } ?? "") } ?? "")
        }
        let w0 = max(4, rows.map(\.0.count).max() ?? 0), w1 = max(6, rows.map(\.1.count).max() ?? 0)
        func pad(_ s: String, _ n: Int) -> String { s + String(repeating: " ", count: max(0, n - s.count)) }
        out += pad("what", w0) + "  " + pad("figure", w1) + "  vs floor\n"
        for r in rows { out += pad(r.0, w0) + "  " + pad(r.1, w1) + "  " + r.2 + "\n" }
        let notes = figures.filter { !$0.note.isEmpty }
        if !notes.isEmpty {
            out += "\n"
            for f in notes { out += "\(f.what): \(f.note)\n" }
        }
        return out
    }
}

/// The workloads of `cairn bench`.
struct Bench {
    let root: String
    let quick: Bool
    let progress: Bool
    var report: BenchReport
    /// Seconds per durable write, one writer.
    var floor = 0.0
    /// Durable writes per second, 8 writers at once.
    var floorParallel = 0.0
    let exe = ScriptWorkflow.executablePath()
    var daemonConcurrency: Int?

    init(root: String, quick: Bool, progress: Bool) throws {
        self.root = root
        self.quick = quick
        self.progress = progress
        report = BenchReport(root: root)
    }

    func say(_ s: String) {
        if progress { Output.raw(Data("… \(s)\n".utf8), to: 2) }
    }

    mutating func add(_ key: String, _ what: String, _ value: Double, _ unit: String, ratio: Double? = nil, note: String = "") {
        report.figures.append(BenchFigure(key: key, what: what, value: value, unit: unit, ratio: ratio, note: note))
    }

    static let workloads = ["sequential", "throughput", "approvals", "restart", "scripts", "idle"]
    /// With --long (or named in --only).
    static let longWorkloads = ["long", "million"]

    mutating func runAll(only: [String]) async throws {
        try measureFloor()
        let headline = floor
        // A disk's floor drifts (a virtual disk's by 2× within a minute here): each time
        // figure is compared with the floor measured right before and right after it.
        for w in Self.workloads + Self.longWorkloads where only.contains(w) {
            let first = report.figures.count
            let before = try adjacentFloor()
            floor = before
            switch w {
            case "sequential": try await sequential()
            case "throughput": try throughput()
            case "approvals": try approvals()
            case "restart": try restart()
            case "scripts": try scripts()
            case "long": try longRun()
            case "million": try millionRuns()
            default: try idle()
            }
            let after = try adjacentFloor()
            let mean = (before + after) / 2
            for i in first..<report.figures.count where report.figures[i].unit.hasPrefix("ms") && report.figures[i].key != "script_process_start" {
                report.figures[i].ratio = report.figures[i].value / 1000 / mean
                report.figures[i].floor = mean * 1000
            }
        }
        floor = headline
    }

    /// The floor again, 100 writes, for the workload next to it.
    func adjacentFloor() throws -> Double {
        let d = root + "/floor"
        let n = 100
        let t = cairn_fsync_rename_floor(d, Int32(n), 400)
        guard t > 0 else { throw CLIError(.failure, "\(d): the floor measurement failed (\(String(cString: strerror(errno))))") }
        return t / Double(n)
    }

    // MARK: the floor

    mutating func measureFloor() throws {
        say("the floor: write + fsync + rename + directory fsync")
        let d = root + "/floor"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        let n = quick ? 100 : 500
        let t = cairn_fsync_rename_floor(d, Int32(n), 400)
        guard t > 0 else { throw CLIError(.failure, "\(d): the floor measurement failed (\(String(cString: strerror(errno))))") }
        floor = t / Double(n)
        add("floor", "floor: write 400 B + fsync + rename + dir fsync", floor * 1000, "ms", ratio: 1)
        // 8 writers at once, each in a directory of its own.
        let writers = 8, each = quick ? 50 : 200
        for i in 0..<writers { try FileManager.default.createDirectory(atPath: d + "/w\(i)", withIntermediateDirectories: true) }
        let start = Self.now()
        DispatchQueue.concurrentPerform(iterations: writers) { i in _ = cairn_fsync_rename_floor(d + "/w\(i)", Int32(each), 400) }
        floorParallel = Double(writers * each) / (Self.now() - start)
        add("floor_parallel", "floor: 8 writers at once", floorParallel, "writes/s", ratio: 1)
    }

    // MARK: in-process

    mutating func sequential() async throws {
        let steps = quick ? 200 : 1000
        say("one run of \(steps) sequential steps (in this process)")
        let spool = try Spool.create(at: FilePath(root + "/sequential"))
        var quiet = Logger(label: "bench")
        quiet.logLevel = .error
        let engine = Engine(spool: spool, registry: WorkflowRegistry(BenchWorkflows.all), logger: quiet)
        let run = try spool.createRun(.init(workflow: BenchWorkflows.Steps.name, input: ["steps": .int(Int64(steps))])).id
        let t0 = Self.now()
        _ = try await engine.advance(run)
        let per = (Self.now() - t0) / Double(steps)
        add("sequential_step", "one run, \(steps) sequential steps", per * 1000, "ms/step", ratio: per / floor,
            note: "start, \(steps) step records, complete, result.json and state.json, in-process Engine.advance")
        let disk = FilesystemCheck.diskUsage(spool.run(run).journalDirectory.string)
        let every = try spool.config().journalSegmentRecords
        add("bytes_per_step", "disk per step (journal st_blocks)", Double(disk.blocks) / Double(steps), "bytes",
            note: "\(disk.files) files, \(disk.bytes / steps) bytes of JSON per step; journal_segment_records \(every)"
                + (every > 0 && steps < every ? " (fewer steps than a segment: each record is still a file of its own, a block each; not the figure to record)" : ""))
    }

    // MARK: under a daemon

    /// `cairn __bench-daemon --spool DIR` (this executable), its output in DIR/../NAME.log.
    func startDaemon(_ spool: String) throws -> (pid: pid_t, started: Int64) {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, spool + ".daemon.log", O_WRONLY | O_CREAT | O_APPEND, 0o644)
        let args = [exe, "__bench-daemon", "--spool", spool] + (daemonConcurrency.map { ["--concurrency", String($0)] } ?? [])
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        // The bench ignores SIGINT and SIGTERM (BenchInterruption handles them); an ignored
        // signal stays ignored across exec, so the daemon gets their default back.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGTERM)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let started = BenchWorkflows.monotonic()
        let rc = posix_spawn(&pid, exe, &actions, &attr, argv, environ)
        guard rc == 0 else { throw CLIError(.failure, "\(exe): cannot start a daemon (\(String(cString: strerror(rc))))") }
        BenchInterruption.daemons.withLock { _ = $0.insert(pid) }
        return (pid, started)
    }

    func stopDaemon(_ pid: pid_t, signal: Int32 = SIGTERM) {
        BenchInterruption.daemons.withLock { _ = $0.remove(pid) }
        kill(pid, signal)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }

    func waitFor(_ what: String, timeout: Double = 600, _ done: () -> Bool) throws {
        let deadline = Self.now() + timeout
        while !done() {
            guard Self.now() < deadline else { throw CLIError(.failure, "cairn bench: timed out waiting for \(what) (the daemon's log is beside the spool in \(root))") }
            usleep(500)
        }
    }

    static func count(_ dir: String) -> Int { ((try? Spool.list(FilePath(dir))) ?? []).count }

    mutating func throughput() throws {
        let runs = quick ? 200 : 2000, steps = 5
        let concurrency = daemonConcurrency.map { "concurrency \($0)" } ?? "daemon defaults"
        say("\(runs) runs × \(steps) steps under a daemon (\(concurrency))")
        let path = root + "/throughput"
        let spool = try Spool.create(at: FilePath(path))
        for _ in 0..<runs { _ = try spool.createRun(.init(workflow: BenchWorkflows.Steps.name, input: ["steps": .int(Int64(steps))])) }
        let t0 = Self.now()
        let d = try startDaemon(path)
        defer { stopDaemon(d.pid) }
        try waitFor("\(runs) runs to complete") { Self.count(path + "/index/completed") >= runs }
        let elapsed = Self.now() - t0
        let rate = Double(runs * steps) / elapsed
        add("throughput", "\(runs) runs × \(steps) steps, \(concurrency)", rate, "steps/s", ratio: floorParallel / rate,
            note: "queued runs, then a daemon started; until every run is in index/completed (daemon start included; \(String(format: "%.0f", Double(runs) / elapsed)) runs/s)")
    }

    mutating func approvals() throws {
        let n = quick ? 20 : 100
        say("\(n) approvals dropped by another process → the next step")
        let path = root + "/approvals"
        let spool = try Spool.create(at: FilePath(path))
        let marks = root + "/approval-marks"
        try FileManager.default.createDirectory(atPath: marks, withIntermediateDirectories: true)
        var ids: [String] = []
        for i in 0..<n { ids.append(try spool.createRun(.init(workflow: BenchWorkflows.Gate.name, input: ["mark": .string(marks + "/\(i)")])).id) }
        let d = try startDaemon(path)
        defer { stopDaemon(d.pid) }
        try waitFor("\(n) runs to wait for approval") { Self.count(path + "/index/waiting") >= n }
        var latencies: [Double] = []
        for (i, id) in ids.enumerated() {
            let drop = spool.run(id).approvalsDirectory.appending("go.approved").string
            // As a person would: `touch`. The clock starts just before the file exists.
            let t0 = BenchWorkflows.monotonic()
            let fd = open(drop, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw CLIError(.failure, "\(drop): cannot create (\(String(cString: strerror(errno))))") }
            close(fd)
            let mark = marks + "/\(i)"
            try waitFor("run \(id)'s next step") { (try? String(contentsOfFile: mark, encoding: .utf8)).flatMap { Int64($0) } != nil }
            let t1 = Int64(try String(contentsOfFile: mark, encoding: .utf8))!
            latencies.append(Double(t1 - t0) / 1e9)
            // Let the run finish before the next drop: one at a time, as people approve.
            try waitFor("run \(id) to complete") { FileManager.default.fileExists(atPath: path + "/index/completed/" + id) }
        }
        let med = Self.percentile(latencies, 0.5), p99 = Self.percentile(latencies, 0.99)
        add("approval_median", "approval dropped → next step starts, median", med * 1000, "ms", ratio: med / floor, note: "touch GATE.approved by another process to the body of the step after the approval, \(n) runs one at a time")
        add("approval_p99", "approval dropped → next step starts, p99", p99 * 1000, "ms", ratio: p99 / floor)
    }

    mutating func restart() throws {
        let rounds = quick ? 3 : 10
        say("SIGKILL of a daemon mid-run → restart → the next step (\(rounds) times)")
        let path = root + "/restart"
        let spool = try Spool.create(at: FilePath(path))
        var times: [Double] = []
        for r in 0..<rounds {
            let marks = root + "/restart-marks-\(r)"
            try FileManager.default.createDirectory(atPath: marks, withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: marks + "/hold", contents: nil)
            _ = try spool.createRun(.init(workflow: BenchWorkflows.Steps.name, input: ["steps": 100, "hold_at": 50, "markers": .string(marks)]))
            let d = try startDaemon(path)
            try waitFor("step 50 to be reached") { FileManager.default.fileExists(atPath: marks + "/reached") }
            stopDaemon(d.pid, signal: SIGKILL)
            try FileManager.default.removeItem(atPath: marks + "/hold")
            let again = try startDaemon(path)
            try waitFor("step 50 to run again") { (try? String(contentsOfFile: marks + "/resumed", encoding: .utf8)).flatMap { Int64($0) } != nil }
            let t1 = Int64(try String(contentsOfFile: marks + "/resumed", encoding: .utf8))!
            times.append(Double(t1 - again.started) / 1e9)
            try waitFor("the run to complete") { Self.count(path + "/index/completed") >= r + 1 }
            stopDaemon(again.pid)
        }
        let med = Self.percentile(times, 0.5)
        add("restart", "SIGKILL mid-run → restart → next step, median", med * 1000, "ms", ratio: med / floor,
            note: "from the new daemon's spawn to the body of the step the killed one was in (50 recorded), \(rounds) times; process start included")
    }

    mutating func scripts() throws {
        let steps = quick ? 10 : 50
        say("a bash workflow: \(steps) × `cairn step s -- true`, live and replayed")
        guard FileManager.default.isExecutableFile(atPath: "/bin/bash") || FileManager.default.isExecutableFile(atPath: "/usr/bin/bash") else {
            say("no bash: script figures skipped")
            return
        }
        // The floor of a helper call from a script: bash starting a small program.
        let bash = FileManager.default.isExecutableFile(atPath: "/bin/bash") ? "/bin/bash" : "/usr/bin/bash"
        let loop = try Self.timedRun(bash, ["-c", "for i in $(seq \(steps * 4)); do /bin/true; done"]) / Double(steps * 4)
        add("script_process_start", "bash starting /bin/true (a helper call's floor)", loop * 1000, "ms",
            note: "a loop of \(steps * 4) in one bash: the fork and exec every helper call pays before it can ask anything")
        let path = root + "/scripts"
        let spool = try Spool.create(at: FilePath(path))
        let live = spool.workflowsDirectory.appending("live").string
        try "#!/usr/bin/env bash\nfor i in $(seq \(steps)); do cairn step s -- true; done\n".write(toFile: live, atomically: true, encoding: .utf8)
        let replay = spool.workflowsDirectory.appending("replay").string
        try "#!/usr/bin/env bash\nfor i in $(seq \(steps)); do cairn step s -- true; done\ncairn approval go > /dev/null\n".write(toFile: replay, atomically: true, encoding: .utf8)
        chmod(live, 0o755)
        chmod(replay, 0o755)
        let d = try startDaemon(path)
        defer { stopDaemon(d.pid) }
        usleep(200_000)
        let t0 = Self.now()
        let a = try spool.createRun(.init(workflow: "live", input: nil)).id
        try waitFor("the live script run") { Self.status(spool, a)?.isTerminal == true }
        let perLive = (Self.now() - t0) / Double(steps)
        guard Self.status(spool, a) == .completed else { throw CLIError(.failure, "cairn bench: the script run \(a) ended \(Self.status(spool, a)?.rawValue ?? "?") (see \(path)/runs/\(a)/logs/stderr.log)") }
        add("script_step_live", "bash workflow, one live `cairn step -- true`", perLive * 1000, "ms/step", ratio: perLive / floor,
            note: String(format: "%.1f× bash starting /bin/true; ", perLive / loop) + "submit to completed over \(steps) steps: each a helper call (the small client asking the daemon, when cairn-helper is installed beside cairn; else the whole binary), the command, one journal record (the script's start is spread over them)")
        let b = try spool.createRun(.init(workflow: "replay", input: nil)).id
        try waitFor("the replay script to wait") { Self.status(spool, b) == .waiting }
        let t1 = Self.now()
        _ = FileManager.default.createFile(atPath: spool.run(b).approvalsDirectory.appending("go.approved").string, contents: nil)
        try waitFor("the replayed script run") { Self.status(spool, b)?.isTerminal == true }
        let perReplay = (Self.now() - t1) / Double(steps)
        add("script_step_replay", "bash workflow, one replayed `cairn step`", perReplay * 1000, "ms/step", ratio: perReplay / floor,
            note: String(format: "%.1f× bash starting /bin/true; ", perReplay / loop) + "from the approval's drop to completed, over the \(steps) recorded steps the script replays (its start and the approval's helper spread over them)")
    }

    /// A run of 100,000 steps under a daemon: submit to completed, bytes per step, and a
    /// SIGKILL while its last step runs (99,999 recorded) → restart → that step's body.
    mutating func longRun() throws {
        let steps = quick ? 2000 : 100_000
        say("a run of \(steps) steps, then SIGKILL at its last step and a restart")
        let path = root + "/long"
        let spool = try Spool.create(at: FilePath(path))
        let d = try startDaemon(path)
        let t0 = Self.now()
        let run = try spool.createRun(.init(workflow: BenchWorkflows.Steps.name, input: ["steps": .int(Int64(steps))])).id
        try waitFor("the \(steps)-step run", timeout: 7200) { Self.count(path + "/index/completed") >= 1 }
        let finish = Self.now() - t0
        let disk = FilesystemCheck.diskUsage(spool.run(run).journalDirectory.string)
        add("long_finish", "a run of \(steps) steps, submit to completed", finish, "s", note: String(format: "%.3f ms per step; %d bytes on disk per step", finish / Double(steps) * 1000, disk.blocks / steps))
        let marks = root + "/long-marks"
        try FileManager.default.createDirectory(atPath: marks, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: marks + "/hold", contents: nil)
        _ = try spool.createRun(.init(workflow: BenchWorkflows.Steps.name, input: ["steps": .int(Int64(steps)), "hold_at": .int(Int64(steps - 1)), "markers": .string(marks)]))
        try waitFor("the last step to be reached", timeout: 7200) { FileManager.default.fileExists(atPath: marks + "/reached") }
        stopDaemon(d.pid, signal: SIGKILL)
        try FileManager.default.removeItem(atPath: marks + "/hold")
        let again = try startDaemon(path)
        defer { stopDaemon(again.pid) }
        try waitFor("the last step to run again") { (try? String(contentsOfFile: marks + "/resumed", encoding: .utf8)).flatMap { Int64($0) } != nil }
        let t1 = Int64(try String(contentsOfFile: marks + "/resumed", encoding: .utf8))!
        add("long_resume", "SIGKILL at step \(steps - 1) (\(steps - 1) recorded) → restart → its body", Double(t1 - again.started) / 1e6, "ms", note: "the whole journal read and replayed; process start included")
    }

    /// 1,000,000 finished runs (fabricated with plain writes: a run directory, state.json
    /// and the index entry each) and 20 queued ones: a daemon's start to all 20 waiting, and
    /// `cairn ls --status waiting`.
    mutating func millionRuns() throws {
        let n = quick ? 2000 : 1_000_000
        let path = root + "/million"
        let spool = try Spool.create(at: FilePath(path))
        var fs = statvfs()
        if statvfs(path, &fs) == 0 {
            let free = Double(fs.f_bavail) * Double(fs.f_frsize), need = Double(n) * 12_288
            guard free > need * 1.2, Double(fs.f_favail) > Double(n) * 3.5 else {
                throw CLIError(.failure, "cairn bench: \(n) fabricated runs need about \(Int(need / 1e9)) GB and \(n * 3) inodes; \(path) has \(Int(free / 1e9)) GB and \(fs.f_favail) free")
            }
        }
        say("fabricating \(n) finished runs (plain writes), then a daemon's start and `ls --status waiting`")
        let t0 = Self.now()
        // A count on a terminal's stderr (a million runs take minutes to make).
        let fabricated = Progress(total: n, what: "finished runs fabricated")
        let state = Data(try RunState(run: "x", workflow: BenchWorkflows.Steps.name, status: .completed, counters: .init(journalEntries: 3, steps: 1), updatedAt: Date()).canonicalJSON().canonicalText().utf8)
        for i in 0..<n {
            let id = String(format: "20260101-000000-000-%07d", i)
            let dir = path + "/runs/" + id
            guard mkdir(dir, 0o755) == 0 else { throw CLIError(.failure, "\(dir): cannot create (\(String(cString: strerror(errno))))") }
            let fd = open(dir + "/state.json", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw CLIError(.failure, "\(dir)/state.json: cannot create") }
            _ = state.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            spool.updateIndex(id, status: .completed)
            fabricated.step()
        }
        fabricated.done()
        let made = Self.now() - t0
        var waiting: [String] = []
        for _ in 0..<20 { waiting.append(try spool.createRun(.init(workflow: BenchWorkflows.Gate.name, input: [:])).id) }
        let d = try startDaemon(path)
        defer { stopDaemon(d.pid) }
        try waitFor("20 runs to wait", timeout: 600) { Self.count(path + "/index/waiting") >= 20 }
        let started = Double(BenchWorkflows.monotonic() - d.started) / 1e9
        add("million_start", "daemon start with \(n) finished + 20 queued runs → all 20 waiting", started * 1000, "ms", note: String(format: "fabricated finished runs (%.0f s to make); process start included", made))
        var times: [Double] = []
        for _ in 0..<3 { times.append(try Self.timedRun(exe, ["ls", "--status", "waiting", "--spool", path])) }
        add("million_ls", "`cairn ls --status waiting` with \(n) finished runs", (times.min() ?? 0) * 1000, "ms", note: "best of 3; process start included")
    }

    /// Runs PATH ARGS with output to /dev/null: seconds from spawn to exit.
    static func timedRun(_ path: String, _ args: [String]) throws -> Double {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        let start = now()
        guard posix_spawn(&pid, path, &actions, nil, argv, environ) == 0 else { throw CLIError(.failure, "\(path): cannot start") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return now() - start
    }

    mutating func idle() throws {
        let runs = quick ? 100 : 1000
        say("a daemon's idle CPU with \(runs) waiting runs")
        let path = root + "/idle"
        let spool = try Spool.create(at: FilePath(path))
        for _ in 0..<runs { _ = try spool.createRun(.init(workflow: BenchWorkflows.Gate.name, input: [:])) }
        let d = try startDaemon(path)
        defer { stopDaemon(d.pid) }
        try waitFor("\(runs) runs to wait") { Self.count(path + "/index/waiting") >= runs }
        usleep(500_000)
        let window = quick ? 2.0 : 10.0
        let c0 = Self.cpuSeconds(d.pid), t0 = Self.now()
        usleep(useconds_t(window * 1e6))
        let c1 = Self.cpuSeconds(d.pid), elapsed = Self.now() - t0
        add("idle_cpu", "daemon idle with \(runs) waiting runs, CPU", (c1 - c0) / elapsed * 100, "% of a core", note: "user + system time over \(Int(window)) s")
    }

    // MARK: helpers

    static func status(_ spool: Spool, _ id: String) -> RunStatus? { ((try? spool.readState(id)) ?? nil)?.status }

    static func now() -> Double { Double(BenchWorkflows.monotonic()) / 1e9 }

    static func percentile(_ xs: [Double], _ p: Double) -> Double {
        let s = xs.sorted()
        return s.isEmpty ? 0 : s[min(s.count - 1, Int((Double(s.count - 1) * p).rounded()))]
    }

    /// utime + stime of a process, in seconds.
    static func cpuSeconds(_ pid: pid_t) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return 0 }
        let f = stat[stat.index(after: close)...].split(separator: " ")
        guard f.count > 13, let u = Double(f[11]), let s = Double(f[12]) else { return 0 }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    static func filesystemName(_ path: String) -> String {
        FilesystemCheck.filesystemName(FilePath(path))
    }

    static func format(_ v: Double, _ unit: String) -> String {
        let digits = v >= 1000 ? 0 : v >= 100 ? 1 : v >= 10 ? 2 : 3
        let n = NumberFormatter()
        n.numberStyle = .decimal
        n.minimumFractionDigits = digits
        n.maximumFractionDigits = digits
        return (n.string(from: NSNumber(value: v)) ?? String(v)) + " " + unit
    }
}
