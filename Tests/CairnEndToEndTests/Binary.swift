import CairnSpool
import Foundation
import SystemPackage

/// Runs the built executables (they sit beside the test bundle in the build directory).
enum Binary {
    static var directory: String {
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        // The bundle may be a directory (…/CairnPackageTests.xctest/…) on some layouts.
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("cairn").path) && dir.path != "/" {
            dir = dir.deletingLastPathComponent()
        }
        return dir.path
    }

    static func path(_ name: String) -> String { name.hasPrefix("/") ? name : directory + "/" + name }

    struct Result {
        var code: Int32
        var stdout: String
        var stderr: String
        var signal: Int32? = nil
    }

    /// Starts a process; the caller waits or kills.
    static func start(_ name: String, _ args: [String], env: [String: String] = [:], stdin: String? = nil, cwd: String? = nil) throws -> (Process, Pipe, Pipe) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path(name))
        p.arguments = args
        var environment = ProcessInfo.processInfo.environment
        environment["NO_COLOR"] = "1"
        environment.removeValue(forKey: "CAIRN_SPOOL")
        for (k, v) in env { environment[k] = v }
        p.environment = environment
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        if let stdin {
            let inp = Pipe()
            p.standardInput = inp
            try p.run()
            inp.fileHandleForWriting.write(Data(stdin.utf8))
            try inp.fileHandleForWriting.close()
        } else {
            p.standardInput = FileHandle.nullDevice
            try p.run()
        }
        return (p, out, err)
    }

    static func finish(_ started: (Process, Pipe, Pipe)) -> Result {
        let (p, out, err) = started
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let killed = p.terminationReason == .uncaughtSignal
        return Result(code: killed ? -1 : p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self), signal: killed ? p.terminationStatus : nil)
    }

    /// `finish` on a thread of its own, so that a test waiting for a long-running process
    /// does not hold a thread of the cooperative pool.
    static func finish(_ started: (Process, Pipe, Pipe)) async -> Result {
        struct Started: @unchecked Sendable { var value: (Process, Pipe, Pipe) }
        let s = Started(value: started)
        return await withCheckedContinuation { c in
            Thread.detachNewThread { c.resume(returning: finish(s.value)) }
        }
    }

    @discardableResult
    static func run(_ name: String, _ args: [String], env: [String: String] = [:], stdin: String? = nil, cwd: String? = nil) throws -> Result {
        finish(try start(name, args, env: env, stdin: stdin, cwd: cwd))
    }

    static func cairn(_ args: String..., spool: Spool, stdin: String? = nil) throws -> Result {
        try run("cairn", args + ["--spool", spool.root.string], stdin: stdin)
    }

    /// Runs a shell command line (for test setup: mount, dd, useradd).
    @discardableResult
    static func runShell(_ command: String) -> Result {
        (try? run("/bin/sh", ["-c", command])) ?? Result(code: -1, stdout: "", stderr: "cannot start /bin/sh")
    }
}
