import CSystemShims
import Foundation
import SystemPackage

/// One process advances a run at a time: an exclusive `flock` on the run's lock file,
/// `runs/ID/.lock` (mode 0600). The kernel releases it when the holder exits or dies, so a
/// killed daemon's runs are free for another at once.
///
/// A regular file only the service user can open, not the run directory: anyone who can
/// read a directory can flock it and hold a run (or every run) hostage; and on GlusterFS a
/// directory flock through one mount does not exclude another mount, while a regular
/// file's does.
public final class RunLock: Sendable {
    private let fd: Int32
    /// The run directory whose lock is held.
    public let directory: FilePath

    private init(fd: Int32, directory: FilePath) {
        self.fd = fd
        self.directory = directory
    }

    /// The lock file's name in a run directory.
    public static let fileName = ".lock"

    /// Opens (creating if missing: runs made before it existed) the run's lock file, and
    /// checks that it is this user's regular file that nobody else can open.
    static func openLockFile(_ directory: FilePath) throws -> Int32 {
        let path = directory.appending(fileName).string
        // The run directory is group-writable: in a run without a lock file, a member could
        // have put one of theirs (or a symlink, a FIFO) at its name first. Never ours, never
        // opened by a runtime process: set aside (kept), so it cannot freeze the run.
        Spool.setAsideForeign(directory.appending(fileName))
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let e = errno
            var st = stat()
            if lstat(directory.string, &st) != 0 { throw SpoolError(.notFound, path: directory.string, errno: e, "no such run directory") }
            throw SpoolError(.io, path: path, errno: e, "cannot open the run's lock file")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_uid == geteuid(), st.st_mode & 0o077 == 0 else {
            close(fd)
            throw SpoolError(.invalid, path: path, "is not the service user's private lock file (owner, type or mode); the run is not advanced until it is removed (`cairn fsck` lists it)")
        }
        return fd
    }

    /// Takes the lock without waiting; nil when another process holds it.
    public static func tryAcquire(_ directory: FilePath) throws -> RunLock? {
        let fd = try openLockFile(directory)
        if cairn_flock(fd, CAIRN_LOCK_EX_NB) != 0 {
            let e = errno
            close(fd)
            if e == EWOULDBLOCK { return nil }
            throw SpoolError(.io, path: directory.string, errno: e, "flock failed")
        }
        return RunLock(fd: fd, directory: directory)
    }

    /// Whether some process holds the lock right now (probes with a shared lock); nil when
    /// this user cannot tell (only the service user can open the lock file).
    public static func isHeld(_ directory: FilePath) -> Bool? {
        let fd = open(directory.appending(fileName).string, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return errno == ENOENT ? false : nil }
        defer { close(fd) }
        if cairn_flock(fd, CAIRN_LOCK_SH_NB) != 0 { return errno == EWOULDBLOCK }
        return false
    }

    deinit {
        _ = cairn_flock(fd, CAIRN_LOCK_UN)
        close(fd)
    }
}
