import CSystemShims
import Foundation
import SystemPackage

/// What `cairn doctor` finds out about the filesystem under a directory: each primitive the
/// spool relies on, tried for real in a scratch directory (removed afterwards), and the mode
/// Cairn will run in there. Checks made from one host; what needs two hosts (whether a lock
/// or a rename made through one client is seen by another) is named, not guessed.
public struct FilesystemCheck: Sendable {
    /// How one primitive fared: works, works through a fallback, works with a caveat, or fails.
    public enum Verdict: String, Sendable { case ok, fallback, warning, failed }

    /// One checked primitive.
    public struct Item: Sendable {
        /// The primitive's name.
        public var name: String
        /// How it fared.
        public var verdict: Verdict
        /// What was seen, for people.
        public var detail: String
        /// Cairn cannot run here without it.
        public var required: Bool

        /// A checked primitive.
        public init(name: String, verdict: Verdict, detail: String, required: Bool) {
            self.name = name
            self.verdict = verdict
            self.detail = detail
            self.required = required
        }
    }

    /// The directory checked.
    public var directory: String
    /// statfs(2)'s f_type, as a name ("ext4", "fuse", "nfs", …) or hex when unknown.
    public var filesystem: String
    /// A filesystem other hosts may share (network or FUSE): inotify does not see their writes.
    public var shared: Bool
    /// Every primitive checked, in order.
    public var items: [Item] = []

    /// Every required primitive works.
    public var usable: Bool { !items.contains { $0.required && $0.verdict == .failed } }

    /// Known f_type magic numbers (linux/magic.h).
    static let filesystems: [Int: (name: String, shared: Bool)] = [
        0xEF53: ("ext2/3/4", false), 0x5846_5342: ("xfs", false), 0x9123_683E: ("btrfs", false),
        0x0102_1994: ("tmpfs", false), 0x2FC1_2FC1: ("zfs", false), 0x794C_7630: ("overlayfs", false),
        0xF2F5_2010: ("f2fs", false), 0x6573_5546: ("fuse", true), 0x6969: ("nfs", true),
        0x00C3_6400: ("ceph", true), 0xFF53_4D42: ("cifs", true), 0xFE53_4D42: ("smb2", true),
        0x0102_1997: ("9p", true), 0x0BD0_0BD0: ("lustre", true), 0x4750_4653: ("gpfs", true),
    ]

    /// Whether `directory` is on a filesystem that other hosts may share (by statfs f_type).
    public static func isShared(_ directory: FilePath) -> Bool {
        let magic = cairn_statfs_type(directory.string)
        return magic >= 0 && filesystems[Int(magic)]?.shared == true
    }

    /// Files, content bytes and allocated bytes (st_blocks × 512) of a directory tree.
    public static func diskUsage(_ dir: String) -> (files: Int, bytes: Int, blocks: Int) {
        var files = 0, bytes = 0, blocks = 0
        let e = FileManager.default.enumerator(atPath: dir)
        while let rel = e?.nextObject() as? String {
            var st = stat()
            guard lstat(dir + "/" + rel, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
            files += 1
            bytes += Int(st.st_size)
            blocks += Int(st.st_blocks) * 512
        }
        return (files, bytes, blocks)
    }

    /// The name of the filesystem `directory` is on ("ext2/3/4", "nfs", …; hex when unknown).
    public static func filesystemName(_ directory: FilePath) -> String {
        let magic = cairn_statfs_type(directory.string)
        guard magic >= 0 else { return "unknown" }
        return filesystems[Int(magic)]?.name ?? "0x" + String(Int(magic), radix: 16)
    }

    /// Runs every check in a fresh scratch directory under `directory`.
    public static func run(in directory: FilePath) throws -> FilesystemCheck {
        let magic = cairn_statfs_type(directory.string)
        guard magic >= 0 else {
            throw SpoolError(.io, path: directory.string, errno: errno, "cannot statfs")
        }
        let known = filesystems[Int(magic)]
        var report = FilesystemCheck(directory: directory.string, filesystem: filesystemName(directory), shared: known?.shared ?? false)
        let scratch = try makeScratch(in: directory)
        defer { removeTree(scratch) }
        report.items = checks(in: scratch.path)
        if report.filesystem == "tmpfs" {
            report.items.append(Item(name: "survives a reboot", verdict: .warning, detail: "tmpfs lives in memory: every run is lost at a reboot", required: false))
        }
        return report
    }

    static func checks(in dir: FilePath) -> [Item] {
        var items: [Item] = []
        let a = dir.appending("a"), b = dir.appending("b")
        func fail(_ name: String, _ what: String, _ e: Int32 = errno) -> Item {
            Item(name: name, verdict: .failed, detail: "\(what): \(String(cString: strerror(e)))", required: true)
        }

        // 1. A durable file write (create, write, fsync).
        do {
            try DurableFile.writeStaged(Data("first".utf8), to: a)
            try DurableFile.writeStaged(Data("second".utf8), to: b)
            items.append(Item(name: "write and fsync a file", verdict: .ok, detail: "", required: true))
        } catch {
            items.append(Item(name: "write and fsync a file", verdict: .failed, detail: "\(error)", required: true))
            return items
        }

        // 2. rename(2) replaces a file in one step.
        if Glibc.rename(a.string, b.string) != 0 {
            items.append(fail("rename replaces atomically", "rename"))
        } else if (try? DurableFile.read(b)) == Data("first".utf8), !DurableFile.exists(a) {
            items.append(Item(name: "rename replaces atomically", verdict: .ok, detail: "", required: true))
        } else {
            items.append(Item(name: "rename replaces atomically", verdict: .failed, detail: "after rename the target does not hold the new content", required: true))
        }

        // 3. First writer wins: renameat2(RENAME_NOREPLACE) onto a free name moves the file,
        //    onto a taken one fails with EEXIST; else link+unlink does both. (GlusterFS's FUSE
        //    mount answers EEXIST for a taken name but EINVAL for a free one: try both.)
        let c = dir.appending("c"), fresh = dir.appending("fresh")
        _ = try? DurableFile.writeStaged(Data("third".utf8), to: c)
        let name = "first writer wins"
        if cairn_rename_noreplace(AT_FDCWD, c.string, AT_FDCWD, fresh.string) == 0 {
            if cairn_rename_noreplace(AT_FDCWD, fresh.string, AT_FDCWD, b.string) != 0, errno == EEXIST {
                items.append(Item(name: name, verdict: .ok, detail: "renameat2(RENAME_NOREPLACE)", required: true))
            } else {
                items.append(Item(name: name, verdict: .failed, detail: "renameat2(RENAME_NOREPLACE) replaced an existing file", required: true))
            }
        } else if errno == EINVAL || errno == ENOSYS {
            let refused = String(cString: strerror(errno))
            let d = dir.appending("d")
            if link(c.string, b.string) != 0, errno == EEXIST {
                let moved = link(c.string, d.string) == 0 && unlink(c.string) == 0 && (try? DurableFile.read(d)) == Data("third".utf8)
                items.append(moved
                    ? Item(name: name, verdict: .fallback, detail: "RENAME_NOREPLACE refused (\(refused)); link+unlink for files, rename for run directories", required: true)
                    : fail(name, "link(2) to a new name"))
            } else {
                items.append(fail(name, "RENAME_NOREPLACE refused (\(refused)) and link(2) does not refuse a taken name"))
            }
        } else {
            items.append(fail(name, "renameat2(RENAME_NOREPLACE)"))
        }

        // 4. fsync of a directory (makes renames and creations durable).
        do {
            try DurableFile.fsyncDirectory(dir)
            items.append(Item(name: "fsync a directory", verdict: .ok, detail: "", required: true))
        } catch {
            items.append(Item(name: "fsync a directory", verdict: .failed, detail: "\(error)", required: true))
        }

        // 5. flock(2) on a regular file: a second open file description is excluded, and
        //    gets the lock once the first lets go.
        let lockPath = dir.appending("lock").string
        let l1 = open(lockPath, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600), l2 = open(lockPath, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        if l1 < 0 || l2 < 0 {
            items.append(fail("flock on a regular file", "open"))
        } else if cairn_flock(l1, CAIRN_LOCK_EX_NB) != 0 {
            items.append(fail("flock on a regular file", "flock"))
        } else {
            let excluded = cairn_flock(l2, CAIRN_LOCK_EX_NB) != 0 && errno == EWOULDBLOCK
            _ = cairn_flock(l1, CAIRN_LOCK_UN)
            let handedOver = cairn_flock(l2, CAIRN_LOCK_EX_NB) == 0
            items.append(excluded && handedOver
                ? Item(name: "flock on a regular file", verdict: .ok, detail: "excludes a second holder on this host (across hosts: not checkable from one host)", required: true)
                : Item(name: "flock on a regular file", verdict: .failed, detail: excluded ? "a released lock could not be taken again" : "a second holder was not excluded", required: true))
        }
        if l1 >= 0 { close(l1) }
        if l2 >= 0 { close(l2) }

        // 6. Long names (run ids with a child's path, blob names).
        let long = dir.appending(String(repeating: "n", count: 200))
        if (try? DurableFile.writeStaged(Data(), to: long)) != nil {
            items.append(Item(name: "long file names", verdict: .ok, detail: "200 bytes", required: true))
        } else {
            items.append(fail("long file names", "a 200-byte name"))
        }
        return items
    }

    /// A scratch directory made by `makeScratch`: its path, and the identity it had when
    /// made, so that removing it never follows a swap (in a directory others can write, the
    /// path could be renamed away and replaced by a symlink to somewhere else).
    public struct Scratch: Sendable {
        /// The scratch directory's path.
        public let path: FilePath
        let device: UInt64
        let inode: UInt64
    }

    /// A fresh private directory `.cairn-doctor-PID-RANDOM` under `directory`. Refused in a
    /// directory someone else could rename it in (owned by another user, or writable by
    /// group or others without the sticky bit): the probes work by path, and a swapped
    /// scratch would send them — as root, perhaps — wherever that user pointed it.
    public static func makeScratch(in directory: FilePath) throws -> Scratch {
        var d = stat()
        guard stat(directory.string, &d) == 0 else { throw SpoolError(.io, path: directory.string, errno: errno, "cannot stat") }
        if (d.st_uid != geteuid() && d.st_uid != 0) || (d.st_mode & 0o022 != 0 && d.st_mode & S_ISVTX == 0) {
            throw SpoolError(.invalid, path: directory.string, "is owned by another user or writable by others without the sticky bit: doctor will not probe in it (whoever can rename entries there could redirect the probes); check it as its owner, or check its parent")
        }
        let path = directory.appending(".cairn-doctor-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        guard mkdir(path.string, 0o700) == 0 else {
            throw SpoolError(.io, path: path.string, errno: errno, "cannot create a scratch directory (is the directory writable?)")
        }
        var st = stat()
        guard lstat(path.string, &st) == 0 else { throw SpoolError(.io, path: path.string, errno: errno, "cannot stat the scratch directory") }
        return Scratch(path: path, device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    /// Removes a scratch directory and the files in it — through a descriptor of the very
    /// directory that was made (opened without following a symlink, its device and inode
    /// checked), so nothing outside it is ever unlinked. A swapped one is left alone.
    public static func removeTree(_ scratch: Scratch) {
        let fd = open(scratch.path.string, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return }
        var st = stat()
        guard fstat(fd, &st) == 0, UInt64(st.st_dev) == scratch.device, UInt64(st.st_ino) == scratch.inode,
              let dir = fdopendir(dup(fd)) else {
            close(fd)
            return
        }
        var names: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
        for n in names { _ = unlinkat(fd, n, 0) }
        close(fd)
        // The directory itself, only while the name still holds it.
        var now = stat()
        if lstat(scratch.path.string, &now) == 0, UInt64(now.st_dev) == scratch.device, UInt64(now.st_ino) == scratch.inode {
            _ = rmdir(scratch.path.string)
        }
    }
}
