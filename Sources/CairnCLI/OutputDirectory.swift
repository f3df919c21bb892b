import CairnSpool
import Foundation
import SystemPackage

/// A directory the CLI or the daemon writes for people to read (`report --out`,
/// `daemon --report-dir`, the directory of `--metrics-file`): refused when someone else could
/// have chosen where it leads or could replace what is written there — a symlink another user
/// made (planted in a sticky directory such as /tmp, it would send root's pages anywhere), or
/// a directory owned by anyone but the caller or root (its owner could read or replace the
/// pages, which show run inputs and approval requests). The same rule as the spool's trusted
/// paths (Spool.trustedFileProblem's owners).
enum OutputDirectory {
    /// The directory's absolute path (symlinks kept as given, once judged), made if missing
    /// when `create`; a CLIError naming the flag otherwise.
    static func trusted(_ given: String, flag: String, create: Bool) throws -> FilePath {
        let path = given.hasPrefix("/") ? given : FileManager.default.currentDirectoryPath + "/" + given
        var st = stat()
        if lstat(path, &st) != 0 {
            guard errno == ENOENT, create else { throw CLIError(.usage, "\(flag) \(given): \(String(cString: strerror(errno)))") }
            do {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            } catch {
                throw CLIError(.usage, "\(flag) \(given): cannot create the directory: \(error.localizedDescription)")
            }
            guard lstat(path, &st) == 0 else { throw CLIError(.usage, "\(flag) \(given): \(String(cString: strerror(errno)))") }
        }
        // Each link on the way to the directory, then the directory itself.
        var hops = 0
        var current = path
        while (st.st_mode & S_IFMT) == S_IFLNK {
            if let problem = ownerProblem(st) { throw CLIError(.usage, "\(flag) \(given): the symlink \(current) \(problem)") }
            hops += 1
            guard hops < 32, let target = try? FileManager.default.destinationOfSymbolicLink(atPath: current) else { throw CLIError(.usage, "\(flag) \(given): too many symlinks") }
            current = target.hasPrefix("/") ? target : (current as NSString).deletingLastPathComponent + "/" + target
            guard lstat(current, &st) == 0 else { throw CLIError(.usage, "\(flag) \(given): \(current): \(String(cString: strerror(errno)))") }
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw CLIError(.usage, "\(flag) \(given): not a directory") }
        if let problem = ownerProblem(st) { throw CLIError(.usage, "\(flag) \(given): the directory \(problem); give a directory of yours") }
        return FilePath(path)
    }

    static func ownerProblem(_ st: stat) -> String? {
        guard st.st_uid != geteuid(), st.st_uid != 0 else { return nil }
        return "is owned by \(Principal.userName(uid: st.st_uid) ?? String(st.st_uid)), neither you (\(Principal.userName(uid: geteuid()) ?? String(geteuid()))) nor root"
    }
}
