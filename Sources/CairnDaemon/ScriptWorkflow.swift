import CSystemShims
import Cairn
import CairnSpool
import Foundation
import Subprocess
import SystemPackage
import Synchronization

/// Script workflows (SPEC §4): an executable `SPOOL/workflows/NAME` is the workflow type
/// NAME. Each execution runs it from the top with the input on stdin; its durable
/// operations are `cairn` helper calls that consult the journal through a shared cursor in
/// `SPOOL/tmp/exec-RUN.json`. A helper that must wait records the wait there and kills the
/// script's process group; the execution then ends as a wait, and the script runs again
/// from the top when the wait is over.
public enum ScriptWorkflow {
    /// The resolver to install as `WorkflowRegistry.fallback`.
    public static func resolver(spool: Spool) -> @Sendable (String) -> AnyWorkflow? {
        { name in
            guard Names.isValidName(name) else { return nil }
            let path = spool.workflowsDirectory.appending(name).string
            guard access(path, X_OK) == 0 else { return nil }
            var st = stat()
            guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
            return AnyWorkflow(name: name, version: "script:\(st.st_mtim.tv_sec)") { ctx, input in
                try await execute(spool: spool, path: path, ctx: ctx, input: input)
            }
        }
    }

    /// The exec state shared by the daemon and the helpers of one execution.
    public struct ExecState: Codable, Sendable {
        public var exec: String
        public var run: String
        public var cursor: Int
        /// Set by a helper that ended the execution: `waiting`, `cancelled`, `nondeterminism`.
        public var outcome: String?
        public var waitingFor: JSONValue?
        public var error: ErrorInfo?

        enum CodingKeys: String, CodingKey {
            case exec, run, cursor, outcome, error
            case waitingFor = "waiting_for"
        }

        public init(exec: String, run: String, cursor: Int) {
            self.exec = exec
            self.run = run
            self.cursor = cursor
        }
    }

    public static func execStatePath(_ spool: Spool, _ run: String) -> FilePath {
        spool.tmpDirectory.appending("exec-\(run).json")
    }

    /// A script that failed (non-zero exit).
    public struct ScriptFailed: Error, CustomStringConvertible {
        public var code: Int32
        public var stderrTail: String
        public var description: String {
            "script exited with \(code > 128 ? "signal \(code - 128)" : "code \(code)")" + (stderrTail.isEmpty ? "" : ": \(stderrTail)")
        }
    }

    static func execute(spool: Spool, path: String, ctx: WorkflowContext, input: JSONValue) async throws -> JSONValue {
        let run = ctx.runID
        let execID = UUID().uuidString.lowercased()
        let statePath = execStatePath(spool, run)
        try spool.durable.write(json: JSONValue(encoding: ExecState(exec: execID, run: run, cursor: ctx.cursor)), to: statePath)
        let logs = spool.run(run).logsDirectory
        let out = try openLog(logs.appending("stdout.log"))
        let err = try openLog(logs.appending("stderr.log"))
        let banner = "--- \(Timestamp.format(Date())) execution \(execID) ---\n"
        _ = banner.withCString { write(err.rawValue, $0, strlen($0)) }

        let selfExe = executablePath()
        var options = PlatformOptions()
        options.processGroupID = 0  // its own process group, so the whole script can be stopped
        let env: [Environment.Key: String?] = [
            "CAIRN_SPOOL": absolute(spool.root.string),
            "CAIRN_RUN_ID": run,
            "CAIRN_RUN_DIR": absolute(spool.run(run).directory.string),
            "CAIRN_EXEC": execID,
            "PATH": helperPath(selfExe) + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"),
        ]
        let config = Configuration(
            executable: .path(FilePath(selfExe)),
            arguments: Arguments(["__supervise", "--parent", String(getpid()), "--", path]),
            environment: .inherit.updating(env),
            workingDirectory: FilePath(absolute(spool.run(run).directory.string)),
            platformOptions: options
        )
        // The supervisor leads the script's process group; stopping the daemon's task (a
        // shutdown past its grace period) kills the whole group.
        let group = Mutex<pid_t>(0)
        let result = try await withTaskCancellationHandler {
            try await Subprocess.run(
                config,
                input: .string(input.compactText() + "\n"),
                output: .fileDescriptor(out, closeAfterSpawningProcess: true),
                error: .fileDescriptor(err, closeAfterSpawningProcess: true)
            ) { execution in
                group.withLock { $0 = execution.processIdentifier.value }
            }
        } onCancel: {
            let pid = group.withLock { $0 }
            if pid > 0 { kill(-pid, SIGKILL) }
        }
        // Whatever the script left running (a helper in the background) ends with it: it
        // must not write into a journal the daemon has moved on from.
        let leader = group.withLock { $0 }
        if leader > 0 { kill(-leader, SIGKILL) }
        if Task.isCancelled { throw CancellationError() }
        let code: Int32
        switch result.terminationStatus {
        case .exited(let c): code = c
        case .signaled(let s): code = 128 + s
        }
        // What the helpers replayed (tokens saved by recorded LLM calls), before the reload.
        if let s = try? DurableFile.readJSON(statePath).decode(as: ExecState.self), s.exec == execID { ctx.noteReplayed(upTo: s.cursor) }
        let journal = try ctx.reloadJournal()
        let state = try? DurableFile.readJSON(statePath).decode(as: ExecState.self)
        _ = unlink(statePath.string)
        _ = unlink(statePath.string + ".lock")
        if let state, state.exec == execID {
            switch state.outcome {
            case "waiting": throw ctx.waiting(state.waitingFor ?? ["kind": "unknown"])
            case "cancelled": throw RunCancelledError()
            case "nondeterminism": throw NondeterminismError(info: state.error ?? ErrorInfo(type: "nondeterminism", message: "nondeterminism in a script helper"))
            default: break
            }
        }
        guard code == 0 else {
            let failure = ScriptFailed(code: code, stderrTail: tail(logs.appending("stderr.log")))
            // The workflow's retry policy (cairn.json "script_retries"): run it again from
            // the top after a backoff; completed helper operations replay.
            if let policy = retryPolicy(ctx.spoolConfig, workflow: ctx.workflowName) {
                let previous = journal.filter { $0.kind == "retry" && $0.name == "run" && $0.data?["execution_retry"] == true }.count
                if previous + 1 < policy.maxAttempts {
                    let delay = policy.delay(afterAttempt: previous + 1, unit: Double.random(in: 0..<1))
                    throw try ctx.retryExecution(until: Date().addingTimeInterval(delay), error: ErrorInfo(type: "script_exit", message: failure.description), attempt: previous + 1)
                }
            }
            throw failure
        }
        // The result is the last `cairn result` record, if any.
        if let last = Journal.effective(journal).last(where: { $0.kind == "result" }) { return try ctx.resolveValue(last.value ?? .null) }
        return .null
    }

    /// `"script_retries": {"NAME" | "*": {"max_attempts": 3, "initial_delay": "10s", "max_delay": "10m"}}`
    /// in cairn.json; none: a non-zero exit fails the run.
    static func retryPolicy(_ cfg: SpoolConfig, workflow: String) -> RetryPolicy? {
        guard let all = cfg.raw["script_retries"],
              let p = all[workflow] ?? all["*"], let n = p["max_attempts"]?.intValue, n > 1 else { return nil }
        return RetryPolicy(
            maxAttempts: Int(n),
            initialDelay: p["initial_delay"]?.stringValue.flatMap(Duration.parse) ?? .seconds(10),
            maxDelay: p["max_delay"]?.stringValue.flatMap(Duration.parse) ?? .seconds(600))
    }

    static func openLog(_ p: FilePath) throws -> FileDescriptor {
        do {
            return try FileDescriptor.open(p, .writeOnly, options: [.append, .create, .closeOnExec], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch let e as Errno {
            throw SpoolError(.io, path: p.string, errno: e.rawValue, "cannot open log")
        }
    }

    static func tail(_ p: FilePath) -> String {
        guard let data = try? DurableFile.read(p) else { return "" }
        let lines = String(decoding: data.suffix(2048), as: UTF8.self).split(separator: "\n").filter { !$0.hasPrefix("--- ") }
        return lines.suffix(3).joined(separator: " | ")
    }

    static func absolute(_ p: String) -> String {
        p.hasPrefix("/") ? p : FileManager.default.currentDirectoryPath + "/" + p
    }

    /// This process's executable.
    public static func executablePath() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, 4095)
        return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    }

    /// A directory with `cairn` in it that runs this executable (scripts call `cairn ...`).
    static func helperPath(_ exe: String) -> String {
        let dir = (exe as NSString).deletingLastPathComponent
        if (exe as NSString).lastPathComponent == "cairn" { return dir }
        let bin = NSTemporaryDirectory() + "cairn-bin-\(getuid())-\(SHA256.hex(Array(exe.utf8)).prefix(12))"
        _ = mkdir(bin, 0o755)
        let link = bin + "/cairn"
        var target = [CChar](repeating: 0, count: 4096)
        let n = readlink(link, &target, 4095)
        if n <= 0 || String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) != exe {
            _ = unlink(link)
            _ = symlink(exe, link)
        }
        return bin
    }
}
