import Cairn
import CairnSpool
import Foundation
import SystemPackage

/// The long-run figures (issue: a 100,000-step agent): a run of `steps` no-op steps (~200-byte
/// values) under a real daemon — time to finish, the journal's bytes and blocks on disk,
/// SIGKILL at step 50,000 and at step 99,999 → restart → the next step's body, and `cairn show
/// --tail 20` of the finished run.
func benchLongRun(fixtures: String, root: String, steps: Int) throws {
    let spool = try Spool.create(at: FilePath(root))
    // CAIRN_BENCH_SEGMENT_RECORDS=N: cairn.json's journal_segment_records (0: no segments).
    if let n = ProcessInfo.processInfo.environment["CAIRN_BENCH_SEGMENT_RECORDS"].flatMap(Int64.init) {
        let file = spool.root.appending("cairn.json")
        guard case .object(var o) = try DurableFile.readJSON(file) else { fatalError("cairn.json") }
        o["journal_segment_records"] = .int(n)
        try spool.durable.write(json: .object(o), to: file)
    }
    print("long run: journal_segment_records \(try spool.config().journalSegmentRecords)")
    func start() throws -> (Process, Int64) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: fixtures)
        p.arguments = ["daemon", "--spool", root, "--log-level", "warning"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        let t = wallNanoseconds()
        try p.run()
        return (p, t)
    }
    func state(_ id: String) -> RunState? { (try? spool.readState(id)) ?? nil }
    func waitFor(_ what: String, timeout: Double = 3600, _ done: () -> Bool) throws {
        let deadline = now() + timeout
        while !done() {
            guard now() < deadline else { throw SpoolError(.invalid, "timed out waiting for \(what)") }
            usleep(2000)
        }
    }

    // 1. A whole run: time to finish, bytes on disk.
    var (daemon, _) = try start()
    let t0 = now()
    let run = try spool.createRun(.init(workflow: "long", input: ["steps": .int(Int64(steps))])).id
    try waitFor("the long run to complete") { state(run)?.status == .completed }
    let finish = now() - t0
    let disk = FilesystemCheck.diskUsage(spool.run(run).journalDirectory.string)
    print("long run: \(steps) steps finished in \(String(format: "%.1f", finish)) s (\(ms(finish / Double(steps))) per step, submit to state.json completed)")
    print("    journal: \(disk.files) files, \(disk.bytes) bytes of content, \(disk.blocks) bytes of blocks: \(disk.blocks / steps) bytes on disk per step (\(disk.bytes / steps) of content)")

    // 2. `cairn show --tail 20` of it (warm cache; the page cache cannot be dropped here),
    //    once the run's writes are on disk (not racing the kernel's writeback of them).
    sync()
    usleep(1_000_000)
    for args in [["--version"], ["show", run, "--tail", "20"], ["show", run]] {
        var times: [Double] = []
        var status: Int32 = 0
        for _ in 0..<5 {
            // posix_spawn and waitpid: Foundation's Process.waitUntilExit polls, and added
            // ~40 ms to every figure here.
            let (seconds, code) = try timedRun(fixtures, args == ["--version"] ? args : args + ["--spool", root])
            times.append(seconds)
            status = code
        }
        print("    cairn \(args.joined(separator: " ").replacingOccurrences(of: run, with: "RUN")): \(status == 0 ? ms(times.min()!) : "not supported (exit \(status))") (best of 5, warm, process start included\(args == ["--version"] ? ": the floor of any command" : ""))")
    }

    // 3. SIGKILL while step 50,000's body runs (50,000 recorded), restart, time to that body
    //    running again; then the same at step 99,999.
    let markers = root + "/markers"
    try FileManager.default.createDirectory(atPath: markers, withIntermediateDirectories: true)
    let holds = [steps / 2, steps - 1]
    for k in holds { _ = FileManager.default.createFile(atPath: markers + "/hold-\(k)", contents: nil) }
    let held = try spool.createRun(.init(workflow: "long", input: ["steps": .int(Int64(steps)), "hold_at": .array(holds.map { .int(Int64($0)) }), "markers": .string(markers)])).id
    for k in holds {
        try waitFor("step \(k) to be reached") { FileManager.default.fileExists(atPath: markers + "/reached-\(k)") }
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
        try FileManager.default.removeItem(atPath: markers + "/hold-\(k)")
        let (d, started) = try start()
        daemon = d
        try waitFor("step \(k) to resume", timeout: 600) { FileManager.default.fileExists(atPath: markers + "/resumed-\(k)") }
        let resumed = Int64(try String(contentsOfFile: markers + "/resumed-\(k)", encoding: .utf8).split(separator: "\n").last!)!
        print("    SIGKILL at step \(k) (\(k) recorded) → restart → step \(k)'s body runs: \(ms(Double(resumed - started) / 1e9)) (daemon process start included)")
    }
    try waitFor("the held run to complete") { state(held)?.status == .completed }
    daemon.terminate()
    daemon.waitUntilExit()
}

/// Runs PATH ARGS with stdout and stderr to /dev/null: (seconds from spawn to exit, exit code).
func timedRun(_ path: String, _ args: [String]) throws -> (Double, Int32) {
    var actions: posix_spawn_file_actions_t = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
    defer { for a in argv { free(a) } }
    var pid: pid_t = 0
    let start = now()
    guard posix_spawn(&pid, path, &actions, nil, argv, environ) == 0 else { throw SpoolError(.io, path: path, errno: errno, "cannot spawn") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (now() - start, (status >> 8) & 0xff)
}

func wallNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
