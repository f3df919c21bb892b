import Foundation
import SystemPackage

/// Files dropped by people and programs (approval decisions, events, control files) are
/// untrusted input (SPEC §1.6, §3): read without following symlinks, never blocking on a
/// FIFO, within a size limit, as JSON when non-empty, and from an allowed owner.
public enum Drops {
    /// A dropped file that passed every check.
    public struct File: Sendable, Hashable {
        /// The file's path.
        public var path: FilePath
        /// The file's owner: who dropped it.
        public var owner: Principal
        /// The file's modification time.
        public var modified: Date
        /// The parsed content; nil for an empty file.
        public var json: JSONValue?
        /// inode:size:mtime, to tell a replaced file from the one already refused.
        public var identity: String
        /// The inode read (to check that the file consumed is the file read).
        public var inode: UInt64
        /// How the owner was allowed to drop it: the `approvers` rule that matched, or that no
        /// rule narrows the directory's Unix permissions. Journaled with the decision.
        public var authorization: String?
    }

    /// What reading a drop found: nothing, a valid file, or a refusal and its reason.
    public enum Result: Sendable {
        /// No such file.
        case absent
        /// A file that passed every check.
        case valid(File)
        /// A file refused, why, and its identity (to tell a replacement from it).
        case refused(path: FilePath, reason: String, identity: String)
    }

    /// Reads and validates a dropped file. `policy` narrows who may drop it; `limitSetting`
    /// names the setting behind `limit` in the refusal.
    public static func read(_ path: FilePath, limit: Int, limitSetting: String = "drop_size_limit in cairn.json", policy: SpoolConfig.Approvers? = nil, requireObject: Bool = false) -> Result {
        var st = stat()
        guard lstat(path.string, &st) == 0 else { return .absent }
        let identity = "\(st.st_ino):\(st.st_size):\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
        if (st.st_mode & S_IFMT) == S_IFLNK { return .refused(path: path, reason: "is a symbolic link; drop a regular file", identity: identity) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return .refused(path: path, reason: "is not a regular file", identity: identity) }
        // Group-writable (a `touch` under umask 002 in a setgid directory): anyone in the
        // group could have changed it after its owner wrote it, so its owner cannot be said
        // to have decided what it holds. A `chmod go-w` afterwards does not help: a descriptor
        // opened for writing while it was group-writable keeps working, and nothing in the
        // inode tells whether one is still open. Only a fresh copy is its owner's own.
        guard st.st_mode & 0o022 == 0 else {
            return .refused(path: path, reason: "is writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))): anyone in the group could have changed it, and whoever opened it then can still write it after a chmod; write a fresh copy under umask 022 (e.g. `umask 022; cp FILE .new`, then mv .new here), or use cairn approve/reject/signal", identity: identity)
        }
        guard st.st_nlink == 1 else {
            return .refused(path: path, reason: "has \(st.st_nlink) hard links; drop a file of your own (write it under another name, then mv)", identity: identity)
        }
        guard Int(st.st_size) <= limit else {
            return .refused(path: path, reason: "is \(st.st_size) bytes, over the limit of \(limit) (\(limitSetting))", identity: identity)
        }
        // O_NOFOLLOW | O_NONBLOCK: a file swapped for a symlink or FIFO after lstat is refused, not followed or waited on.
        let fd = open(path.string, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return errno == ENOENT ? .absent : .refused(path: path, reason: "cannot be opened: \(String(cString: strerror(errno)))", identity: identity) }
        defer { close(fd) }
        var fst = stat()
        guard fstat(fd, &fst) == 0, (fst.st_mode & S_IFMT) == S_IFREG, fst.st_ino == st.st_ino, fst.st_dev == st.st_dev, fst.st_nlink == 1, fst.st_mode & 0o022 == 0, Int(fst.st_size) <= limit else {
            return .refused(path: path, reason: "changed while being read; drop it again", identity: identity)
        }
        // Who dropped it: the owner of the file actually opened.
        let owner = Principal(uid: fst.st_uid, user: Principal.userName(uid: fst.st_uid))
        var authorization: String? = nil
        if let policy {
            if let problem = policy.invalid { return .refused(path: path, reason: "cannot be accepted: \(problem)", identity: identity) }
            guard let how = allowed(owner, policy) else {
                return .refused(path: path, reason: "owner \(owner.user ?? String(owner.uid)) is not allowed to decide here (approvers in cairn.json: users \(policy.users), groups \(policy.groups))", identity: identity)
            }
            authorization = how
        }
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; break }
            if n == 0 { break }
            data.append(contentsOf: buf[0..<n])
            if data.count > limit { break }
        }
        guard data.count <= limit else { return .refused(path: path, reason: "grew past the size limit while being read", identity: identity) }
        let modified = Date(timeIntervalSince1970: Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9)
        let json: JSONValue?
        switch content(data, requireObject: requireObject) {
        case .success(let j): json = j
        case .failure(let refusal): return .refused(path: path, reason: refusal.reason, identity: identity)
        }
        return .valid(File(path: path, owner: owner, modified: modified, json: json, identity: identity, inode: UInt64(fst.st_ino), authorization: authorization))
    }

    /// How `owner` passes `policy` ("user alice", "group ops"), or nil when it does not.
    public static func allowed(_ owner: Principal, _ policy: SpoolConfig.Approvers) -> String? {
        guard policy.invalid == nil else { return nil }
        if let name = owner.user, policy.users.contains(name) { return "user \(name)" }
        if policy.users.contains(String(owner.uid)) { return "uid \(owner.uid)" }
        for g in policy.groups {
            guard let grp = getgrnam(g) else { continue }
            if let user = owner.user, var mem = grp.pointee.gr_mem {
                while let m = mem.pointee {
                    if String(cString: m) == user { return "group \(g)" }
                    mem += 1
                }
            }
            // Primary group of the owner.
            var pwd = passwd()
            var result: UnsafeMutablePointer<passwd>?
            var b = [CChar](repeating: 0, count: 4096)
            if getpwuid_r(owner.uid, &pwd, &b, b.count, &result) == 0, result != nil, pwd.pw_gid == grp.pointee.gr_gid { return "group \(g) (primary)" }
        }
        return nil
    }

    /// The error file's name for a drop named `name`: `NAME.error.json`, shortened (see
    /// `Names.fitting`) when that would not fit in NAME_MAX.
    public static func errorFileName(_ name: String) -> String { Names.fitting("", name, ".error.json") }

    /// The error file beside the drop at `path`.
    public static func errorFile(for path: FilePath) -> FilePath {
        path.removingLastComponent().appending(errorFileName(path.lastComponent?.string ?? path.string))
    }

    /// Why a drop's bytes are refused.
    public struct ContentRefusal: Error, Sendable {
        /// A phrase that follows the file's name: "nests 65 levels deep or more (at most 64)".
        public var reason: String
    }

    /// A drop's bytes as the daemon judges them, in this order: empty (whitespace only) is
    /// nil; nesting deeper than `JSONValue.dropDepthLimit`, text that is not JSON, a key twice
    /// in an object, a value shaped like the spool's own blob reference (`{"$blob": …,
    /// "bytes": …}`, which the runtime would read as a file of the run's `blobs/`), and — with
    /// `requireObject` — anything but an object are refused. The CLI's commands that write
    /// drops judge their values with this too, so that they refuse what the daemon would.
    public static func content(_ data: Data, requireObject: Bool = false) -> Swift.Result<JSONValue?, ContentRefusal> {
        if data.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return .success(nil) }
        if let depth = JSONValue.nestingDepth(data, above: JSONValue.dropDepthLimit) {
            return .failure(ContentRefusal(reason: "nests \(depth) levels deep or more (at most \(JSONValue.dropDepthLimit))"))
        }
        let json: JSONValue
        do { json = try JSONValue.parseUntrusted(data) } catch {
            return .failure(ContentRefusal(reason: "is not valid JSON (empty, or a JSON value, is expected)"))
        }
        if let problem = JSONValue.duplicateKeyProblem(in: data) { return .failure(ContentRefusal(reason: problem)) }
        if let at = blobShaped(json) {
            return .failure(ContentRefusal(reason: "holds a value shaped like a blob reference at \(at) ({\"$blob\": …, \"bytes\": …} is the spool's own; it would be read as a file of the run's blobs/)"))
        }
        if requireObject, case .object = json {} else if requireObject {
            return .failure(ContentRefusal(reason: "must be empty or a JSON object"))
        }
        return .success(json)
    }

    /// Where in `v` an object shaped like a blob reference sits (a path like `input.items[2]`,
    /// `(top)` for `v` itself), if anywhere. Depth is bounded by the drop depth limit.
    static func blobShaped(_ v: JSONValue, at path: String = "") -> String? {
        if BlobStore.reference(v) != nil { return path.isEmpty ? "(top)" : path }
        switch v {
        case .object(let o):
            for k in o.keys.sorted() { if let p = blobShaped(o[k]!, at: path.isEmpty ? k : "\(path).\(k)") { return p } }
        case .array(let a):
            for (i, e) in a.enumerated() { if let p = blobShaped(e, at: "\(path)[\(i)]") { return p } }
        default: break
        }
        return nil
    }

    /// Writes `NAME.error.json` beside a refused drop (once per identity of the file), and
    /// moves the drop out of the way, so that it never occupies the name (in a sticky
    /// directory nobody else could remove it, and a refused `GATE.approved` would block
    /// everyone's decision): into `refused/NAME.INODE` (`refused`), or — when it cannot change
    /// parent (a directory of another user: its `..` would change, which needs write
    /// permission on it) — renamed within its own directory to `refused.NAME.INODE.RANDOM`.
    /// Without `refused` it stays where it is. The drop itself is never deleted. Somebody else's file at
    /// the error file's name is set aside (`foreign.…`), never a reason to leave the drop.
    /// Returns true when a new error file was written.
    @discardableResult
    public static func refuse(_ path: FilePath, reason: String, identity: String, durable: DurableFile, now: Date = Date(), setAsideIn refused: FilePath? = nil) throws -> Bool {
        let name = path.lastComponent?.string ?? path.string
        let dir = path.removingLastComponent()
        let errorFile = errorFile(for: path)
        let inode = identity.split(separator: ":").first.map(String.init) ?? "0"
        var movedTo: String? = nil
        // Only the file that was refused is moved (not one put at its name since).
        var st = stat()
        if lstat(path.string, &st) == 0, String(st.st_ino) == inode {
            if let refused, (try? Spool.ensureRuntimeDirectory(refused)) != nil {
                let dest = refused.appending(Names.fitting("", name, ".\(inode)"))
                if (try? DurableFile.rename(path, to: dest, mode: .noReplace)) != nil {
                    try? DurableFile.fsyncDirectory(refused)
                    try? DurableFile.fsyncDirectory(dir)
                    movedTo = "refused/" + (dest.lastComponent?.string ?? "")
                }
            }
            if refused != nil, movedTo == nil, let aside = Spool.setAside(path, as: "refused.", inode: UInt64(st.st_ino)) {
                movedTo = (dir.lastComponent?.string ?? "") + "/" + aside
            }
        }
        Spool.setAsideForeign(errorFile)
        if movedTo == nil, let existing = try? DurableFile.readJSON(errorFile, limit: 1 << 20), existing["identity"]?.stringValue == identity {
            return false
        }
        var record: [String: JSONValue] = [
            "file": .string(name),
            "error": .string("\(name) \(reason)"),
            "identity": .string(identity),
            "at": .string(Timestamp.format(now)),
            "hint": "fix or replace the file (write elsewhere, then mv); it is checked again when it changes",
        ]
        if let movedTo { record["moved_to"] = .string(movedTo) }
        try durable.write(json: .object(record), to: errorFile)
        return true
    }

}

extension Spool {
    /// Whether `file` in a run's `events/` is an event named `name`: `NAME.json` or
    /// `NAME.SUFFIX.json` (not an error file the runtime wrote beside a refused one).
    public static func isEventFile(_ file: String, for name: String) -> Bool {
        file == "\(name).json" || (file.hasPrefix("\(name).") && file.hasSuffix(".json") && !file.hasSuffix(".error.json"))
    }
}
