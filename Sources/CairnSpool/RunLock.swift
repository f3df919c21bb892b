import CSystemShims
import Foundation
import SystemPackage

/// One process advances a run at a time: an exclusive `flock` on the run directory
/// itself. The kernel releases it when the holder exits or dies, so a killed daemon's
/// runs are free for another at once. No lock file is written.
public final class RunLock: Sendable {
    private let fd: Int32
    public let directory: FilePath

    private init(fd: Int32, directory: FilePath) {
        self.fd = fd
        self.directory = directory
    }

    /// Takes the lock without waiting; nil when another process holds it.
    public static func tryAcquire(_ directory: FilePath) throws -> RunLock? {
        let fd = open(directory.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            if e == ENOENT { throw SpoolError(.notFound, path: directory.string, errno: e, "no such run directory") }
            throw SpoolError(.io, path: directory.string, errno: e, "cannot open run directory to lock it")
        }
        if cairn_flock(fd, CAIRN_LOCK_EX_NB) != 0 {
            let e = errno
            close(fd)
            if e == EWOULDBLOCK { return nil }
            throw SpoolError(.io, path: directory.string, errno: e, "flock failed")
        }
        return RunLock(fd: fd, directory: directory)
    }

    /// Whether some process holds the lock right now (probes with a shared lock).
    public static func isHeld(_ directory: FilePath) -> Bool {
        let fd = open(directory.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if cairn_flock(fd, CAIRN_LOCK_SH_NB) != 0 { return errno == EWOULDBLOCK }
        return false
    }

    deinit {
        _ = cairn_flock(fd, CAIRN_LOCK_UN)
        close(fd)
    }
}
