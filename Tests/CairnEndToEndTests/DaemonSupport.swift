import CairnSpool
import CairnTesting
import Foundation
import SystemPackage

/// A `cairn-fixtures daemon` process on a temp spool, its log in a file.
final class DaemonProcess {
    let process: Process
    let logPath: String

    /// Starts it; `init(spool:…) async` also waits until it has scanned the spool.
    init(starting spool: Spool, env: [String: String] = [:], args: [String] = [], name: String = "daemon", asUser: String? = nil) throws {
        logPath = spool.root.removingLastComponent().appending("\(name)-\(UUID().uuidString.prefix(8)).log").string
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)!
        process = Process()
        let daemonArgs = ["daemon", "--spool", spool.root.string, "--log-level", "debug"] + args
        if let asUser {
            // setpriv execs in place, so the pid is the daemon's (signals reach it).
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=\(asUser)", "--regid=\(asUser)", "--init-groups", "--", Binary.path("cairn-fixtures")] + daemonArgs
        } else {
            process.executableURL = URL(fileURLWithPath: Binary.path("cairn-fixtures"))
            process.arguments = daemonArgs
        }
        var environment = ProcessInfo.processInfo.environment
        environment["NO_COLOR"] = "1"
        for (k, v) in env { environment[k] = v }
        process.environment = environment
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    /// Started, and through its first scan of the spool.
    convenience init(spool: Spool, env: [String: String] = [:], args: [String] = [], name: String = "daemon", asUser: String? = nil) async throws {
        try self.init(starting: spool, env: env, args: args, name: name, asUser: asUser)
        let log = logPath
        try await waitUntil("daemon started (log \(log))", timeout: 20) {
            (try? String(contentsOfFile: log, encoding: .utf8))?.contains("scanned spool") == true
        }
    }

    var pid: Int32 { process.processIdentifier }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// SIGKILL and wait for it to be gone.
    func kill9() async {
        kill(pid, SIGKILL)
        await exited()
    }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    func stop() async -> Int32 {
        kill(pid, SIGTERM)
        await exited()
        return exitStatus
    }

    /// SIGTERM and wait, blocking the thread (for a `defer`, which cannot await).
    func stopBlocking() {
        kill(pid, SIGTERM)
        while !reapedOrLongDead() { usleep(5000) }
    }

    /// Waits for the process to exit without blocking a thread of the cooperative pool
    /// (Process.waitUntilExit spins a run loop on the calling thread). A dead process that
    /// Foundation never reaped (a zombie: seen once in a 30-minute soak, after ~300 kills,
    /// and `isRunning` stayed true for good) counts as exited.
    func exited() async {
        while !reapedOrLongDead() { try? await Task.sleep(for: .milliseconds(5)) }
    }

    private var deadSince: Date? = nil

    /// Foundation saw it end — or it has been a zombie for 5 s (Foundation reaps a child a
    /// moment after it dies; one it never reaps stays a zombie).
    private func reapedOrLongDead() -> Bool {
        guard process.isRunning else { return true }
        guard Self.isZombie(pid) else { return false }
        if deadSince == nil { deadSince = Date() }
        return Date().timeIntervalSince(deadSince!) > 5
    }

    /// Whether `pid` is a zombie (dead, not reaped), by /proc.
    static func isZombie(_ pid: Int32) -> Bool {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = s.lastIndex(of: ")") else { return false }
        return s[s.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
    }

    /// The exit status, or -1 for a process Foundation has not seen end (a zombie it did not
    /// reap: reading `terminationStatus` then would trap).
    var exitStatus: Int32 { process.isRunning ? -1 : process.terminationStatus }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            while !reapedOrLongDead() { usleep(5000) }
        }
    }
}

struct TimedOut: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(what)" }
}

let testTimeScale = max(1, Double(ProcessInfo.processInfo.environment["CAIRN_TEST_TIME_SCALE"] ?? "") ?? 1)

/// Test-side waiting: checks every 5 ms until `timeout`, then fails with what it waited
/// for. It sleeps with Task.sleep, so a waiting test does not hold a thread of Swift
/// Testing's small cooperative pool (2 threads on a 2-core machine). The daemon itself
/// never polls. `CAIRN_TEST_TIME_SCALE=3` gives every deadline three times as long (a slow
/// or shared machine).
func waitUntil(_ what: String, timeout: Double = 15, _ condition: () throws -> Bool) async throws {
    let timeout = timeout * testTimeScale
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        try await Task.sleep(for: .milliseconds(5))
    }
    if try condition() { return }  // once more: the last sleep may have been long
    throw TimedOut(what: what + " (after \(timeout) s)")
}

extension TempSpool {
    func status(_ run: String) -> RunStatus? { (try? spool.readState(run))??.status }

    func waitFor(_ run: String, _ status: RunStatus, timeout: Double = 15) async throws {
        try await waitUntil("\(run) \(status.rawValue) (is \(self.status(run)?.rawValue ?? "?"))", timeout: timeout) { self.status(run) == status }
    }

    func result(_ run: String) throws -> JSONValue { try DurableFile.readJSON(spool.run(run).resultFile) }
}

/// A Python server of Fixtures/ on loopback (an MCP tool server, an OTLP receiver): started
/// with `ARGS… DIR/port LOG`, it writes the port it bound; killed at `stop()`.
final class FixtureServer {
    let process = Process()
    let port: Int

    init(_ script: String, dir: String, log: String) async throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(script)").path, dir + "/port", log]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        var port = 0
        do {
            try await waitUntil("the \(script) server") {
                port = (try? String(contentsOfFile: dir + "/port", encoding: .utf8)).flatMap { Int($0) } ?? 0
                return port > 0
            }
        } catch {
            Self.kill(process)
            throw error
        }
        self.port = port
    }

    func stop() { Self.kill(process) }

    private static func kill(_ p: Process) {
        Glibc.kill(p.processIdentifier, SIGKILL)
        var st: Int32 = 0
        _ = waitpid(p.processIdentifier, &st, 0)
    }
}
