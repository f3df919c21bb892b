import ArgumentParser
import CSystemShims
import Cairn
import CairnDaemon
import CairnSpool
import Foundation
import Tracing
import Glibc
import Logging
import Synchronization
import SystemPackage

/// Answers the helper calls of the scripts a daemon runs, for the small C client
/// `cairn-helper` (Sources/cairn-helper/cairn-helper.c) that the scripts find on their PATH
/// as `cairn`: a helper call then costs a small program's start and a round trip instead
/// of the whole binary's start. The work is the helper's own code (`HelperSession` under the
/// execution's flock, the same records and messages); a step's command runs in the client,
/// in the script's process group and environment. Anything not served here (`approval`,
/// `llm`, `result`, usage errors…) the client hands to the whole binary.
///
/// The socket lives in a private directory (mkdtemp, 0700) with the client's link; a
/// connection from another user is closed unread (SO_PEERCRED), and a request must name an
/// execution this daemon is running (its random id, known to the script's processes only).
///
/// Wire: frames of a 4-byte little-endian length, a type byte and a payload.
///   client → daemon  Q  "cairn-helper 1", exec id, run id, then argv[1…] (NUL-terminated strings)
///                    D  i32 status (exit code, 128+signal), u8 kind (0 ran, 1 could not start,
///                       2 output over the limit), CMD's stdout or the reason
///   daemon → client  F  run the whole binary with the same arguments
///                    O  i32 exit code, u32 stderr length, stderr, stdout: print, exit
///                    R  i32 attempt, u8 is-last, u32 index of CMD in argv, key, name (strings):
///                       run CMD once, answer D
///                    K  kill CMD and what it started (a timeout), then answer D
///                    X  stderr text: print it and kill the script's process group (a wait)
final class HelperServer: Sendable {
    static let version = "cairn-helper 1"

    let clientDirectory: String
    let socketPath: String
    private let listenFD: Int32
    private let logger: Logger
    private let executions = Mutex<[String: Execution]>([:])
    private let stopping = Atomic<Bool>(false)
    /// Connections being served; past `connectionLimit` a new one is closed at once and its
    /// client runs the whole binary (a script cannot make the daemon spend a thread, a
    /// descriptor and memory per connection without bound).
    private let connections = Atomic<Int>(0)
    static let connectionLimit = 64

    private struct Execution: Sendable {
        let run: String
        let spool: Spool
        let trace: ServiceContext?
        let contexts = HelperContexts()
    }

    private init(clientDirectory: String, socketPath: String, listenFD: Int32, logger: Logger) {
        self.clientDirectory = clientDirectory
        self.socketPath = socketPath
        self.listenFD = listenFD
        self.logger = logger
    }

    /// The client beside this executable, if there is one the daemon may trust.
    static func client(logger: Logger) -> String? {
        let exe = ScriptWorkflow.executablePath()
        let client = (exe as NSString).deletingLastPathComponent + "/cairn-helper"
        guard access(client, X_OK) == 0 else {
            logger.debug("no cairn-helper beside the executable: the scripts' helpers run the whole binary", metadata: ["path": "\(client)"])
            return nil
        }
        // Nothing the daemon has scripts execute may come from a place another user can write.
        if let problem = Spool.trustedFileProblem(client) {
            logger.warning("cairn-helper \(problem): not used; the scripts' helpers run the whole binary", metadata: ["path": "\(client)"])
            return nil
        }
        return client
    }

    /// Starts serving, or nil (logged) when there is no client to use or no socket can be made:
    /// the scripts' helpers then run the whole binary, as before.
    static func start(logger: Logger) -> HelperServer? {
        guard let client = client(logger: logger) else { return nil }
        let base = HelperLink.privateBase()
        let dir: String
        do {
            dir = try HelperLink.make(client, prefix: "cairn-helpers")
        } catch {
            logger.warning("\(error): the scripts' helpers run the whole binary")
            return nil
        }
        let socketPath = dir + "/helper.sock"
        func giveUp(_ what: String) -> HelperServer? {
            logger.warning("\(what): the scripts' helpers run the whole binary", metadata: ["dir": "\(dir)", "error": "\(String(cString: strerror(errno)))"])
            _ = unlink(socketPath)
            _ = unlink(dir + "/cairn")
            _ = rmdir(dir)
            return nil
        }
        guard var addr = unixAddress(socketPath) else { errno = ENAMETOOLONG; return giveUp("the helper socket's path is too long") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return giveUp("cannot create the helper socket") }
        let bound = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(fd, 128) == 0 else {
            close(fd)
            return giveUp("cannot listen on the helper socket")
        }
        let server = HelperServer(clientDirectory: dir, socketPath: socketPath, listenFD: fd, logger: logger)
        Thread.detachNewThread { server.acceptLoop() }
        // Off the start's path (a /tmp of thousands of names takes milliseconds to list, and a
        // restart's first step waits for nothing), and after this one listens.
        Thread.detachNewThread { removeAbandoned(in: base) }
        logger.debug("serving the scripts' helpers", metadata: ["socket": "\(socketPath)"])
        return server
    }

    /// `path` as a Unix socket address; nil when it does not fit (108 bytes on Linux).
    static func unixAddress(_ path: String) -> sockaddr_un? {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        guard path.utf8.count < MemoryLayout.size(ofValue: addr.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        return addr
    }

    /// The directories of this user's daemons that died without removing theirs (SIGKILL):
    /// private (0700, this user's), and nothing listens on their socket any more.
    static func removeAbandoned(in base: String) {
        for name in (try? Spool.list(FilePath(base))) ?? [] where name.hasPrefix("cairn-helpers-") {
            let dir = base + "/" + name
            var st = stat()
            guard lstat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == geteuid(), st.st_mode & 0o077 == 0 else { continue }
            let path = dir + "/helper.sock"
            guard var addr = unixAddress(path) else { continue }
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { return }
            let r = withUnsafePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            let e = errno
            close(fd)
            guard r != 0, e == ECONNREFUSED || e == ENOENT else { continue }
            _ = unlink(path)
            _ = unlink(dir + "/cairn")
            _ = rmdir(dir)
        }
    }

    /// Stops accepting and removes the directory (served connections end with their scripts).
    func stop() {
        guard !stopping.exchange(true, ordering: .sequentiallyConsistent) else { return }
        _ = shutdown(listenFD, Int32(SHUT_RDWR))
        _ = unlink(socketPath)
        _ = unlink(clientDirectory + "/cairn")
        _ = rmdir(clientDirectory)
    }

    func register(exec: String, run: String, spool: Spool, trace: ServiceContext?) {
        executions.withLock { $0[exec] = Execution(run: run, spool: spool, trace: trace) }
    }

    func unregister(exec: String) {
        _ = executions.withLock { $0.removeValue(forKey: exec) }
    }

    private func acceptLoop() {
        while true {
            let c = cairn_accept_cloexec(listenFD)
            if c < 0 {
                if stopping.load(ordering: .sequentiallyConsistent) { break }
                if errno == EINTR || errno == ECONNABORTED { continue }
                // Out of descriptors: the client falls back to the whole binary meanwhile.
                logger.warning("helper socket: accept failed", metadata: ["error": "\(String(cString: strerror(errno)))"])
                usleep(50_000)
                continue
            }
            // Only this user's processes: the directory is private, and this says it again.
            var uid: UInt32 = 0
            guard cairn_peer_uid(c, &uid) == 0, uid == geteuid() else {
                close(c)
                continue
            }
            guard connections.wrappingAdd(1, ordering: .sequentiallyConsistent).newValue <= Self.connectionLimit else {
                connections.wrappingSubtract(1, ordering: .sequentiallyConsistent)
                close(c)
                continue
            }
            let conn = HelperConnection(fd: c)
            Thread.detachNewThread {
                self.serve(conn)
                self.connections.wrappingSubtract(1, ordering: .sequentiallyConsistent)
            }
        }
        close(listenFD)
    }

    /// On the connection's own thread: reads the request, starts its work as a task, then
    /// delivers the client's frames to it until the client closes.
    private func serve(_ conn: HelperConnection) {
        conn.limitWait(seconds: 10)
        guard let q = conn.readFrame(), q.type == UInt8(ascii: "Q") else {
            conn.closed(cancelling: nil)
            return
        }
        conn.limitWait(seconds: 0)  // a step's command may run for hours
        let parts = q.payload.split(separator: 0, omittingEmptySubsequences: false).dropLast().map { String(decoding: $0, as: UTF8.self) }
        let task: Task<Void, Never>?
        if parts.count >= 4, parts[0] == Self.version, let e = executions.withLock({ $0[parts[1]] }), e.run == parts[2] {
            let exec = parts[1], args = Array(parts[3...])
            task = Task { await self.handle(conn, e, exec: exec, args: args) }
        } else {
            // Not an execution of this daemon's (over, or another's): the whole binary says why.
            conn.send(UInt8(ascii: "F"))
            conn.finish()
            task = nil
        }
        while let f = conn.readFrame() { conn.deliver(f) }
        conn.closed(cancelling: task)
    }

    private func handle(_ conn: HelperConnection, _ e: Execution, exec: String, args: [String]) async {
        defer { conn.finish() }
        let logger = logger
        func session(_ helper: String) throws -> HelperSession {
            try HelperSession(helper: helper, spool: e.spool, run: e.run, exec: exec, logger: logger, contexts: e.contexts, served: true, trace: e.trace)
        }
        let rest = Array(args.dropFirst())
        do {
            let reply: HelperReply
            switch args.first {
            case "step":
                // Its own parser, so that anything it refuses is refused by the whole binary
                // with the usual message.
                guard let cmd = try? StepHelper.parse(rest) else { return conn.send(UInt8(ascii: "F")) }
                let index = 1 + args.count - cmd.command.count
                let command = cmd.command[0]
                reply = try await cmd.reply(try session("step")) { attempt in
                    let done = try await conn.runAttempt(attempt, name: cmd.name, commandIndex: index)
                    switch done.kind {
                    case 1: throw StepError(StepHelper.cannotRun(command, String(decoding: done.data, as: UTF8.self)))
                    case 2: throw StepError(StepHelper.tooMuchOutput(command))
                    default: return try StepHelper.output(done.data, code: done.status, attempt: attempt, command: command)
                    }
                }
            case "now":
                guard (try? NowHelper.parse(rest)) != nil else { return conn.send(UInt8(ascii: "F")) }
                reply = try await NowHelper().reply(try session("now"))
            case "uuid":
                guard (try? UUIDHelper.parse(rest)) != nil else { return conn.send(UInt8(ascii: "F")) }
                reply = try await UUIDHelper().reply(try session("uuid"))
            case "sleep":
                guard let h = try? SleepHelper.parse(rest) else { return conn.send(UInt8(ascii: "F")) }
                reply = try await h.reply(try session("sleep"))
            case "event":
                guard let h = try? EventHelper.parse(rest) else { return conn.send(UInt8(ascii: "F")) }
                reply = try await h.reply(try session("event"))
            default:
                return conn.send(UInt8(ascii: "F"))
            }
            conn.sendOutput(reply)
        } catch let stop as HelperSession.Stop {
            conn.send(UInt8(ascii: "X"), Data((stop.message ?? "").utf8))
        } catch is CancellationError {
            // The client is gone (its script was stopped): nothing recorded, nobody to tell.
        } catch let e as CLIError {
            conn.sendOutput(HelperReply(stderr: "cairn: \(Names.printable(e.message))\n", code: e.code.rawValue))
        } catch let e as SpoolError {
            conn.sendOutput(HelperReply(stderr: "cairn: \(Names.printable(e.description))\n", code: e.code == .notFound ? CLIError.Code.notFound.rawValue : CLIError.Code.failure.rawValue))
        } catch {
            conn.sendOutput(HelperReply(stderr: "cairn: \(Names.printable(String(describing: error)))\n", code: CLIError.Code.failure.rawValue))
        }
    }
}

/// The helper server of one daemon, started when its first script runs.
final class HelperService: ScriptHelperService {
    private enum State {
        case idle
        case serving(HelperServer)
        case unavailable
        case stopped
    }

    private let state = Mutex<State>(.idle)
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func endpoint() -> (clientDirectory: String, socketPath: String)? {
        server.map { ($0.clientDirectory, $0.socketPath) }
    }

    private var server: HelperServer? {
        state.withLock { s in
            switch s {
            case .serving(let server) where access(server.clientDirectory + "/cairn", X_OK) == 0:
                return server
            case .serving(let server):
                // Its directory was removed under it (a /tmp cleaner): a new one, so that the
                // scripts from now on are served again (those running use the whole binary).
                logger.warning("the helper directory is gone; serving from a new one", metadata: ["dir": "\(server.clientDirectory)"])
                server.stop()
                guard let fresh = HelperServer.start(logger: logger) else {
                    s = .unavailable
                    return nil
                }
                s = .serving(fresh)
                return fresh
            case .unavailable, .stopped: return nil
            case .idle:
                guard let server = HelperServer.start(logger: logger) else {
                    s = .unavailable
                    return nil
                }
                s = .serving(server)
                return server
            }
        }
    }

    func register(exec: String, run: String, spool: Spool, trace: ServiceContext?) { server?.register(exec: exec, run: run, spool: spool, trace: trace) }

    func unregister(exec: String) { server?.unregister(exec: exec) }

    func stop() {
        state.withLock { s in
            if case .serving(let server) = s { server.stop() }
            s = .stopped
        }
    }
}

/// One client's connection: its thread reads frames, its task writes replies.
final class HelperConnection: Sendable {
    struct Frame {
        var type: UInt8
        var payload: Data
    }

    /// What the client says of one run of CMD.
    struct Done: Sendable {
        var status: Int32
        var kind: UInt8
        var data: Data
    }

    private struct State {
        var closed = false
        var pending: CheckedContinuation<Done, any Error>?
    }

    private let fd: Int32
    private let state = Mutex(State())

    /// The largest frame a client may send: a step's output and a little.
    static let frameLimit = StepHelper.outputLimit + 4096

    init(fd: Int32) { self.fd = fd }

    /// The next frame, or nil at the end (or a frame that breaks the protocol). Only the
    /// client's two kinds are taken, each up to its own limit (a request's arguments, a
    /// step's output), and memory grows with the bytes that arrive, not with the length a
    /// frame claims.
    func readFrame() -> Frame? {
        var header = [UInt8](repeating: 0, count: 5)
        guard readAll(&header, 5) else { return nil }
        let length = Int(header[0]) | Int(header[1]) << 8 | Int(header[2]) << 16 | Int(header[3]) << 24
        let limit: Int
        switch header[4] {
        case UInt8(ascii: "Q"): limit = Self.requestLimit
        case UInt8(ascii: "D"): limit = Self.frameLimit
        default: return nil
        }
        guard length >= 1, length <= limit else { return nil }
        var payload = Data()
        var chunk = [UInt8](repeating: 0, count: min(length - 1, 1 << 20))
        while payload.count < length - 1 {
            let n = min(chunk.count, length - 1 - payload.count)
            guard readAll(&chunk, n) else { return nil }
            payload.append(contentsOf: chunk[0..<n])
        }
        return Frame(type: header[4], payload: payload)
    }

    /// A request's arguments: far above what a command line holds (ARG_MAX is 2 MiB with
    /// the environment), far below what would hurt the daemon.
    static let requestLimit = 4 << 20

    /// How long a new connection may take to send its request.
    func limitWait(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    private func readAll(_ buf: inout [UInt8], _ n: Int) -> Bool {
        var got = 0
        while got < n {
            let r = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, n - got) }
            if r > 0 { got += r } else if r < 0 && errno == EINTR { continue } else { return false }
        }
        return true
    }

    func send(_ type: UInt8, _ payload: Data = Data()) {
        let frame = Self.frame(type, payload)
        state.withLock { s in
            guard !s.closed else { return }
            Self.write(fd, frame: frame)
        }
    }

    static func frame(_ type: UInt8, _ payload: Data) -> Data {
        var frame = Data(capacity: payload.count + 5)
        let length = UInt32(payload.count + 1)
        frame.append(contentsOf: [UInt8(length & 0xff), UInt8(length >> 8 & 0xff), UInt8(length >> 16 & 0xff), UInt8(length >> 24 & 0xff), type])
        frame.append(payload)
        return frame
    }

    /// All of `frame`, or as much as the peer takes before it goes (callers hold the lock).
    static func write(_ fd: Int32, frame: Data) {
        frame.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let w = Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if w > 0 { sent += w } else if w < 0 && errno == EINTR { continue } else { return }
            }
        }
    }

    func sendOutput(_ r: HelperReply) {
        var p = Data()
        p.appendLE(UInt32(bitPattern: r.code))
        let err = Data(r.stderr.utf8)
        p.appendLE(UInt32(err.count))
        p.append(err)
        p.append(r.stdout)
        send(UInt8(ascii: "O"), p)
    }

    /// Asks the client to run CMD once; returns what it says. A cancelled attempt (the
    /// step's timeout) asks the client to kill CMD, and returns when it has.
    func runAttempt(_ attempt: StepAttempt, name: String, commandIndex: Int) async throws -> Done {
        var p = Data()
        p.appendLE(UInt32(bitPattern: Int32(attempt.number)))
        p.append(attempt.isLast ? 1 : 0)
        p.appendLE(UInt32(commandIndex))
        p.append(Data(attempt.idempotencyKey.utf8))
        p.append(0)
        p.append(Data(name.utf8))
        p.append(0)
        let request = p
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Done, any Error>) in
                // R is written under the lock that registers the attempt: a cancellation's K
                // (sent under the same lock) then comes after it, or the attempt is refused —
                // never a K the client ignores followed by an R nobody will stop.
                let refused: (any Error)? = state.withLock { s in
                    if s.closed { return CancellationError() }
                    if Task.isCancelled { return CancellationError() }
                    s.pending = c
                    Self.write(fd, frame: Self.frame(UInt8(ascii: "R"), request))
                    return nil
                }
                if let refused { return c.resume(throwing: refused) }
            }
        } onCancel: {
            // The attempt ends when the client says CMD is dead (its D), not before: a
            // timeout is recorded only after the kill, as in a helper process (a client that
            // is stopped meanwhile holds the record back, never the other way round).
            send(UInt8(ascii: "K"))
        }
    }

    /// A frame from the client: a D answers the attempt waiting for it (one that arrives
    /// after a kill answers nobody).
    func deliver(_ f: Frame) {
        guard f.type == UInt8(ascii: "D"), f.payload.count >= 5 else { return }
        let b = [UInt8](f.payload.prefix(5))
        let status = Int32(bitPattern: UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24)
        let done = Done(status: status, kind: b[4], data: f.payload.dropFirst(5))
        let p = state.withLock { s in
            let p = s.pending
            s.pending = nil
            return p
        }
        p?.resume(returning: done)
    }

    /// The client is gone: its work is cancelled before the attempt hears of it, so that
    /// nothing is recorded (as when a helper process is killed).
    func closed(cancelling task: Task<Void, Never>?) {
        task?.cancel()
        let p = state.withLock { s in
            s.closed = true
            close(fd)
            let p = s.pending
            s.pending = nil
            return p
        }
        p?.resume(throwing: CancellationError())
    }

    /// No more replies: the client sees the end after the last one.
    func finish() {
        state.withLock { s in
            if !s.closed { _ = shutdown(fd, Int32(SHUT_WR)) }
        }
    }
}

extension Data {
    fileprivate mutating func appendLE(_ v: UInt32) {
        append(contentsOf: [UInt8(v & 0xff), UInt8(v >> 8 & 0xff), UInt8(v >> 16 & 0xff), UInt8(v >> 24 & 0xff)])
    }
}
