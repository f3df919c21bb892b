import CairnSpool
import CairnTesting
import Foundation
import Testing

/// SPEC §1.7: an idle daemon with waiting runs uses no CPU. Machine-dependent (it measures
/// the daemon's CPU time and context switches), so a suite of its own, one test at a time.
@Suite(.serialized) struct IdleTests {
    struct Unreadable: Error, CustomStringConvertible {
        var description: String
    }

    /// utime + stime of the process, in clock ticks; throws if /proc cannot tell.
    static func cpuTicks(_ pid: Int32) throws -> Int {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { throw Unreadable(description: "cannot read /proc/\(pid)/stat") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After "(comm)": state is field 3; utime and stime are fields 14 and 15.
        guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else {
            throw Unreadable(description: "unexpected /proc/\(pid)/stat: \(stat)")
        }
        return user + system
    }

    /// Context switches per thread of the process; throws if /proc cannot tell.
    static func contextSwitches(_ pid: Int32) throws -> [String: Int] {
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
        var out: [String: Int] = [:]
        for t in tasks {
            // A thread may exit between the listing and the read.
            guard let s = try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/status", encoding: .utf8) else { continue }
            // Voluntary switches only: a thread that sleeps and wakes (a polling loop) makes
            // them; a busy machine preempting a thread makes the other kind (a full suite's
            // load once counted 53 against 20 alone).
            var fields = 0
            for line in s.split(separator: "\n") where line.hasPrefix("voluntary_ctxt_switches") {
                guard let n = Int(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) else {
                    throw Unreadable(description: "unexpected line in /proc/\(pid)/task/\(t)/status: \(line)")
                }
                out[t, default: 0] += n
                fields += 1
            }
            if fields != 1 { throw Unreadable(description: "no context switch counts in /proc/\(pid)/task/\(t)/status") }
        }
        if out.isEmpty { throw Unreadable(description: "no thread of \(pid) could be read in /proc") }
        return out
    }

    /// The readers fail loudly rather than report an idle 0.
    @Test func theProcReadersFailWhenProcCannotTellThem() async throws {
        #expect(throws: Unreadable.self) { try Self.cpuTicks(Int32.max) }
        #expect(throws: (any Error).self) { try Self.contextSwitches(Int32.max) }
        // And the test process itself has used some CPU and switched context.
        #expect(try Self.cpuTicks(getpid()) > 0)
        #expect(try Self.contextSwitches(getpid()).values.reduce(0, +) > 0)
    }

    @Test func idleDaemonWithWaitingRunsUsesNoCPU() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        var runs: [String] = []
        for i in 0..<20 { runs.append(try t.submit("gate", input: ["who": .string("w\(i)")] as JSONValue)) }
        let sleeper = try t.submit("nap", input: 3600.0)
        for r in runs + [sleeper] { try await t.waitFor(r, .waiting) }
        try await Task.sleep(for: .microseconds(1_000_000))
        let ticks0 = try Self.cpuTicks(d.pid), cs0 = try Self.contextSwitches(d.pid)
        try await Task.sleep(for: .microseconds(20_000_000))
        let ticks1 = try Self.cpuTicks(d.pid), cs1 = try Self.contextSwitches(d.pid)
        // Threads present at both ends (an idle worker thread may exit in between).
        let switches = cs1.reduce(0) { $0 + ($1.value - (cs0[$1.key] ?? $1.value)) }
        let exited = Set(cs0.keys).subtracting(cs1.keys).count
        print("idle daemon, 21 waiting runs, 20 s: \(ticks1 - ticks0) CPU ticks (1 tick = 10 ms), \(switches) context switches over \(cs1.count) threads (\(exited) idle worker thread(s) exited)")
        #expect(ticks1 - ticks0 <= 1)
        // libdispatch's workqueue monitor (the Swift runtime on Linux) wakes its manager
        // thread once a second in every Swift process: ~20 here. A polling loop of Cairn's
        // own, even once a second, would double that.
        #expect(switches <= 30)
        // And it still wakes at once.
        try t.drop("approvals/go.approved", in: runs[0])
        try await t.waitFor(runs[0], .completed, timeout: 5)
        await d.stop()
    }

    /// A rescan advances every waiting run; each advance opens and closes the run's lock file
    /// in a watched directory. With more waiting runs than the watcher's queue holds (1,024;
    /// here 32, through a test hook) those events overflowed the queue, the overflow caused a
    /// rescan, the rescan made as many events again: a daemon with 1,000 waiting runs burned
    /// 1.6 cores for ever (`cairn bench`, idle CPU). The runtime's own dot-files are no events.
    @Test func aRescanOfMoreWaitingRunsThanTheQueueHoldsEndsIdle() async throws {
        let t = try TempSpool()
        var runs: [String] = []
        for i in 0..<100 { runs.append(try t.submit("gate", input: ["who": .string("w\(i)")] as JSONValue)) }
        let d = try await DaemonProcess(spool: t.spool, env: ["CAIRN_SIMULATE_QUEUE_LIMIT": "32"])
        for r in runs { try await t.waitFor(r, .waiting, timeout: 60) }
        try await Task.sleep(for: .microseconds(1_000_000))
        let ticks0 = try Self.cpuTicks(d.pid)
        try await Task.sleep(for: .microseconds(3_000_000))
        let ticks1 = try Self.cpuTicks(d.pid)
        print("daemon with 100 waiting runs and a watcher queue of 32, 3 s after they all wait: \(ticks1 - ticks0) CPU ticks")
        #expect(ticks1 - ticks0 <= 5, "the daemon keeps working with every run waiting (a rescan loop?)")
        try t.drop("approvals/go.approved", in: runs[0])
        try await t.waitFor(runs[0], .completed, timeout: 10)
        await d.stop()
    }
}
