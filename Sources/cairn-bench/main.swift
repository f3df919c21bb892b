import CSystemShims
import Cairn
import CairnSpool
import Foundation
import Logging
import SystemPackage

// cairn-bench: prints the figures docs/benchmarks.md records. Run with `make bench`
// (release build). Uses a spool under $CAIRN_BENCH_DIR (default: ./.bench, same disk as
// the checkout) and the cairn-fixtures binary beside this one for the daemon figures.

let benchRoot = ProcessInfo.processInfo.environment["CAIRN_BENCH_DIR"] ?? FileManager.default.currentDirectoryPath + "/.bench"
try? FileManager.default.removeItem(atPath: benchRoot)
try FileManager.default.createDirectory(atPath: benchRoot, withIntermediateDirectories: true)
let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path

func ms(_ s: Double) -> String { String(format: "%.3f ms", s * 1000) }
func percentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    return s[min(s.count - 1, Int((Double(s.count - 1) * p).rounded()))]
}
func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

print("cairn-bench — \(ProcessInfo.processInfo.processorCount) cores, spool in \(benchRoot)")
let fixtures = binDir + "/cairn-fixtures"
let longSteps = Int(ProcessInfo.processInfo.environment["CAIRN_BENCH_LONG_STEPS"] ?? "100000")!

// `cairn-bench decode JOURNAL_DIR`: the cost of reading a journal, in parts.
if CommandLine.arguments.dropFirst().first == "decode", CommandLine.arguments.count > 2 {
    try benchDecode(CommandLine.arguments[2])
    exit(0)
}

// `cairn-bench long`: only the long-run figures.
if CommandLine.arguments.dropFirst().first == "long" {
    try benchLongRun(fixtures: fixtures, root: benchRoot + "/long", steps: longSteps)
    try? FileManager.default.removeItem(atPath: benchRoot)
    exit(0)
}

// 1. The floor: plain C write + fsync + rename + directory fsync.
let floorDir = benchRoot + "/floor"
try FileManager.default.createDirectory(atPath: floorDir, withIntermediateDirectories: true)
let n = 500
let floor = cairn_fsync_rename_floor(floorDir, Int32(n), 400) / Double(n)
print("floor (C: write 400 B, fsync, rename, fsync dir):   \(ms(floor)) per file")

// 2. DurableFile.write (the same sequence, in Swift, through tmp/).
let spool = try Spool.create(at: FilePath(benchRoot + "/spool"))
let payload: JSONValue = ["kind": "step", "name": "bench", "value": .string(String(repeating: "x", count: 300))]
var t0 = now()
for i in 0..<n {
    try spool.durable.write(json: payload, to: spool.root.appending("dw-\(i).json"), mode: .noReplace)
}
let durable = (now() - t0) / Double(n)
print("DurableFile.write (Swift, tmp/ → rename NOREPLACE): \(ms(durable)) per file (\(String(format: "%.2f", durable / floor))× the floor)")

// 3. Engine: a workflow of N no-op steps (one journal record each).
let steps = 300
let wf = AnyWorkflow(name: "bench") { ctx, _ in
    for i in 0..<steps { let _: Int = try await ctx.step("s\(i)") { _ in i } }
    return .int(Int64(steps))
}
var quiet = Logger(label: "bench")
quiet.logLevel = .error
let engine = Engine(spool: spool, registry: WorkflowRegistry([wf]), logger: quiet)
let run = try spool.createRun(.init(workflow: "bench", input: nil)).id
t0 = now()
_ = try await engine.advance(run)
let perStep = (now() - t0) / Double(steps)
print("engine step (live, 1 record each):                   \(ms(perStep)) per step (\(String(format: "%.2f", perStep / floor))× the floor), \(Int(1 / perStep)) steps/s")
// Replay of the same journal: a completed run short-circuits, so replay a copy without its end.
let replayRun = try spool.createRun(.init(workflow: "bench", input: nil)).id
let src = spool.run(run).journalDirectory.string, dst = spool.run(replayRun).journalDirectory.string
for f in try Spool.list(FilePath(src)).sorted() where !f.contains("complete") {
    var e = try DurableFile.readJSON(FilePath(src + "/" + f))
    if case .object(var o) = e { o["idempotency_key"] = nil; e = .object(o) }
    try Data(e.canonicalText().utf8).write(to: URL(fileURLWithPath: dst + "/" + f))
}
t0 = now()
_ = try await engine.advance(replayRun)
let replayTotal = now() - t0
print("replay of \(steps) recorded steps (+1 live record):    \(ms(replayTotal)) total, \(String(format: "%.1f", replayTotal / Double(steps) * 1e6)) µs per step")

// 4. Drop-to-resume latency with a real daemon (inotify).
func startDaemon(_ root: String) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: fixtures)
    p.arguments = ["daemon", "--spool", root, "--log-level", "warning"]
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    return p
}
func status(_ id: String) -> RunStatus? { (try? spool.readState(id))??.status }
if FileManager.default.isExecutableFile(atPath: fixtures) {
    let daemon = try startDaemon(spool.root.string)
    usleep(500_000)
    var ids: [String] = []
    for i in 0..<60 { ids.append(try spool.createRun(.init(workflow: "gate", input: ["who": .string("b\(i)")])).id) }
    while !ids.allSatisfy({ status($0) == .waiting }) { usleep(2000) }
    var latencies: [Double] = []
    for id in ids {
        let drop = spool.run(id).approvalsDirectory.appending("go.approved").string
        let start = now()
        _ = FileManager.default.createFile(atPath: drop, contents: nil)
        while status(id) != .completed { usleep(200) }
        latencies.append(now() - start)
    }
    print("drop-to-completion (touch GATE.approved → state.json completed; replay, decision record, step, complete, result.json):")
    print("    median \(ms(percentile(latencies, 0.5))), p99 \(ms(percentile(latencies, 0.99))), max \(ms(latencies.max()!)) over \(latencies.count) runs")
    daemon.terminate()
    daemon.waitUntilExit()

    // 5. Startup with 100,000 finished runs (and 20 waiting ones).
    let bigRoot = benchRoot + "/big"
    let big = try Spool.create(at: FilePath(bigRoot))
    let count = Int(ProcessInfo.processInfo.environment["CAIRN_BENCH_RUNS"] ?? "100000")!
    t0 = now()
    for i in 0..<count {
        // Fabricated finished runs (plain writes: the figure is about reading, not writing).
        let id = String(format: "20260101-000000-000-%06d", i)
        let dir = bigRoot + "/runs/" + id
        try FileManager.default.createDirectory(atPath: dir + "/journal", withIntermediateDirectories: true)
        let state = RunState(run: id, workflow: "nap", status: .completed, counters: .init(journalEntries: 3, steps: 1), updatedAt: Date())
        try Data(state.canonicalJSON().canonicalText().utf8).write(to: URL(fileURLWithPath: dir + "/state.json"))
        big.updateIndex(id, status: .completed)
    }
    print("(fabricated \(count) finished runs in \(String(format: "%.1f", now() - t0)) s)")
    var waiting: [String] = []
    for i in 0..<20 { waiting.append(try big.createRun(.init(workflow: "gate", input: ["who": .string("w\(i)")])).id) }
    let d2 = try startDaemon(bigRoot)
    let started = now()
    while !waiting.allSatisfy({ (try? big.readState($0))??.status == .waiting }) { usleep(1000) }
    print("daemon start with \(count) finished + 20 queued runs → all 20 waiting: \(ms(now() - started)) (includes process start)")
    d2.terminate()
    d2.waitUntilExit()
    let d3 = try startDaemon(bigRoot)
    let restarted = now()
    // Restart: the 20 waiting runs are replayed once; measure until the daemon is idle again.
    usleep(200_000)
    let lsStart = now()
    let ls = Process()
    ls.executableURL = URL(fileURLWithPath: fixtures)
    ls.arguments = ["ls", "--status", "waiting", "--spool", bigRoot]
    ls.standardOutput = FileHandle.nullDevice
    try ls.run()
    ls.waitUntilExit()
    print("cairn ls --status waiting with \(count) finished runs: \(ms(now() - lsStart)) (process start included)")
    _ = restarted
    d3.terminate()
    d3.waitUntilExit()

    // 6. A long run.
    if longSteps > 0 { try benchLongRun(fixtures: fixtures, root: benchRoot + "/long", steps: longSteps) }
} else {
    print("(no \(fixtures): daemon figures skipped)")
}
try? FileManager.default.removeItem(atPath: benchRoot)
