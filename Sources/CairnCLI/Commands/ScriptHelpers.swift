import ArgumentParser
import CSystemShims
import Cairn
import CairnDaemon
import CairnSpool
import Foundation
import Tracing
import Logging
import Glibc
import Subprocess
import Synchronization
import SystemPackage

/// The journal session of a script workflow's helper call (`cairn step`, `cairn approval`…),
/// in the helper process or in the daemon that serves the small client (`HelperServer`).
/// The daemon started the script with CAIRN_SPOOL, CAIRN_RUN_ID and CAIRN_EXEC; the
/// cursor of this execution lives in SPOOL/tmp/exec-RUN.json.
final class HelperSession {
    let helper: String
    let spool: Spool
    let run: String
    var state: ScriptWorkflow.ExecState
    let statePath: FilePath
    /// Where the engine's warnings go: the script's stderr in a helper process.
    var logger: Logger
    /// The span context of the advance running the script (served helpers only).
    let trace: ServiceContext?
    /// The daemon's context of this execution, kept from one served helper call to the next.
    var contexts: HelperContexts?

    /// An operation ended the execution (a wait, a cancel, nondeterminism, a spool error):
    /// the exec state says so for the daemon; the script must be stopped, after `message`
    /// is printed on its stderr.
    struct Stop: Error {
        var message: String?
    }

    static func open(_ helper: String) throws -> HelperSession {
        let env = ProcessInfo.processInfo.environment
        guard let root = env["CAIRN_SPOOL"], let run = env["CAIRN_RUN_ID"], let exec = env["CAIRN_EXEC"] else {
            throw CLIError(.usage, "`cairn \(helper)` runs inside a script workflow started by `cairn daemon` (CAIRN_SPOOL, CAIRN_RUN_ID and CAIRN_EXEC are not set)")
        }
        if let outer = env["CAIRN_IN_STEP"], !outer.isEmpty {
            throw CLIError(.usage, "`cairn \(helper)` was called inside the command of `cairn step \(outer)`: helpers cannot be nested in a step (the step is one recorded unit); call it from the script itself, before or after the step")
        }
        var logger = Logger(label: "cairn")
        logger.logLevel = .warning  // the script's stderr is the run's log; keep it for the script
        return try HelperSession(helper: helper, spool: try Spool.open(at: FilePath(root)), run: run, exec: exec, logger: logger)
    }

    /// `served`: the daemon knows the execution runs; the state is read once, under the lock.
    init(helper: String, spool: Spool, run: String, exec: String, logger: Logger, contexts: HelperContexts? = nil, served: Bool = false, trace: ServiceContext? = nil) throws {
        self.trace = trace
        let path = ScriptWorkflow.execStatePath(spool, run)
        let state: ScriptWorkflow.ExecState
        do {
            state = served ? ScriptWorkflow.ExecState(exec: exec, run: run, cursor: 0) : try DurableFile.readJSON(path).decode(as: ScriptWorkflow.ExecState.self)
        } catch {
            throw CLIError(.failure, "\(path.string): no execution state for run \(run); is the script still running under its daemon?")
        }
        guard state.exec == exec else { throw CLIError(.failure, "\(path.string): execution \(exec) is over (the run moved on); this process should have been stopped") }
        self.helper = helper
        self.spool = spool
        self.run = run
        self.state = state
        self.statePath = path
        self.logger = logger
        self.contexts = contexts
    }

    /// The exec state for the daemon and the next helper: atomic, not fsync'd (nothing reads
    /// it after a restart; the journal record before it is what must survive).
    func writeState() throws {
        try spool.durable.write(json: JSONValue(encoding: state), to: statePath, durability: .atomicOnly)
    }

    /// `performStoppable` in a helper process: a stop kills this script's process group
    /// (this process's too); the daemon takes it from there.
    func perform<T>(_ op: (WorkflowContext) async throws -> T) async throws -> T {
        try await stoppingHere { try await performStoppable(op) }
    }

    /// In a helper process: `body`'s `Stop` kills this script's process group.
    func stoppingHere<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let stop as Stop {
            if let m = stop.message { Output.raw(Data(m.utf8), to: 2) }
            kill(0, SIGKILL)
            while true { pause() }
        }
    }

    /// Runs one durable operation; on a wait, cancellation, nondeterminism or a spool error,
    /// records the outcome for the daemon and throws `Stop`.
    func performStoppable<T>(_ op: (WorkflowContext) async throws -> T) async throws -> T {
        // Helpers of one execution run one at a time (a script may call them from a pipeline
        // or in the background): each takes the exec state's flock, then re-reads the cursor.
        // A lock file of its own: the state file is replaced by rename, so it cannot carry a lock.
        let lockPath = statePath.string + ".lock"
        // 0600: a lock file others can open is a lock others can hold.
        let lockFD = Glibc.open(lockPath, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard lockFD >= 0 else { throw CLIError(.failure, "\(lockPath): cannot open the execution lock") }
        defer { close(lockFD) }
        // Helpers called concurrently (a pipeline, `&`, `xargs -P`) would take positions in
        // whatever order they happen to run, and a replay could hand one's recorded output to
        // another: refused, never silently wrong.
        guard cairn_flock(lockFD, CAIRN_LOCK_EX_NB) == 0 else {
            if errno == EWOULDBLOCK {
                throw CLIError(.usage, "`cairn \(helper)` was called while another helper of this execution was running (helpers in a pipeline, in the background or from xargs -P cannot be told apart on replay); call helpers one at a time")
            }
            throw CLIError(.failure, "\(statePath.string): cannot lock")
        }
        guard let fresh = try? DurableFile.readJSON(statePath).decode(as: ScriptWorkflow.ExecState.self), fresh.exec == state.exec, fresh.outcome == nil else {
            throw CLIError(.failure, "\(statePath.string): execution \(state.exec) is over (the run moved on)")
        }
        state = fresh
        let ctx = try contexts?.take(cursor: state.cursor) ?? WorkflowContext.attach(spool: spool, runID: run, cursor: state.cursor, logger: logger, trace: trace)
        do {
            let v = try await op(ctx)
            // An operation that does not throw (`now`, `uuid`) may have met a wait, a cancel
            // or a spool error: the helper reports it as if it had thrown.
            try ctx.throwIfStopped()
            state.cursor = ctx.cursor
            try writeState()
            contexts?.keep(ctx)
            return v
        } catch {
            var message: String?
            if let w = WorkflowContext.waitingFor(error) {
                state.outcome = "waiting"
                state.waitingFor = w
            } else if error is RunCancelledError {
                state.outcome = "cancelled"
            } else if let e = error as? NondeterminismError {
                state.outcome = "nondeterminism"
                state.error = e.info
                message = "cairn: \(e.info.message)\n"
            } else if let e = error as? SpoolError {
                // The spool failed (a full disk, EIO): not the script's failure. Tell the
                // daemon if the exec state can still be written (it probes the spool
                // itself if not) and stop the script; the run resumes once the spool works.
                state.outcome = "spool_error"
                state.error = ErrorInfo(type: "spool", message: e.description, file: e.path)
                // Said first by removing a name (which needs no space), then in the state.
                _ = unlink(ScriptWorkflow.spoolWorksPath(statePath))
                try? writeState()
                throw Stop(message: "cairn: \(e.description)\n")
            } else {
                state.cursor = ctx.cursor
                try? writeState()
                // A step that failed for good is recorded like any outcome: the context goes on.
                if error is StepFailedError { contexts?.keep(ctx) }
                throw error
            }
            try writeState()
            throw Stop(message: message)
        }
    }
}

/// The daemon's loaded context of one script execution, kept between the helper calls it
/// serves: a replayed call then costs no journal reading. Taken only while it is current:
/// the cursor is where it left it, and no other process (a helper the whole binary ran)
/// appended a record since.
final class HelperContexts: Sendable {
    private let kept = Mutex<WorkflowContext?>(nil)

    init() {}

    func take(cursor: Int) throws -> WorkflowContext? {
        guard let ctx = kept.withLock({ k in defer { k = nil }; return k }), ctx.cursor == cursor else { return nil }
        guard try !ctx.spool.journal(ctx.runID).holdsPosition(atLeast: ctx.nextPosition) else { return nil }
        return ctx
    }

    func keep(_ ctx: WorkflowContext) { kept.withLock { $0 = ctx } }
}

/// What a helper call prints and exits with: the same whether the helper process or the
/// daemon (for the small client) did the work.
struct HelperReply: Sendable {
    var stdout = Data()
    var stderr = ""
    var code: Int32 = 0

    /// In the helper process: print, and exit with the code.
    func emit() throws {
        if !stdout.isEmpty { Output.raw(stdout, to: 1) }
        if !stderr.isEmpty { Output.raw(Data(stderr.utf8), to: 2) }
        if code != 0 { throw ExitCode(code) }
    }
}

extension StepOutput: ValueShape {
    static var shape: String { #"{"stdout": "…", "exit_code": 0}"# }
}

/// What `cairn step` records.
struct StepOutput: Codable, Sendable {
    var stdout: String?
    var stdoutBase64: String?
    var exitCode: Int32

    enum CodingKeys: String, CodingKey {
        case stdout
        case stdoutBase64 = "stdout_base64"
        case exitCode = "exit_code"
    }

    var bytes: Data { stdout.map { Data($0.utf8) } ?? stdoutBase64.flatMap { Data(base64Encoded: $0) } ?? Data() }
}

struct StepHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "step",
        abstract: "(script helper) Run CMD once as a durable step; on replay print its recorded stdout and exit with its recorded code.",
        discussion: prose("""
            CMD gets CAIRN_IDEMPOTENCY_KEY (stable across retries and crashes) and
            CAIRN_STEP_ATTEMPT. With --retries N a non-zero exit is retried with backoff (the run
            waits durably between attempts); the last attempt's exit code is recorded.

            Examples (inside SPOOL/workflows/NAME):
              cairn step fetch -- curl -fsS https://example.com/ticket/42
              cairn step send-email --at-most-once -- ./send.sh "$to"
              cairn step build --retries 3 --timeout 10m -- make
            """)
    )

    @Argument(help: "The step's name (repeated names in loops are matched by position).") var name: String
    @Flag(name: .customLong("at-most-once"), help: "Never run twice: after a crash mid-step, ask a person.") var atMostOnce = false
    @Option(name: .long, help: "Retry a non-zero exit this many times.") var retries: Int = 0
    @Option(name: .long, help: "Fail an attempt that runs longer (e.g. 90s, 10m).") var timeout: DurationArgument?
    @Argument(parsing: .postTerminator, help: "The command and its arguments.") var command: [String] = []

    func validate() throws {
        guard !command.isEmpty else { throw ValidationError("missing the command: cairn step NAME -- CMD ARGS...") }
        guard retries >= 0 else { throw ValidationError("--retries must be 0 or more") }
    }

    func run() async throws {
        let session = try HelperSession.open("step")
        let cmd = command, name = name
        try await session.stoppingHere { try await reply(session) { attempt in
            // A timeout (or a stop) kills the command and everything it started.
            let pid = ProcessTree()
            // Found on PATH here, not by Subprocess: it forks a child to try execve in
            // each PATH directory in turn (a fork of this large process each).
            let executable: Executable
            if cmd[0].contains("/") {
                executable = .path(FilePath(cmd[0]))
            } else {
                do {
                    executable = .path(try await Executable.name(cmd[0]).resolveExecutablePath(in: .inherit))
                } catch {
                    throw StepError(Self.cannotRun(cmd[0], "not found on PATH"))
                }
            }
            let config = Configuration(
                executable: executable,
                arguments: Arguments(Array(cmd.dropFirst())),
                environment: .inherit.updating(["CAIRN_IDEMPOTENCY_KEY": attempt.idempotencyKey, "CAIRN_STEP_ATTEMPT": String(attempt.number), "CAIRN_IN_STEP": name]))
            let status: TerminationStatus, stdout: [UInt8]
            do {
                let r = try await withTaskCancellationHandler {
                    try await Subprocess.run(config, input: .none, output: .bytes(limit: Self.outputLimit), error: .currentStandardError) { execution in
                        CrashPoints.slowAt("step.spawned")
                        pid.started(execution.processIdentifier.value)
                    }
                } onCancel: {
                    pid.killTree()
                }
                status = r.terminationStatus
                stdout = r.standardOutput
            } catch let e as SubprocessError where e.code == .outputLimitExceeded {
                throw StepError(Self.tooMuchOutput(cmd[0]))
            } catch let e as SubprocessError where e.code == .executableNotFound || e.code == .spawnFailed {
                throw StepError(Self.cannotRun(cmd[0], e.underlyingError.map { String(cString: strerror($0.rawValue)) } ?? "\(e)"))
            }
            let code: Int32
            switch status {
            case .exited(let c): code = c
            case .signaled(let s): code = 128 + s
            }
            if code != 0 && !attempt.isLast {
                Output.raw(Data(Self.willRetry(name, attempt: attempt.number, cmd[0], code).utf8), to: 2)
            }
            return try Self.output(Data(stdout), code: code, attempt: attempt, command: cmd[0])
        } }.emit()
    }

    /// The most of CMD's stdout a step records.
    static let outputLimit = 64 << 20

    static func willRetry(_ name: String, attempt: Int, _ command: String, _ code: Int32) -> String {
        "cairn: step \(name) attempt \(attempt): \(command) exited with \(code); step failed, will retry\n"
    }

    /// The same words whichever process ran the command (this one, or the small client).
    static func cannotRun(_ command: String, _ reason: String) -> String { "\(command): cannot run: \(reason)" }
    static func tooMuchOutput(_ command: String) -> String { "\(command): its output is over the \(outputLimit >> 20) MiB a step records" }

    /// An attempt's outcome: a failure while attempts remain, else the recorded output.
    /// Text is recorded as text; bytes that are not UTF-8, or control characters JSON
    /// escapes six bytes each (64 MiB of NULs would make a 384 MiB record no replay can
    /// read), as base64.
    static func output(_ data: Data, code: Int32, attempt: StepAttempt, command: String) throws -> StepOutput {
        if code != 0 && !attempt.isLast { throw StepError("\(command) exited with \(code)") }
        let control = data.contains { $0 < 0x20 && $0 != 0x09 && $0 != 0x0a && $0 != 0x0d || $0 == 0x7f }
        if !control, let s = String(data: data, encoding: .utf8) { return StepOutput(stdout: s, exitCode: code) }
        return StepOutput(stdoutBase64: data.base64EncodedString(), exitCode: code)
    }

    /// The step through `session`; `attempt` runs CMD once (in this process, or in the
    /// small client for the daemon).
    func reply(_ session: HelperSession, attempt body: @escaping @Sendable (StepAttempt) async throws -> StepOutput) async throws -> HelperReply {
        let policy = RetryPolicy(maxAttempts: retries + 1, initialDelay: .seconds(2), maxDelay: .seconds(600))
        let name = name, semantics: StepSemantics = atMostOnce ? .atMostOnce : .atLeastOnce, timeout = timeout?.duration
        do {
            let out = try await session.performStoppable { ctx in
                try await ctx.stepWithAttempts(name, semantics: semantics, retry: policy, timeout: timeout, body)
            }
            return HelperReply(stdout: out.bytes, code: out.exitCode)
        } catch let e as StepFailedError {
            return HelperReply(stderr: "cairn: \(e.description)\n", code: e.error.type == "timeout" ? 124 : 1)
        }
    }
}

struct ApprovalHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "approval",
        abstract: "(script helper) Wait for a person's decision; print its value; exit 0 approved, 1 rejected.",
        discussion: prose("""
            The request file may be JSON {"summary": ..., "details": ...} or plain text.

            Example:
              if cairn approval send-reply --request draft.json > d.json; then
                ./send.sh
              fi
            """)
    )

    @Argument(help: "The gate name.") var gate: String
    @Option(name: .long, help: ArgumentHelp("What to show the approver (JSON or text file).", valueName: "file")) var request: String?
    @Option(name: .long, help: "Decide by the gate's timeout outcome after this long (e.g. 24h).") var timeout: DurationArgument?
    @Flag(name: .customLong("approve-on-timeout"), help: "The timeout approves (default: rejects).") var approveOnTimeout = false

    func validate() throws {
        guard Names.isValidName(gate) else { throw ValidationError("invalid gate name '\(gate)'") }
    }

    func run() async throws {
        var req = ApprovalRequest(summary: "Approve '\(gate)'?")
        if let request {
            // DurableFile.read also reads pipes (`--request <(jq ... )`).
            guard let data = try? DurableFile.read(FilePath(request), limit: 1 << 20) else { throw CLIError(.usage, "\(request): cannot read the request file") }
            if let j = try? JSONValue.parse(data) {
                if let problem = JSONValue.duplicateKeyProblem(in: data) {
                    throw CLIError(.usage, "\(request): the request \(problem)")
                }
                if let s = j["summary"]?.stringValue { req = ApprovalRequest(summary: s, details: j["details"]) } else { req.details = j }
            } else {
                req.summary = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            }
        }
        let session = try HelperSession.open("approval")
        let r = req
        let d = try await session.perform { ctx in
            try await ctx.approval(gate, request: r, timeout: timeout?.duration, onTimeout: approveOnTimeout ? .approve : .reject)
        }
        if let v = d.value { FileHandle.standardOutput.write(Data(v.canonicalText().utf8)) }
        if !d.approved, let reason = d.reason { FileHandle.standardError.write(Data("rejected: \(reason)\n".utf8)) }
        throw ExitCode(d.approved ? 0 : 1)
    }
}

struct EventHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "event",
        abstract: "(script helper) Wait for an event; print its data. Exit 4 if --timeout passes first.",
        discussion: "Example:\n  payment=$(cairn event payment-received --timeout 7d)"
    )

    @Argument(help: "The event name.") var name: String
    @Option(name: .long, help: "Give up after this long (e.g. 30m).") var timeout: DurationArgument?

    func validate() throws {
        guard Names.isValidName(name) else { throw ValidationError("invalid event name '\(name)'") }
    }

    func run() async throws {
        let session = try HelperSession.open("event")
        try await session.stoppingHere { try await reply(session) }.emit()
    }

    func reply(_ session: HelperSession) async throws -> HelperReply {
        let name = name, timeout = timeout?.duration
        guard let v = try await session.performStoppable({ ctx in try await ctx.waitForEvent(name, timeout: timeout) }) else { return HelperReply(code: 4) }
        return HelperReply(stdout: Data(v.canonicalText().utf8))
    }
}

struct SleepHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sleep",
        abstract: "(script helper) A durable sleep of any length (the script is stopped meanwhile).",
        discussion: "Example:\n  cairn sleep 2h"
    )

    @Argument(help: "90s, 15m, 2h, 7d…") var duration: DurationArgument

    func run() async throws {
        let session = try HelperSession.open("sleep")
        try await session.stoppingHere { try await reply(session) }.emit()
    }

    func reply(_ session: HelperSession) async throws -> HelperReply {
        let d = duration.duration
        try await session.performStoppable { ctx in try await ctx.sleep("sleep", for: d) }
        return HelperReply()
    }
}

struct NowHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "now", abstract: "(script helper) The current time (ISO-8601), recorded: the same on replay.")

    func run() async throws {
        let session = try HelperSession.open("now")
        try await session.stoppingHere { try await reply(session) }.emit()
    }

    func reply(_ session: HelperSession) async throws -> HelperReply {
        let t = try await session.performStoppable { ctx in ctx.now() }
        return HelperReply(stdout: Data((Timestamp.format(t) + "\n").utf8))
    }
}

struct UUIDHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "uuid", abstract: "(script helper) A random UUID, recorded: the same on replay.")

    func run() async throws {
        let session = try HelperSession.open("uuid")
        try await session.stoppingHere { try await reply(session) }.emit()
    }

    func reply(_ session: HelperSession) async throws -> HelperReply {
        let u = try await session.performStoppable { ctx in ctx.uuid() }
        return HelperReply(stdout: Data((u.uuidString.lowercased() + "\n").utf8))
    }
}

/// A helper's input: FILE, or stdin for `-` (up to 64 MiB from a file).
func readFileOrStdin(_ file: String, what: String) throws -> Data {
    if file == "-" { return FileHandle.standardInput.readDataToEndOfFile() }
    do {
        return try DurableFile.read(FilePath(file), limit: 64 << 20)
    } catch let e as SpoolError {
        throw CLIError(e.code == .notFound ? .usage : .failure, "\(file): cannot read \(what) (\(e.message))")
    }
}

struct ResultHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "result",
        abstract: "(script helper) Set the run's result: a JSON value from FILE or stdin (--text: plain text).",
        discussion: "Examples:\n  echo '{\"sent\": true}' | cairn result -\n  cairn result --text summary.txt"
    )

    @Argument(help: "A file, or - for stdin (default).") var file: String = "-"
    @Flag(name: .long, help: "The input is plain text (stored as a JSON string).") var text = false

    func run() async throws {
        let data = try readFileOrStdin(file, what: "the result")
        let value: JSONValue
        if text {
            value = .string(String(decoding: data, as: UTF8.self))
        } else {
            guard let v = try? JSONValue.parse(data) else { throw CLIError(.failure, "\(file == "-" ? "stdin" : file): the result is not valid JSON (use --text for plain text)") }
            if let problem = JSONValue.duplicateKeyProblem(in: data) {
                throw CLIError(.failure, "\(file == "-" ? "stdin" : file): the result \(problem)")
            }
            value = v
        }
        let session = try HelperSession.open("result")
        _ = try await session.perform { ctx in try ctx.recorded("result", nil) { value } }
    }
}

struct ContinueAsNewHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "continue-as-new",
        abstract: "(script helper) End this run and start a new run of the same workflow with a JSON input from FILE or stdin.",
        discussion: prose("""
            The run completes with {"continued_as": NEW_RUN}; the new run's run.json says
            "continued_from". Nothing after it may call a helper: end the script with it.
            Examples:
              echo '{"cursor": 5000}' | exec cairn continue-as-new -
              exec cairn continue-as-new next-input.json
            """)
    )

    @Argument(help: "A file, or - for stdin (default).") var file: String = "-"

    func run() async throws {
        // Judged as every --input is (empty, depth, JSON, a key twice, a blob-shaped value).
        let value = try Output.readJSONArgument(file, what: "the input")
        let session = try HelperSession.open("continue-as-new")
        let id = try await session.perform { ctx in try await ctx.continueAsNewRecording(value) }
        Output.line(id)
    }
}

/// Internal: runs a script workflow under the supervisor that kills its process group
/// when the daemon dies (see cairn_supervise_exec in CSystemShims).
struct SuperviseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "__supervise", abstract: "(internal) run a script workflow under a supervisor", shouldDisplay: false)

    @Option(name: .long) var parent: Int32
    @Argument(parsing: .postTerminator) var command: [String] = []

    func run() throws {
        guard let path = command.first else { throw CLIError(.usage, "__supervise: no command") }
        var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) }
        argv.append(nil)
        _ = cairn_supervise_exec(path, &argv, parent)
        throw CLIError(.failure, "\(path): cannot run: \(String(cString: strerror(errno)))")
    }
}

/// A step command's process and its descendants (found through /proc), so that a timeout
/// kills everything the command started, not only the command.
final class ProcessTree: Sendable {
    private struct State {
        var pid: pid_t = 0
        var killRequested = false
    }
    private let state = Mutex(State())

    /// This process becomes a child subreaper: a process of the command's tree whose parent
    /// dies (a double fork) is reparented here instead of escaping to init, so `killTree`
    /// still reaches it.
    init() { _ = cairn_set_child_subreaper() }

    /// The command's pid is known: a kill asked for before (a timeout that fired between the
    /// spawn and now) is done at once.
    func started(_ p: pid_t) {
        let kill = state.withLock { s in
            s.pid = p
            return s.killRequested
        }
        if kill { killTree() }
    }

    /// Kills every descendant of this process (the command and all it started), round after
    /// round until none is left alive: a process forking meanwhile is caught by the next.
    /// Before the command's pid is known, the kill is remembered for `started`.
    func killTree() {
        let known = state.withLock { s in
            s.killRequested = true
            return s.pid > 0
        }
        guard known else { return }
        let me = getpid()
        for round in 0..<200 {
            // Frozen first (SIGSTOP, parents first, until a scan finds no process not yet
            // stopped), then killed: killed one by one while running, a shell whose `sleep`
            // died before it did ran its next command (found by CI: `sleep 5; touch late`
            // touched). A process forking meanwhile is caught by the next round.
            var all = Self.descendants(of: me)
            for _ in 0..<100 where !all.isEmpty {
                for p in all { kill(p, SIGSTOP) }
                let again = Self.descendants(of: me)
                defer { all = again }
                if again.count == all.count { break }
            }
            for p in all { kill(p, SIGKILL) }
            let alive = Self.descendants(of: me, alive: true)
            if alive.isEmpty && round > 0 || all.isEmpty { break }
            usleep(1000)
        }
    }

    /// `alive`: not counting zombies (killed, not yet reaped) — their children are still listed.
    static func descendants(of root: pid_t, alive: Bool = false) -> [pid_t] {
        var children: [pid_t: [pid_t]] = [:]
        var zombies: Set<pid_t> = []
        for name in (try? Spool.list(FilePath("/proc"))) ?? [] {
            guard let p = pid_t(name), let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let ppid = pid_t(fields[1]) { children[ppid, default: []].append(p) }
            if fields.first == "Z" { zombies.insert(p) }
        }
        // Breadth first: parents before their children.
        var out: [pid_t] = []
        var queue = [root], next = 0
        while next < queue.count {
            let p = queue[next]
            next += 1
            for c in children[p] ?? [] where !out.contains(c) {
                out.append(c)
                queue.append(c)
            }
        }
        return alive ? out.filter { !zombies.contains($0) } : out
    }
}
