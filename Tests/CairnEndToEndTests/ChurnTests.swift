import CairnSpool
import CairnTesting
import Foundation
import Synchronization
import Testing

/// Anyone in the group can create and delete names in a drop directory as fast as the
/// kernel allows. An outside attack did that in one waiting run's directories: the watcher's
/// unbounded queue to the daemon grew (66 → 119 MB, never given back) and an approval of
/// another run took 32–83 s. Now the queue is bounded and overflows into a rescan.
@Suite(.serialized) struct ChurnTests {
    @Test func fileChurnInOneRunDoesNotDelayAnotherRunsApproval() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        func submit(_ id: String) throws {
            let r = try Binary.run("cairn-fixtures", ["submit", "gate", "--id", id, "--input", "-", "--spool", t.spool.root.string], stdin: "{}")
            #expect(r.code == 0, "\(r.stderr)")
        }
        try submit("victim")
        try submit("other")
        try await t.waitFor("victim", .waiting)
        try await t.waitFor("other", .waiting)

        // Churn: create and remove 100 names at a time in the victim's run directory and its
        // approvals/, from two threads, for 8 s.
        let until = Date().addingTimeInterval(8)
        let ops = Mutex(0)
        let dirs = [t.spool.run("victim").directory.string, t.spool.run("victim").directory.string + "/approvals"]
        var threads: [Thread] = []
        for dir in dirs {
            let th = Thread {
                var n = 0
                while Date() < until {
                    for k in 0..<100 { let fd = open("\(dir)/churn\(k)", O_CREAT | O_WRONLY | O_CLOEXEC, 0o644); if fd >= 0 { close(fd) } }
                    for k in 0..<100 { unlink("\(dir)/churn\(k)") }
                    n += 200
                }
                ops.withLock { $0 += n }
            }
            th.start()
            threads.append(th)
        }
        try await Task.sleep(for: .seconds(3))
        let rssDuring = Self.rssKB(d.pid)
        let approved = Date()
        let a = try Binary.run("cairn-fixtures", ["approve", "other", "go", "--spool", t.spool.root.string])
        #expect(a.code == 0, "\(a.stderr)")
        try await t.waitFor("other", .completed, timeout: 10)
        let latency = Date().timeIntervalSince(approved)
        try await waitUntil("churn over", timeout: 20) { Date() > until && ops.withLock { $0 } > 0 && threads.allSatisfy { $0.isFinished } }
        // The daemon is back with nothing pending: a decision for the victim is taken at once.
        let b = try Binary.run("cairn-fixtures", ["approve", "victim", "go", "--spool", t.spool.root.string])
        #expect(b.code == 0, "\(b.stderr)")
        let after = Date()
        try await t.waitFor("victim", .completed, timeout: 10)
        let afterLatency = Date().timeIntervalSince(after)
        let rssAfter = Self.rssKB(d.pid)
        #expect(d.log.contains("event queue overflowed"), "the flood went through the bounded queue's overflow")
        print(String(format: "ChurnTests: %d file operations in 8 s in one run's directories; another run's approval completed in %.2f s during the churn, the churned run's own %.2f s after it; daemon RSS %d MB during, %d MB after", ops.withLock { $0 }, latency, afterLatency, rssDuring / 1024, rssAfter / 1024))
    }

    static func rssKB(_ pid: Int32) -> Int {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return -1 }
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }
}
