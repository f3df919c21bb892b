import CSystemShims
import Foundation
import Synchronization
import SystemPackage

/// The one routine every spool write goes through (SPEC §1.3, atomic files):
/// write a temp file in the spool's `tmp/` (same filesystem), fsync it, rename it into
/// place (with RENAME_NOREPLACE when the first writer must win), then fsync the
/// destination directory so the rename itself is durable.
///
/// fsync and rename errors are never swallowed or retried: EIO after fsync means the page
/// cache may have dropped the data, so the write fails loudly with the file named.
public struct DurableFile: Sendable {
    /// The staging directory (SPOOL/tmp). Must be on the same filesystem as every target.
    public let tmpDirectory: FilePath

    /// A writer staging its temporary files in `tmpDirectory` (the spool's `tmp/`).
    public init(tmpDirectory: FilePath) {
        self.tmpDirectory = tmpDirectory
    }

    /// Whether a write may replace an existing file.
    public enum Mode: Sendable {
        /// Replace any existing file (state.json, request files).
        case replace
        /// Fail with `.exists` if the target exists (journal records, runs, blobs, keys).
        case noReplace
    }

    /// Whether the write must survive a power loss.
    public enum Durability: Sendable {
        /// fsync the file before the rename and its directory after (every spool file).
        case durable
        /// Atomic (readers see the old file or the new one, whole) but not fsync'd: only for
        /// the coordination files of one script execution in tmp/ (its exec state), which
        /// nothing reads after a restart (a new execution writes its own).
        case atomicOnly
    }

    private static let counter = Atomic<UInt64>(0)

    /// A unique temp path in tmp/: `PID.COUNTER.RANDOM.HINT.tmp`. Random as well as unique:
    /// a staging directory another user can write (a report's or a metrics file's directory)
    /// must not let them take the next name first and keep the file stale.
    public func tempPath(hint: String) -> FilePath {
        let n = Self.counter.add(1, ordering: .relaxed).newValue
        let r = UInt64.random(in: 0..<UInt64.max)
        let safe = String(hint.prefix(40).map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." ? $0 : "_" })
        return tmpDirectory.appending("\(getpid()).\(n).\(String(r, radix: 36)).\(safe).tmp")
    }

    /// Durably writes `data` to `path` (a staging name found taken is tried again with another).
    public func write(_ data: Data, to path: FilePath, mode: Mode = .replace, durability: Durability = .durable) throws {
        try Self.commit(data, staging: { tempPath(hint: path.lastComponent?.string ?? "file") }, to: path, mode: mode, durability: durability)
    }

    /// The same durable write for a person's drop (`cairn approve`, `signal`, `cancel`…):
    /// staged as a dot-file in the destination directory itself, Maildir-style, so a person
    /// needs no access to the runtime's tmp/. First writer wins. The daemon ignores dot-files.
    public static func drop(_ data: Data, to path: FilePath, permissions: FilePermissions = [.ownerReadWrite, .groupRead, .otherRead]) throws {
        // A random staging name (others in the group can create names in a drop directory,
        // so a predictable one could be taken first), tried again if it is taken anyway.
        try commit(data, staging: {
            let n = counter.add(1, ordering: .relaxed).newValue
            let r = UInt64.random(in: 0..<UInt64.max)
            return path.removingLastComponent().appending(".\(path.lastComponent?.string ?? "drop").\(getpid()).\(n).\(String(r, radix: 36)).tmp")
        }, to: path, mode: .noReplace, permissions: permissions)
    }

    /// `commit` with staging names from `staging()` (random ones): a name someone else took
    /// first is tried again with another, up to 8 times.
    static func commit(_ data: Data, staging: () -> FilePath, to path: FilePath, mode: Mode, durability: Durability = .durable, permissions: FilePermissions = [.ownerReadWrite, .groupRead, .otherRead]) throws {
        for attempt in 1...8 {
            let name = staging()
            do {
                try commit(data, staging: name, to: path, mode: mode, durability: durability, permissions: permissions)
                return
            } catch let e as SpoolError where e.path == name.string && e.errno == EEXIST && attempt < 8 {
                continue
            }
        }
    }

    /// write → fsync → rename → fsync(directory), with `staging` as the temp file.
    static func commit(_ data: Data, staging tmp: FilePath, to path: FilePath, mode: Mode, durability: Durability = .durable, permissions: FilePermissions = [.ownerReadWrite, .groupRead, .otherRead]) throws {
        #if CAIRN_TEST_HOOKS
        let fault = WriteFault.current
        let landsIfFailed = try fault?.beforeWrite(path)
        #endif
        do {
            let fd = try Self.open(tmp, [.create, .exclusiveCreate, .closeOnExec], permissions: permissions)
            do {
                try data.withUnsafeBytes { buf in
                    _ = try fd.writeAll(buf)
                }
            } catch {
                try? fd.close()
                throw SpoolError(.io, path: tmp.string, errno: (error as? Errno)?.rawValue, "cannot write temp file")
            }
            CrashPoints.reached("write.before-fsync")
            if durability == .durable { try fsync(fd, path: tmp) }
            try close(fd, path: tmp)
        } catch {
            _ = unlink(tmp.string)
            throw error
        }
        CrashPoints.reached("write.before-rename")
        do {
            try rename(tmp, to: path, mode: mode)
        } catch {
            _ = unlink(tmp.string)
            throw error
        }
        CrashPoints.reached("write.before-dirsync")
        if durability == .durable { try fsyncDirectory(path.removingLastComponent()) }
        CrashPoints.reached("write.after-dirsync")
        #if CAIRN_TEST_HOOKS
        if landsIfFailed == true { try fault?.afterWrite(path) }
        #endif
    }

    /// Writes a value in Cairn's canonical JSON text.
    public func write(json: JSONValue, to path: FilePath, mode: Mode = .replace, durability: Durability = .durable) throws {
        try write(json.canonicalData(), to: path, mode: mode, durability: durability)
    }

    /// Makes a fresh, empty staging directory under tmp/ for building a directory tree
    /// that will appear whole by one rename (a new run).
    public func makeStagingDirectory(hint: String) throws -> FilePath {
        let dir = tempPath(hint: hint)
        guard mkdir(dir.string, 0o755) == 0 else {
            throw SpoolError(.io, path: dir.string, errno: errno, "cannot create staging directory")
        }
        return dir
    }

    /// Writes a file inside a staging directory: plain write + fsync, no rename (the
    /// whole directory is renamed later; the caller fsyncs the directories).
    public static func writeStaged(_ data: Data, to path: FilePath) throws {
        let fd = try open(path, [.create, .exclusiveCreate, .closeOnExec], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        do {
            try data.withUnsafeBytes { buf in _ = try fd.writeAll(buf) }
        } catch {
            try? fd.close()
            throw SpoolError(.io, path: path.string, errno: (error as? Errno)?.rawValue, "cannot write")
        }
        try fsync(fd, path: path)
        try close(fd, path: path)
    }

    // MARK: syscalls with errors that name the file

    static func open(_ path: FilePath, _ options: FileDescriptor.OpenOptions, permissions: FilePermissions? = nil) throws -> FileDescriptor {
        do {
            return try FileDescriptor.open(path, .writeOnly, options: options, permissions: permissions, retryOnInterrupt: true)
        } catch let e as Errno {
            throw SpoolError(.io, path: path.string, errno: e.rawValue, "cannot create file")
        }
    }

    static func fsync(_ fd: FileDescriptor, path: FilePath) throws {
        if Glibc.fsync(fd.rawValue) != 0 {
            let e = errno
            try? fd.close()
            throw SpoolError(.io, path: path.string, errno: e, "fsync failed; the data may not be on disk")
        }
    }

    static func close(_ fd: FileDescriptor, path: FilePath) throws {
        do { try fd.close() } catch let e as Errno {
            throw SpoolError(.io, path: path.string, errno: e.rawValue, "close failed; the data may not be on disk")
        }
    }

    /// How first-writer-wins renames are made: `renameat2(RENAME_NOREPLACE)` where the
    /// filesystem has it; where it answers EINVAL or ENOSYS (GlusterFS's FUSE mount, some
    /// network filesystems), the classic Maildir way: `link` then `unlink` for a file (link
    /// fails with EEXIST when the name is taken), and plain `rename` for a directory (it
    /// cannot replace a non-empty directory, and a run directory is never empty). Found out
    /// once per process — by `Spool.create`'s probe, or by the first EINVAL — then kept.
    public enum NoReplaceMethod: Int, Sendable { case renameat2 = 0, link = 1 }
    private static let noReplaceMethod = Atomic<Int>(NoReplaceMethod.renameat2.rawValue)
    /// The method in use in this process.
    public static var noReplace: NoReplaceMethod { NoReplaceMethod(rawValue: noReplaceMethod.load(ordering: .relaxed)) ?? .renameat2 }

    /// Tries renameat2(RENAME_NOREPLACE) in `dir` (a scratch file), and switches this
    /// process to the link method if the filesystem refuses it.
    public static func probeNoReplace(in dir: FilePath) {
        let a = dir.appending(".probe-\(getpid())-a").string, b = dir.appending(".probe-\(getpid())-b").string
        let fd = Glibc.open(a, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        Glibc.close(fd)
        if cairn_rename_noreplace(AT_FDCWD, a, AT_FDCWD, b) != 0, errno == EINVAL || errno == ENOSYS {
            noReplaceMethod.store(NoReplaceMethod.link.rawValue, ordering: .relaxed)
        }
        _ = unlink(a)
        _ = unlink(b)
    }

    /// rename(2), or first-writer-wins for `.noReplace` (see `NoReplaceMethod`).
    public static func rename(_ from: FilePath, to: FilePath, mode: Mode) throws {
        #if CAIRN_TEST_HOOKS
        let fault = WriteFault.current
        let landsIfFailed = try fault?.beforeWrite(to)
        #endif
        var rc: Int32
        switch mode {
        case .replace: rc = Glibc.rename(from.string, to.string)
        case .noReplace:
            if noReplace == .renameat2 {
                rc = cairn_rename_noreplace(AT_FDCWD, from.string, AT_FDCWD, to.string)
                if rc != 0, errno == EINVAL || errno == ENOSYS {
                    noReplaceMethod.store(NoReplaceMethod.link.rawValue, ordering: .relaxed)
                    rc = renameLinking(from.string, to.string)
                }
            } else {
                rc = renameLinking(from.string, to.string)
            }
        }
        if rc != 0 {
            let e = errno
            if e == EEXIST || e == ENOTEMPTY {
                throw SpoolError(.exists, path: to.string, errno: e, "already exists")
            }
            throw SpoolError(.io, path: to.string, errno: e, "rename from \(from.string) failed")
        }
        #if CAIRN_TEST_HOOKS
        if landsIfFailed == true { try fault?.afterWrite(to) }
        #endif
    }

    /// The link method of first-writer-wins (see `NoReplaceMethod`); -1 with errno set.
    static func renameLinking(_ from: String, _ to: String) -> Int32 {
        var st = stat()
        guard lstat(from, &st) == 0 else { return -1 }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            // rename(2) replaces only an empty directory; refuse one that exists at all.
            var t = stat()
            if lstat(to, &t) == 0 { errno = EEXIST; return -1 }
            return Glibc.rename(from, to)
        }
        guard link(from, to) == 0 else { return -1 }
        _ = unlink(from)
        return 0
    }

    /// fsync of a directory, which makes the names in it (renames, creations) durable.
    public static func fsyncDirectory(_ dir: FilePath) throws {
        let fd = Glibc.open(dir.isEmpty ? "." : dir.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 {
            throw SpoolError(.io, path: dir.string, errno: errno, "cannot open directory to fsync it")
        }
        defer { Glibc.close(fd) }
        if Glibc.fsync(fd) != 0 {
            throw SpoolError(.io, path: dir.string, errno: errno, "directory fsync failed; a rename may not be on disk")
        }
    }

    /// mkdir that tolerates an existing directory, then fsyncs the parent.
    public static func makeDirectory(_ dir: FilePath, durable: Bool = true) throws {
        if mkdir(dir.string, 0o755) != 0 {
            let e = errno
            if e == EEXIST { return }
            throw SpoolError(.io, path: dir.string, errno: e, "cannot create directory")
        }
        if durable { try fsyncDirectory(dir.removingLastComponent()) }
    }

    /// Reads a whole file (refusing ones over `limit` bytes). On a shared filesystem a read
    /// that races the file's replacement through another client can answer ESTALE, or
    /// ENOENT for a name that rename(2) never removed: both are retried before they count
    /// (ESTALE always, for up to 2 s; ENOENT only when `sharedFilesystem`, for about 30 ms).
    public static func read(_ path: FilePath, limit: Int = 256 << 20, missingMayBeTransient: Bool = sharedFilesystem) throws -> Data {
        var attempt = 0
        let started = ContinuousClock.now
        while true {
            do {
                return try readOnce(path, limit: limit)
            } catch let e as SpoolError where (e.errno == ESTALE && ContinuousClock.now - started < .seconds(2)) || (e.errno == ENOENT && missingMayBeTransient && attempt < 5) {
                // ESTALE is never a final answer: look again for up to 2 s (a FUSE client
                // keeps a stale name until its entry timeout, 1 s by default on GlusterFS;
                // under load retries for 0.3 s were not enough); a missing name, for ~30 ms.
                attempt += 1
                usleep(UInt32(e.errno == ESTALE ? min(5_000 * attempt, 50_000) : 2_000 * attempt))
            }
        }
    }

    private static let shared = Atomic<Bool>(false)
    /// Whether this process works on a filesystem other hosts share (set by the daemon's and
    /// `cairn wait`'s `--rescan-interval`, and by the link fallback of first-writer-wins).
    public static var sharedFilesystem: Bool { shared.load(ordering: .relaxed) || noReplace == .link }
    /// Marks this process as working on a shared filesystem: `sharedFilesystem` is true from now on.
    public static func assumeSharedFilesystem() { shared.store(true, ordering: .relaxed) }

    static func readOnce(_ path: FilePath, limit: Int) throws -> Data {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec], retryOnInterrupt: true)
        } catch let e as Errno {
            if e == .noSuchFileOrDirectory { throw SpoolError(.notFound, path: path.string, errno: e.rawValue, "no such file") }
            throw SpoolError(.io, path: path.string, errno: e.rawValue, "cannot open")
        }
        defer { try? fd.close() }
        var out = Data()
        var buf = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n: Int
            do {
                n = try buf.withUnsafeMutableBytes { try fd.read(into: $0, retryOnInterrupt: true) }
            } catch let e as Errno {
                throw SpoolError(.io, path: path.string, errno: e.rawValue, "read failed")
            }
            if n == 0 { break }
            out.append(contentsOf: buf[0..<n])
            if out.count > limit { throw SpoolError(.tooLarge, path: path.string, "larger than \(limit) bytes") }
        }
        return out
    }

    /// The last `bytes` bytes of a file (fewer when it is shorter; empty when it cannot be
    /// read): one pread at the end, so memory does not grow with the file.
    public static func readTail(_ path: FilePath, bytes: Int) -> Data {
        let fd = Glibc.open(path.string, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return Data() }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return Data() }
        let size = Int(st.st_size)
        let start = max(0, size - bytes)
        var buf = [UInt8](repeating: 0, count: min(bytes, size))
        var got = 0
        while got < buf.count {
            let n = buf.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress! + got, $0.count - got, off_t(start + got)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            got += n
        }
        return Data(buf[0..<got])
    }

    /// Reads and parses a JSON file.
    public static func readJSON(_ path: FilePath, limit: Int = 256 << 20) throws -> JSONValue {
        try JSONValue.parse(read(path, limit: limit), file: path.string)
    }

    /// Appends one line to a file (created if missing) and fsyncs it: for append-only logs
    /// outside the journal (an outbox, an effects log). Not atomic against a crash mid-write.
    public static func appendLine(_ line: String, to path: String) throws {
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SpoolError(.io, path: path, errno: errno, "cannot open to append") }
        defer { Glibc.close(fd) }
        let data = Array((line + "\n").utf8)
        guard Glibc.write(fd, data, data.count) == data.count else { throw SpoolError(.io, path: path, errno: errno, "cannot append") }
        guard Glibc.fsync(fd) == 0 else { throw SpoolError(.io, path: path, errno: errno, "fsync failed after append") }
    }

    /// Whether anything exists at `path` (a symlink is not followed).
    public static func exists(_ path: FilePath) -> Bool {
        exists(atPath: path.string)
    }

    /// Whether anything exists at `path` (a symlink is not followed).
    public static func exists(atPath path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }
}
