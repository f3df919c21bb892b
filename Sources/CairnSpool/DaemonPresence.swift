import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Which daemons serve a spool now: each running daemon writes `daemons/PID.json` (its pid,
/// host, start time and concurrency; the durable-write routine) and holds a shared `flock`
/// on it while it runs. A file nobody holds is a daemon that died (SIGKILL, a crash, a
/// reboot): `cairn status` says so, and the next daemon to start on that host removes it.
/// A reader probes with a non-blocking exclusive lock, so it needs only read access, and
/// never blocks a daemon.
public enum DaemonPresence {
    /// One announced daemon.
    public struct Entry: Sendable {
        /// `daemons/PID.json`'s contents.
        public var info: JSONValue
        /// True: it runs (its lock is held); false: it died; nil: this user cannot tell
        /// (the file is not readable) or it runs on another host (locks are per host).
        public var alive: Bool?
        /// The pid, from the file's name.
        public var pid: Int32
    }

    /// The directory of the announcements.
    public static func directory(_ spool: Spool) -> FilePath { spool.root.appending("daemons") }

    /// Announces this daemon; keep the returned descriptor open while it runs (the lock
    /// lives with it), and pass it to `withdraw` when it stops. Announcements of daemons
    /// that died on this host are removed first.
    public static func announce(_ spool: Spool, concurrency: Int?) throws -> Int32 {
        let dir = directory(spool)
        try spool.ensureRuntimeDirectory(dir)
        for e in list(spool) where e.alive == false && e.info["host"]?.stringValue == hostName {
            _ = unlink(dir.appending("\(e.pid).json").string)
        }
        var info: [String: JSONValue] = [
            "pid": .int(Int64(getpid())), "host": .string(hostName),
            "since": .string(Timestamp.format(Date())),
        ]
        if let concurrency { info["concurrency"] = .int(Int64(concurrency)) }
        let path = dir.appending("\(getpid()).json")
        // fsync'd like every file of the spool, so that every JSON file parses after a power
        // loss (CrashStateTests checks it); about one floor on the start path.
        try spool.durable.write(json: .object(info), to: path)
        let fd = open(path.string, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SpoolError(.io, path: path.string, errno: errno, "cannot open the daemon's announcement") }
        guard flock(fd, LOCK_SH | LOCK_NB) == 0 else {
            let e = errno
            close(fd)
            throw SpoolError(.io, path: path.string, errno: e, "cannot lock the daemon's announcement")
        }
        return fd
    }

    /// This daemon stops: its announcement goes.
    public static func withdraw(_ spool: Spool, fd: Int32) {
        _ = unlink(directory(spool).appending("\(getpid()).json").string)
        close(fd)
    }

    /// Every announcement, with whether its daemon runs.
    public static func list(_ spool: Spool) -> [Entry] {
        let dir = directory(spool)
        guard let names = try? Spool.list(dir) else { return [] }
        var out: [Entry] = []
        for name in names where name.hasSuffix(".json") {
            guard let pid = Int32(name.dropLast(5)), pid > 0 else { continue }
            let path = dir.appending(name)
            // Only a regular file is an announcement (a FIFO would block the read, a
            // directory or a symlink is nobody's); one that does not read as one is ignored.
            var st = stat()
            guard lstat(path.string, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
            let fd = open(path.string, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
            guard fd >= 0 else {
                // Not readable by this user: a daemon may or may not run.
                out.append(Entry(info: .object([:]), alive: nil, pid: pid))
                continue
            }
            defer { close(fd) }
            guard let info = try? DurableFile.readJSON(path, limit: 1 << 16), let host = info["host"]?.stringValue,
                  info["pid"]?.intValue == Int64(pid) else { continue }
            var alive: Bool? = nil
            if host == hostName {
                // Held by the daemon, and that process is there: anyone who may read the file
                // can hold a shared lock on it too, so the lock alone could be a forgery.
                let exists = kill(pid, 0) == 0 || errno == EPERM
                if flock(fd, LOCK_EX | LOCK_NB) == 0 {
                    alive = false
                    flock(fd, LOCK_UN)
                } else {
                    alive = errno == EWOULDBLOCK && exists
                }
            }
            out.append(Entry(info: info, alive: alive, pid: pid))
        }
        return out.sorted { $0.pid < $1.pid }
    }

    /// Whether some daemon serves the spool from this host now: true, false, or nil when
    /// this user cannot tell (another host's daemons, an unreadable directory).
    public static func served(_ spool: Spool) -> Bool? {
        let entries = list(spool)
        if entries.contains(where: { $0.alive == true }) { return true }
        if entries.contains(where: { $0.alive == nil }) { return nil }
        if !DurableFile.exists(directory(spool)) { return false }
        return access(directory(spool).string, R_OK | X_OK) == 0 ? false : nil
    }

    /// This host's name, as announcements record it.
    public static let hostName: String = {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "localhost" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }()
}
