import CairnSpool
import Foundation
import Synchronization
import SystemPackage

/// A directory the CLI or the daemon writes for people to read (`report --out`,
/// `daemon --report-dir`, the directory of `--metrics-file`), judged as the spool's trusted
/// paths are, along the whole path: every directory on the way must be the caller's or
/// root's, and writable by nobody else unless sticky (as /tmp: others cannot rename what is
/// not theirs); every symlink on the way the caller's or root's; the directory itself the
/// caller's or root's and writable by nobody else. Otherwise someone else could have chosen
/// where the pages go (a symlink planted in a sticky directory, or a directory of theirs
/// higher up swapped for a symlink after the check — root would then write anywhere), or
/// read and replace what is written (pages showing run inputs and approval requests).
final class OutputDirectory: Sendable {
    /// The absolute path as given (for messages).
    let given: FilePath
    private let flag: String
    private let create: Bool
    private let spoolRoot: String?
    /// The judged directory, held open: writes go through `/proc/self/fd/N`, so a directory
    /// on the way that changes hands later and is swapped for a symlink cannot redirect them
    /// (found by an attack: the check alone was at start).
    private let fd: Mutex<Int32>

    private init(given: FilePath, flag: String, create: Bool, spoolRoot: String?, fd: Int32) {
        self.given = given
        self.flag = flag
        self.create = create
        self.spoolRoot = spoolRoot
        self.fd = Mutex(fd)
    }

    deinit { fd.withLock { _ = close($0) } }

    /// The directory, judged and held open, made if missing when `create`; a CLIError naming
    /// the flag otherwise. Not inside `spool` (its runs/ would list the pages as runs).
    static func trusted(_ given: String, flag: String, create: Bool, spool: Spool? = nil) throws -> OutputDirectory {
        let root = spool.flatMap { realpath($0.root.string) }
        let fd = try open(given, flag: flag, create: create, spoolRoot: root)
        return OutputDirectory(given: FilePath(Spool.absolute(given)), flag: flag, create: create, spoolRoot: root, fd: fd)
    }

    /// Where to write now: the directory held, while the path given still leads to it. When
    /// it was removed, or the path leads elsewhere now (moved, replaced: a third attack found
    /// a removed directory written to for ever), the path is judged again and what it leads
    /// to held instead; what the judge refuses is this write's error (logged and counted by
    /// the daemon, tried again later). `body` runs with the lock held: no other writer can
    /// close the descriptor (and the number be reused for another directory) meanwhile.
    func writing<T>(_ body: (FilePath) throws -> T) throws -> T {
        try fd.withLock { fd in
            var held = stat(), now = stat()
            if !(fstat(fd, &held) == 0 && held.st_nlink > 0 && stat(given.string, &now) == 0 && now.st_dev == held.st_dev && now.st_ino == held.st_ino) {
                let fresh = try Self.open(given.string, flag: flag, create: create, spoolRoot: spoolRoot)
                close(fd)
                fd = fresh
            }
            return try body(FilePath("/proc/self/fd/\(fd)"))
        }
    }

    /// An error about a file written through `writing`, told with the path given rather
    /// than /proc/self/fd/N.
    func describe(_ error: any Error) -> String {
        var text = "\(error)"
        for n in text.ranges(of: /\/proc\/self\/fd\/\d+/).reversed() { text.replaceSubrange(n, with: given.string) }
        return text
    }

    static func realpath(_ path: String) -> String? {
        guard let p = Glibc.realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    /// The walk, the judgement and the open; the directory's descriptor.
    private static func open(_ given: String, flag: String, create: Bool, spoolRoot: String?) throws -> Int32 {
        guard !given.isEmpty else { throw CLIError(.usage, "\(flag) needs a directory") }
        let path = Spool.absolute(given)
        func refuse(_ why: String) -> CLIError { CLIError(.usage, "\(flag) \(given): \(why)") }
        func judge(_ dir: String, last: Bool) throws {
            var st = stat()
            guard stat(dir, &st) == 0 else { throw refuse("\(dir): \(String(cString: strerror(errno)))") }
            if let problem = ownerProblem(st) { throw refuse("\(last ? "the directory" : "the directory on the way") \(dir) \(problem); give a directory of yours") }
            let writable = st.st_mode & 0o022 != 0
            if writable && (last || st.st_mode & S_ISVTX == 0) {
                throw refuse("\(dir) is writable by \(st.st_mode & 0o002 != 0 ? "others" : "its group") (mode \(String(st.st_mode & 0o7777, radix: 8))): they could replace what is written there")
            }
        }

        // The walk: `resolved` is a real directory path judged so far; `rest` the components
        // still to go (a symlink's target is spliced in front of them).
        var resolved = "/"
        var rest = path.split(separator: "/").map(String.init)
        var hops = 0
        try judge("/", last: rest.isEmpty)
        while !rest.isEmpty {
            let name = rest.removeFirst()
            if name == "." || name.isEmpty { continue }
            if name == ".." {
                resolved = (resolved as NSString).deletingLastPathComponent
                continue
            }
            let next = resolved == "/" ? "/" + name : resolved + "/" + name
            var st = stat()
            if lstat(next, &st) != 0 {
                guard errno == ENOENT, create else { throw refuse("\(next): \(String(cString: strerror(errno)))") }
                guard mkdir(next, 0o755) == 0 || errno == EEXIST else { throw refuse("cannot create \(next): \(String(cString: strerror(errno)))") }
                guard lstat(next, &st) == 0 else { throw refuse("\(next): \(String(cString: strerror(errno)))") }
            }
            if (st.st_mode & S_IFMT) == S_IFLNK {
                if let problem = ownerProblem(st) { throw refuse("the symlink \(next) \(problem)") }
                hops += 1
                guard hops <= 32, let target = try? FileManager.default.destinationOfSymbolicLink(atPath: next) else { throw refuse("too many symlinks, or one that cannot be read") }
                if target.hasPrefix("/") { resolved = "/" }
                rest = target.split(separator: "/").map(String.init) + rest
                continue
            }
            guard (st.st_mode & S_IFMT) == S_IFDIR else { throw refuse("\(next) is not a directory") }
            resolved = next
            try judge(next, last: rest.allSatisfy { $0 == "." || $0.isEmpty })
        }

        // The directory the walk ended in is the one written to, whatever the last
        // component was (a path ending in ".." ends in the directory above, which must meet
        // the final rule, not the rule for a directory on the way).
        try judge(resolved, last: true)
        var judged = stat()
        guard stat(resolved, &judged) == 0 else { throw refuse("\(resolved): \(String(cString: strerror(errno)))") }
        if let spoolRoot, resolved == spoolRoot || resolved.hasPrefix(spoolRoot + "/") {
            throw refuse("\(resolved) is inside the spool (\(spoolRoot)); give a directory outside it")
        }
        let fd = Glibc.open(resolved, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw refuse("cannot open \(resolved): \(String(cString: strerror(errno)))") }
        var opened = stat()
        guard fstat(fd, &opened) == 0, opened.st_dev == judged.st_dev, opened.st_ino == judged.st_ino else {
            close(fd)
            throw refuse("\(resolved) changed while it was checked")
        }
        return fd
    }

    static func ownerProblem(_ st: stat) -> String? {
        guard st.st_uid != geteuid(), st.st_uid != 0 else { return nil }
        return "is owned by \(Principal.userName(uid: st.st_uid) ?? String(st.st_uid)), neither you (\(Principal.userName(uid: geteuid()) ?? String(geteuid()))) nor root"
    }
}

/// A write's error as told with the path given (OutputDirectory.describe).
struct OutputError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
