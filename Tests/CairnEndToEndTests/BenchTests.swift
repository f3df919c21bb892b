import CairnSpool
import CairnTesting
import Foundation
import Testing

/// `cairn bench`, the real binary, as a user runs it on their own disk: every workload runs
/// and reports a figure next to the floor, JSON for machines, the directory left as found.
@Suite(.serialized) struct BenchTests {
    @Test func quickBenchReportsEveryFigureAndCleansUp() async throws {
        let t = try TempSpool(prefix: "cairn-bench-test")
        let dir = t.path.appending("bench").string
        let r = try await Binary.finish(Binary.start("cairn", ["bench", "--quick", "--json", "--dir", dir]))
        #expect(r.code == 0, "\(r.stderr)")
        let report = try JSONValue.parse(Data(r.stdout.utf8))
        let figures = report["figures"]?.arrayValue ?? []
        var byKey: [String: JSONValue] = [:]
        for f in figures { if let k = f["key"]?.stringValue { byKey[k] = f } }
        let expected = ["floor", "floor_parallel", "sequential_step", "bytes_per_step", "throughput", "approval_median", "approval_p99", "restart", "script_process_start", "script_step_live", "script_step_replay", "idle_cpu"]
        #expect(Set(byKey.keys) == Set(expected), "\(byKey.keys.sorted())")
        for k in expected where k != "idle_cpu" {
            let v = byKey[k]?["value"]?.doubleValue ?? -1
            #expect(v > 0, "\(k): \(v)")
        }
        // Each time figure is compared with the floor measured in the same run.
        for k in ["sequential_step", "throughput", "approval_median", "restart", "script_step_live"] {
            #expect((byKey[k]?["vs_floor"]?.doubleValue ?? 0) > 0, "\(k) has no ratio to the floor")
        }
        #expect(report["filesystem"]?.stringValue?.isEmpty == false)
        #expect(!FileManager.default.fileExists(atPath: dir), "the bench directory is removed afterwards")

        // A directory that exists is refused (never written into, never removed).
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: dir + "/mine", contents: Data("keep".utf8))
        let again = try Binary.run("cairn", ["bench", "--quick", "--dir", dir])
        #expect(again.code == 2, "\(again.stderr)")
        #expect(again.stderr.contains("exists"), "\(again.stderr)")
        #expect(FileManager.default.fileExists(atPath: dir + "/mine"))
    }

    /// The long workloads (--long; here named with --only and quick counts): a long run and its
    /// resume after SIGKILL at the last step, and a daemon's start and `ls` over fabricated runs.
    @Test func longWorkloadsReportTheirFigures() async throws {
        let t = try TempSpool(prefix: "cairn-bench-long")
        let dir = t.path.appending("bench").string
        let r = try await Binary.finish(Binary.start("cairn", ["bench", "--quick", "--json", "--only", "long", "million", "--dir", dir]))
        #expect(r.code == 0, "\(r.stderr)")
        let figures = (try JSONValue.parse(Data(r.stdout.utf8)))["figures"]?.arrayValue ?? []
        let keys = Set(figures.compactMap { $0["key"]?.stringValue })
        #expect(keys == ["floor", "floor_parallel", "long_finish", "long_resume", "million_start", "million_ls"], "\(keys.sorted())")
        for f in figures { #expect((f["value"]?.doubleValue ?? 0) > 0, "\(f)") }
        let unknown = try Binary.run("cairn", ["bench", "--only", "nosuch", "--dir", dir])
        #expect(unknown.code == 2 && unknown.stderr.contains("no workload 'nosuch'"), "\(unknown.stderr)")
    }

    /// Ctrl-C while one of its daemons runs: the daemon is stopped, the directory removed, and
    /// it says so (before: SIGINT was ignored to the end of the run; SIGTERM left the directory
    /// and an orphaned daemon).
    @Test func anInterruptedBenchStopsItsDaemonsAndRemovesItsDirectory() async throws {
        let t = try TempSpool(prefix: "cairn-bench-int")
        let dir = t.path.appending("bench").string
        let p = try Binary.start("cairn", ["bench", "--quick", "--only", "throughput", "--dir", dir])
        try await waitUntil("the bench's daemon to start", timeout: 60) { FileManager.default.fileExists(atPath: dir + "/throughput.daemon.log") }
        let daemons = try Binary.run("/usr/bin/pgrep", ["-f", "__bench-daemon --spool \(dir)/throughput"])
        #expect(daemons.code == 0, "no daemon found: \(daemons)")
        kill(p.0.processIdentifier, SIGINT)
        try await waitUntil("the bench to exit", timeout: 60) { !p.0.isRunning }
        // A daemon left behind holds the bench's output pipes open: kill it before reading
        // them, so that a regression fails here instead of hanging the suite.
        let left = try Binary.run("/usr/bin/pgrep", ["-f", "__bench-daemon --spool \(dir)/throughput"])
        #expect(left.code == 1, "a daemon is left: \(left.stdout)")
        for pid in left.stdout.split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
        let r = await Binary.finish(p)
        #expect(r.code == 130, "\(r.code): \(r.stderr)")
        #expect(r.stderr.contains("interrupted; removed \(dir)"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir))
    }
}
