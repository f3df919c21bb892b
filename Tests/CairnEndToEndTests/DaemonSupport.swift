import CairnSpool
import CairnTesting
import Foundation
import SystemPackage

/// A `cairn-fixtures daemon` process on a temp spool, its log in a file.
final class DaemonProcess {
    let process: Process
    let logPath: String

    init(spool: Spool, env: [String: String] = [:], args: [String] = [], name: String = "daemon", asUser: String? = nil) throws {
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
        try waitUntil("daemon started", timeout: 20) { self.log.contains("scanned spool") }
    }

    var pid: Int32 { process.processIdentifier }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func kill9() {
        kill(pid, SIGKILL)
        process.waitUntilExit()
    }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    func stop() -> Int32 {
        kill(pid, SIGTERM)
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }
}

struct TimedOut: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(what)" }
}

/// Test-side waiting (checks every 5 ms; the daemon itself never polls).
func waitUntil(_ what: String, timeout: Double = 15, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        usleep(5000)
    }
    throw TimedOut(what: what)
}

extension TempSpool {
    func status(_ run: String) -> RunStatus? { (try? spool.readState(run))??.status }

    func waitFor(_ run: String, _ status: RunStatus, timeout: Double = 15) throws {
        try waitUntil("\(run) \(status.rawValue) (is \(self.status(run)?.rawValue ?? "?"))", timeout: timeout) { self.status(run) == status }
    }

    func result(_ run: String) throws -> JSONValue { try DurableFile.readJSON(spool.run(run).resultFile) }
}
