import CSystemShims
import Cairn
import CairnSpool
import Foundation
import Tracing
import Subprocess
import SystemPackage
import Synchronization

/// Answers the helper calls of the scripts a daemon runs (`cairn step`, `cairn now` …) in
/// the daemon itself, so that a helper call costs a small client's start instead of the whole
/// binary's (CairnCLI's `HelperServer`; docs/scripts.md, "How helpers reach the daemon").
public protocol ScriptHelperService: Sendable {
    /// A private directory (0700, this user's) whose `cairn` is the small client, and the
    /// Unix socket it connects to there — the service starts on the first call (a daemon
    /// that runs no script never pays for it); nil: not available, helpers run the whole binary.
    func endpoint() -> (clientDirectory: String, socketPath: String)?
    /// The execution's helpers may be served from now on.
    /// `trace`: the span context of the advance running the script (its helpers' operations
    /// are spans under it), nil when the process traces nothing.
    func register(exec: String, run: String, spool: Spool, trace: ServiceContext?)
    func unregister(exec: String)
}

/// Script workflows (SPEC §4): an executable `SPOOL/workflows/NAME` is the workflow type
/// NAME. Each execution runs it from the top with the input on stdin; its durable
/// operations are `cairn` helper calls that consult the journal through a shared cursor in
/// `SPOOL/tmp/exec-RUN.json`. A helper that must wait records the wait there and kills the
/// script's process group; the execution then ends as a wait, and the script runs again
/// from the top when the wait is over.
public enum ScriptWorkflow {
    /// The resolver to install as `WorkflowRegistry.fallback`. With `helpers`, the scripts'
    /// `cairn` is the small client that asks it; without, the whole binary.
    public static func resolver(spool: Spool, helpers: (any ScriptHelperService)? = nil) -> @Sendable (String) -> AnyWorkflow? {
        { name in
            guard Names.isValidName(name) else { return nil }
            let path = spool.workflowsDirectory.appending(name).string
            guard access(path, X_OK) == 0 else { return nil }
            var st = stat()
            guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
            var wf = AnyWorkflow(name: name, version: "script:\(st.st_mtim.tv_sec)") { ctx, input in
                // Nothing the daemon executes may come from a place another user can write.
                for p in [spool.workflowsDirectory.string, path] {
                    if let problem = Spool.trustedFileProblem(p) {
                        throw StepError.nonRetryable("\(p) \(problem): the daemon will not execute it (\(Spool.trustFixAdvice); then `cairn retry`)", type: "untrusted_workflow")
                    }
                }
                return try await execute(spool: spool, path: path, ctx: ctx, input: input, helpers: helpers)
            }
            wf.replaysOnEveryWake = false
            wf.recordsFromOtherProcesses = true
            // A `cairn step` whose command exited non-zero is recorded as a value; a retry of
            // the run resumes from it.
            wf.failedWithoutError = { $0.kind == .step && ($0.value?["exit_code"]?.intValue ?? 0) != 0 }
            return wf
        }
    }

    /// The exec state shared by the daemon and the helpers of one execution.
    public struct ExecState: Codable, Sendable {
        public var exec: String
        public var run: String
        public var cursor: Int
        /// Set by a helper that ended the execution: `waiting`, `cancelled`, `nondeterminism`.
        public var outcome: String?
        public var waitingFor: WaitingFor?
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

    /// A file the daemon creates before the script starts and a helper removes when the spool
    /// fails it: removing a name needs no free space, where writing the exec state to say so
    /// does (on a full disk, it cannot). Its absence after the script exits means "the spool
    /// failed", whatever a probe written later finds (the failed write's temp file is gone by
    /// then, and its space with it).
    public static func spoolWorksPath(_ statePath: FilePath) -> String { statePath.string + ".spool-works" }

    /// A script that failed (non-zero exit, or killed at its timeout).
    public struct ScriptFailed: Error, CustomStringConvertible {
        public var code: Int32
        public var stderrTail: String
        public var timedOut: Duration? = nil
        public var description: String {
            let what = timedOut.map { "script timed out after \($0) (script_timeout in cairn.json) and was killed" }
                ?? "script exited with \(code > 128 ? "signal \(code - 128)" : "code \(code)")"
            return what + (stderrTail.isEmpty ? "" : ": \(stderrTail)")
        }
    }

    /// `"script_timeout": {"NAME" | "*": "1h"}` in cairn.json; none (the default): no limit.
    static func scriptTimeout(_ cfg: SpoolConfig, workflow: String) -> Duration? {
        guard let all = cfg.raw["script_timeout"], let s = (all[workflow] ?? all["*"])?.stringValue else { return nil }
        return Duration.parse(s)
    }

    /// `"script_log_limit": BYTES` in cairn.json (default 16 MiB): a log past it is rotated
    /// to `NAME.log.1` (replacing the previous one) when the next execution starts.
    static func logLimit(_ cfg: SpoolConfig) -> Int {
        cfg.raw["script_log_limit"]?.intValue.map { Int($0) } ?? 16 << 20
    }

    static func rotateLogs(_ logs: FilePath, limit: Int) {
        for name in ["stdout.log", "stderr.log"] {
            let p = logs.appending(name).string
            var st = stat()
            if lstat(p, &st) == 0, Int(st.st_size) > limit { _ = rename(p, p + ".1") }
        }
    }

    /// Throws the spool's error when it cannot take a small durable write right now.
    static func probeSpool(_ spool: Spool, run: String) throws {
        let probe = spool.tmpDirectory.appending("probe-\(run)-\(getpid())")
        try spool.durable.write(Data("probe\n".utf8), to: probe)
        _ = unlink(probe.string)
    }

    static func execute(spool: Spool, path: String, ctx: WorkflowContext, input: JSONValue, helpers: (any ScriptHelperService)?) async throws -> JSONValue {
        let run = ctx.runID
        let execID = UUID().uuidString.lowercased()
        let statePath = execStatePath(spool, run)
        try spool.durable.write(json: JSONValue(encoding: ExecState(exec: execID, run: run, cursor: ctx.cursor)), to: statePath, durability: .atomicOnly)
        let spoolWorks = spoolWorksPath(statePath)
        let marker = open(spoolWorks, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard marker >= 0 else { throw SpoolError(.io, path: spoolWorks, "cannot create (\(String(cString: strerror(errno))))") }
        close(marker)
        defer { _ = unlink(spoolWorks) }
        // A cancel or pause is honoured before the script starts: one that never calls a
        // helper would never see it.
        try ctx.checkControlFiles()
        // The script is at work from now on, before its first helper call.
        try ctx.markRunning()
        try spool.ensureRuntimeDirectory(spool.run(run).workDirectory)
        let logs = spool.run(run).logsDirectory
        rotateLogs(logs, limit: logLimit(ctx.spoolConfig))
        let out = try openLog(logs.appending("stdout.log"))
        let err = try openLog(logs.appending("stderr.log"))
        let banner = "--- \(Timestamp.format(Date())) execution \(execID) ---\n"
        _ = banner.withCString { write(err.rawValue, $0, strlen($0)) }

        let selfExe = executablePath()
        // The client first when the daemon serves helpers, the whole binary after it: a
        // client directory that disappears (a /tmp cleaner) leaves `cairn` working. (The
        // service makes a new one when it finds its own gone.)
        let endpoint = helpers?.endpoint()
        let helpers = endpoint == nil ? nil : helpers
        let wholeBinary = try helperPath(selfExe)
        let helperDir = endpoint.map { $0.clientDirectory + ":" + wholeBinary } ?? wholeBinary
        var options = PlatformOptions()
        options.processGroupID = 0  // its own process group, so the whole script can be stopped
        var env: [Environment.Key: String?] = [
            "CAIRN_SPOOL": absolute(spool.root.string),
            "CAIRN_RUN_ID": run,
            "CAIRN_RUN_DIR": absolute(spool.run(run).directory.string),
            "CAIRN_EXEC": execID,
            "PATH": helperDir + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"),
            // Cleared unless this daemon serves helpers (a daemon started from a script's
            // environment must not hand on its parent's).
            "CAIRN_HELPER_SOCKET": nil,
            "CAIRN_HELPER_EXE": nil,
            // The advance's W3C trace context, for what the script runs that traces itself
            // (OpenTelemetry's environment carrier); cleared when nothing is traced.
            "TRACEPARENT": ctx.trace.flatMap(RunTracing.traceparent(of:)),
            "TRACESTATE": nil,
        ]
        if let helpers, let endpoint {
            // The client asks the daemon over this socket and runs the whole binary for
            // anything the daemon does not serve.
            env["CAIRN_HELPER_SOCKET"] = endpoint.socketPath
            env["CAIRN_HELPER_EXE"] = selfExe
            helpers.register(exec: execID, run: run, spool: spool, trace: ctx.trace)
        }
        defer { helpers?.unregister(exec: execID) }
        let config = Configuration(
            executable: .path(FilePath(selfExe)),
            arguments: Arguments(["__supervise", "--parent", String(getpid()), "--", path]),
            environment: .inherit.updating(env),
            // Not the run directory: it is group-writable (control files), so anyone in the
            // group could plant a symlink or a module there for the script to follow.
            workingDirectory: FilePath(absolute(spool.run(run).workDirectory.string)),
            platformOptions: options
        )
        // The supervisor leads the script's process group; stopping the daemon's task (a
        // shutdown past its grace period) kills the whole group.
        let group = ScriptProcess()
        // The input reaches the script through an unlinked file, not a pipe: a script that
        // never reads its stdin cannot make the daemon block or die of SIGPIPE.
        let stdin = try inputFile(spool: spool, run: run, text: input.compactText() + "\n")
        // cairn.json "script_timeout": a script that runs longer is killed (its whole group).
        let limit = scriptTimeout(ctx.spoolConfig, workflow: ctx.workflowName)
        let watchdog: Task<Void, Never>? = limit.map { limit in
            Task {
                try? await Task.sleep(for: limit)
                if Task.isCancelled { return }
                group.timeOut()
            }
        }
        defer { watchdog?.cancel() }
        let result = try await withTaskCancellationHandler {
            try await Subprocess.run(
                config,
                input: .fileDescriptor(stdin, closeAfterSpawningProcess: true),
                output: .fileDescriptor(out, closeAfterSpawningProcess: true),
                error: .fileDescriptor(err, closeAfterSpawningProcess: true)
            ) { execution in
                CrashPoints.slowAt("script.spawned")
                group.started(execution.processIdentifier.value)
            }
        } onCancel: {
            group.kill()
        }
        // Whatever the script left running (a helper in the background) ends with it: it
        // must not write into a journal the daemon has moved on from.
        group.kill()
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
            case "waiting": throw ctx.waiting(state.waitingFor ?? WaitingFor(json: ["kind": "unknown"]))
            case "cancelled": throw RunCancelledError()
            case "nondeterminism": throw NondeterminismError(info: state.error ?? ErrorInfo(type: "nondeterminism", message: "nondeterminism in a script helper"))
            case "spool_error":
                // A helper could not write the spool (disk full, EIO): never the run's failure.
                throw SpoolError(.io, path: state.error?.file, state.error?.message ?? "a script helper could not write the spool")
            default: break
            }
        }
        // `cairn continue-as-new` ran: the run ended there (it started the run that goes on).
        if let c = Journal.effective(journal).last(where: { $0.kind == .continueAsNew }), let id = c.data?["run"]?.stringValue {
            throw ctx.continued(as: id)
        }
        guard code == 0 else {
            // A helper that hit a full disk may not have been able to write that it did: it
            // removed the marker instead. And if the spool cannot take a write now, this exit
            // is the spool's doing, not the script's.
            if access(spoolWorks, F_OK) != 0 {
                throw SpoolError(.io, path: state?.error?.file, "a script helper could not write the spool (its message is in logs/stderr.log: \(tail(logs.appending("stderr.log")).suffix(300)))")
            }
            try probeSpool(spool, run: run)
            var failure = ScriptFailed(code: code, stderrTail: tail(logs.appending("stderr.log")))
            if group.timedOut, let limit {
                failure.timedOut = limit
            }
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
        // Like a Swift workflow that returns while records remain: helper calls removed from
        // the script (or skipped by a changed branch) must not go unnoticed.
        let effective = Journal.effective(journal)
        let consumed = (state?.exec == execID ? state?.cursor : nil) ?? 0
        if consumed + 1 < effective.count {
            let extra = effective[consumed + 1]
            let (file, where_) = spool.journal(ctx.runID).locate(fileName: extra.fileName)
            throw NondeterminismError(info: ErrorInfo(type: "nondeterminism", message: "nondeterminism: the script exited 0, but \(where_) records \(extra.kind) '\(extra.name ?? "")' that no helper asked for this time (helper calls removed or skipped?); fix the script and `cairn retry`", file: file, expected: ["kind": .string(extra.kind.rawValue), "name": extra.name.map { .string($0) } ?? .null], actual: ["kind": "return"], retryable: false))
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

    /// An unlinked file in the spool's tmp/ holding `text`, positioned at its start.
    public static func inputFile(spool: Spool, run: String, text: String) throws -> FileDescriptor {
        let path = spool.durable.tempPath(hint: "input-\(run)")
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, .readWrite, options: [.create, .exclusiveCreate, .closeOnExec], permissions: [.ownerReadWrite])
        } catch let e as Errno {
            throw SpoolError(.io, path: path.string, errno: e.rawValue, "cannot create the script's input file")
        }
        _ = unlink(path.string)
        do {
            _ = try fd.writeAll(Array(text.utf8))
            _ = try fd.seek(offset: 0, from: .start)
        } catch {
            try? fd.close()
            throw SpoolError(.io, path: path.string, errno: (error as? Errno)?.rawValue, "cannot write the script's input file")
        }
        return fd
    }

    static func openLog(_ p: FilePath) throws -> FileDescriptor {
        do {
            return try FileDescriptor.open(p, .writeOnly, options: [.append, .create, .closeOnExec], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch let e as Errno {
            throw SpoolError(.io, path: p.string, errno: e.rawValue, "cannot open log")
        }
    }

    /// The last lines of a script's log for its error: only the last 2 KiB are read (pread
    /// from the end), however large the log (a script may write hundreds of MiB to stderr).
    static func tail(_ p: FilePath) -> String {
        let data = DurableFile.readTail(p, bytes: tailBytes)
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n").filter { !$0.hasPrefix("--- ") }
        return lines.suffix(3).joined(separator: " | ")
    }

    static let tailBytes = 2048

    static func absolute(_ p: String) -> String { Spool.absolute(p) }

    /// This process's executable.
    public static func executablePath() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, 4095)
        if n > 0 { return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        // No /proc: argv[0] from the C runtime (Swift's arguments are empty then).
        if cairn_argc() > 0, let argv = cairn_argv(), let first = argv[0] { return String(cString: first) }
        return CommandLine.arguments.first ?? "cairn"
    }

    /// A directory with `cairn` in it that runs this executable (scripts call `cairn ...`).
    /// For a host binary not named `cairn`, a private directory made once per process with
    /// mkdtemp (mode 0700, owned by this user): nothing the daemon executes may come from a
    /// place another user could have created first.
    static func helperPath(_ exe: String) throws -> String {
        let dir = (exe as NSString).deletingLastPathComponent
        if (exe as NSString).lastPathComponent == "cairn" { return dir }
        return try helperDirectory.withLock { cached in
            if let cached, HelperLink.valid(cached, exe) { return cached }
            let made = try HelperLink.make(exe)
            cached = made
            return made
        }
    }

    private static let helperDirectory = Mutex<String?>(nil)

    /// Removes the private helper directory (at daemon stop).
    public static func removeHelperDirectory() {
        helperDirectory.withLock { dir in
            guard let d = dir else { return }
            _ = unlink(d + "/cairn")
            _ = rmdir(d)
            dir = nil
        }
    }
}

/// The private `cairn` link for host binaries with another name.
public enum HelperLink {
    /// Where private directories are made: $TMPDIR when it is an absolute path that can
    /// stand in PATH (no `:`), else /tmp — a relative one would be resolved against the
    /// script's working directory, and a `:` would split PATH into directories nobody chose.
    public static func privateBase() -> String {
        guard let t = ProcessInfo.processInfo.environment["TMPDIR"], t.hasPrefix("/"), !t.contains(":") else { return "/tmp" }
        return t
    }

    /// A private directory (mkdtemp under `privateBase()`, checked 0700 and this user's)
    /// whose `cairn` links to `exe`: the whole binary (`cairn-bin-`), or the small helper
    /// client (`cairn-helpers-`, where the daemon's helper socket also lives).
    public static func make(_ exe: String, prefix: String = "cairn-bin") throws -> String {
        let base = privateBase()
        var template = Array((base + "/\(prefix)-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SpoolError(.io, path: base, errno: errno, "cannot create a private directory for the scripts' cairn helper")
        }
        let dir = String(cString: made)
        guard symlink(exe, dir + "/cairn") == 0 else {
            throw SpoolError(.io, path: dir + "/cairn", errno: errno, "cannot create the scripts' cairn helper link")
        }
        guard valid(dir, exe) else { throw SpoolError(.io, path: dir, "the helper directory is not private to this user") }
        return dir
    }

    /// The directory is ours, 0700, and its link points at `exe`.
    static func valid(_ dir: String, _ exe: String) -> Bool {
        var st = stat()
        guard lstat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == geteuid(), st.st_mode & 0o077 == 0 else { return false }
        var target = [CChar](repeating: 0, count: 4096)
        let n = readlink(dir + "/cairn", &target, 4095)
        return n > 0 && String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == exe
    }
}

/// The script's process group (its supervisor leads it), shared with the timeout watchdog
/// and the cancellation handler.
final class ScriptProcess: Sendable {
    private struct State {
        var pid: pid_t = 0
        /// A kill asked for before the pid was known (a cancel or a shutdown in the moment
        /// between the spawn and `started`): done by `started`.
        var killRequested = false
        var timedOut = false
    }
    private let state = Mutex(State())

    func started(_ pid: pid_t) {
        let kill = state.withLock { s in
            s.pid = pid
            return s.killRequested
        }
        if kill { Glibc.kill(-pid, SIGKILL) }
    }

    /// SIGKILL to the whole group (now, or as soon as it is known).
    func kill() {
        let pid = state.withLock { s in
            s.killRequested = true
            return s.pid
        }
        if pid > 0 { Glibc.kill(-pid, SIGKILL) }
    }

    func timeOut() {
        let pid = state.withLock { s -> pid_t in
            s.timedOut = true
            s.killRequested = true
            return s.pid
        }
        if pid > 0 { Glibc.kill(-pid, SIGKILL) }
    }

    var timedOut: Bool { state.withLock { $0.timedOut } }
}
