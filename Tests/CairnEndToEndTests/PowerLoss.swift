import Foundation

/// What a power loss can leave on disk, after the method of ALICE (OSDI '14) and SQLite's
/// crash-test VFS, for `CrashStateTests`.
///
/// A command is run under `strace -f` and every file-system call it makes below one
/// directory is recorded (creat/open with O_CREAT or O_TRUNC, write, pwrite, fsync,
/// fdatasync, rename(at)(2), link(at), unlink(at), mkdir(at), rmdir; anything else that
/// changes a file there is listed in `unmodelled`, and the test fails on it). strace, not a
/// log inside `DurableFile`, so that a write which bypasses `DurableFile` is recorded too.
///
/// The model (POSIX; ext4 data=ordered gives at least this much):
/// - Names live in directories (inodes). A directory operation (create, rename, link,
///   unlink, mkdir, rmdir) is durable once a directory it touches has been fsync'd after it;
///   until then it may be lost, independently of the other pending operations, per
///   directory. A rename is one operation (both its directories, or neither).
/// - A file's data is durable up to its last fsync; bytes written since may be lost, torn
///   (a prefix kept) or zero-filled.
/// - Everything before a barrier (fsync of that file or directory) persists.
/// Inode metadata (modes) is taken from the end of the command, not modelled.
enum PowerLoss {
    enum Node: Hashable { case file(Int), dir(Int) }

    struct Change { var dir: Int; var name: String; var node: Node? }

    enum Op {
        /// Directory entries changed together; `touches` are the directories whose fsync makes it durable.
        case names([Change], touches: Set<Int>, what: String)
        case write(file: Int, offset: Int?, data: [UInt8])
        case truncate(file: Int)
        case fsyncFile(Int)
        case fsyncDir(Int)

        var isNames: Bool { if case .names = self { return true } else { return false } }
    }

    /// The tree before the command (taken as durable) and what the command did to it.
    struct Recording {
        var root: String
        var dirs: [Int: [String: Node]] = [:]
        var content: [Int: [UInt8]] = [:]
        var modes: [Node: mode_t] = [:]
        var ops: [Op] = []
        /// A path each file or directory had (for messages).
        var names: [Node: String] = [:]
        var unmodelled: [String] = []
        var nextID = 1
        /// For each file the command wrote: its bytes, and its fsync'd bytes, after each op.
        var timeline: [Int: [(now: [UInt8], synced: [UInt8])]] = [:]

        /// Reads the tree under `root` as the durable starting point.
        init(snapshot root: String) throws {
            self.root = root
            dirs[0] = [:]
            try scan(root, dir: 0)
        }

        private mutating func scan(_ path: String, dir: Int) throws {
            for name in try FileManager.default.contentsOfDirectory(atPath: path).sorted() {
                let p = path + "/" + name
                var st = stat()
                guard lstat(p, &st) == 0 else { continue }
                let id = nextID
                nextID += 1
                names[.dir(id)] = String(p.dropFirst(root.count + 1))
                names[.file(id)] = String(p.dropFirst(root.count + 1))
                if (st.st_mode & S_IFMT) == S_IFDIR {
                    dirs[dir]![name] = .dir(id)
                    dirs[id] = [:]
                    modes[.dir(id)] = st.st_mode & 0o7777
                    try scan(p, dir: id)
                } else if (st.st_mode & S_IFMT) == S_IFREG {
                    dirs[dir]![name] = .file(id)
                    content[id] = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
                    modes[.file(id)] = st.st_mode & 0o7777
                }
            }
        }

        // MARK: the live tree while the trace is read

        /// The tree as the command saw it (every operation applied).
        var live: [Int: [String: Node]] = [:]
        var liveContent: [Int: [UInt8]] = [:]

        func relative(_ absolute: String) -> String? {
            if absolute == root { return "" }
            return absolute.hasPrefix(root + "/") ? String(absolute.dropFirst(root.count + 1)) : nil
        }

        func resolve(_ rel: String) -> Node? {
            var node = Node.dir(0)
            for c in rel.split(separator: "/") where !c.isEmpty && c != "." {
                guard case .dir(let d) = node, let next = live[d]?[String(c)] else { return nil }
                node = next
            }
            return node
        }

        func parent(_ rel: String) -> (Int, String)? {
            var parts = rel.split(separator: "/").map(String.init)
            guard let name = parts.popLast(), case .dir(let d)? = resolve(parts.joined(separator: "/")) else { return nil }
            return (d, name)
        }

        mutating func apply(_ op: Op) {
            switch op {
            case .names(let changes, _, _):
                for c in changes { live[c.dir, default: [:]][c.name] = c.node }
            case .write(let f, let offset, let data):
                liveContent[f] = Self.written(liveContent[f] ?? [], offset: offset, data: data)
            case .truncate(let f):
                liveContent[f] = []
            case .fsyncFile, .fsyncDir:
                break
            }
            ops.append(op)
        }

        static func written(_ old: [UInt8], offset: Int?, data: [UInt8]) -> [UInt8] {
            var c = old
            let at = offset ?? c.count
            if c.count < at { c += [UInt8](repeating: 0, count: at - c.count) }
            let end = at + data.count
            if c.count < end { c += [UInt8](repeating: 0, count: end - c.count) }
            c.replaceSubrange(at..<end, with: data)
            return c
        }

        mutating func newID() -> Int {
            defer { nextID += 1 }
            return nextID
        }

        // MARK: reading strace's output

        /// Records the calls in an strace output file (`strace -f -y -xx -s N -o FILE`).
        mutating func read(trace: String) throws {
            live = dirs
            liveContent = content
            var pending: [String: String] = [:]  // pid → an unfinished call's text
            let text = try String(contentsOfFile: trace, encoding: .utf8)
            for raw in text.split(separator: "\n") {
                let line = raw.drop { $0 == " " }
                guard let sp = line.firstIndex(of: " ") else { continue }
                let pid = String(line[..<sp])
                var call = String(line[sp...].drop { $0 == " " })
                if call.hasSuffix("<unfinished ...>") {
                    pending[pid] = String(call.dropLast("<unfinished ...>".count))
                    continue
                }
                if call.hasPrefix("<... "), let r = call.range(of: " resumed>") {
                    call = (pending.removeValue(forKey: pid) ?? "") + String(call[r.upperBound...])
                }
                if call.hasPrefix("+++") || call.hasPrefix("---") { continue }
                record(call)
            }
            var files = Set<Int>()
            for op in ops {
                switch op {
                case .write(let f, _, _), .truncate(let f): files.insert(f)
                default: break
                }
            }
            for f in files {
                var now = content[f] ?? [], synced = now
                var t = [(now: now, synced: synced)]
                for op in ops {
                    switch op {
                    case .write(f, let offset, let data): now = Self.written(now, offset: offset, data: data)
                    case .truncate(f): now = []
                    case .fsyncFile(f): synced = now
                    default: break
                    }
                    t.append((now, synced))
                }
                timeline[f] = t
            }
        }

        private mutating func record(_ call: String) {
            guard let open = call.firstIndex(of: "("), let eq = call.range(of: ") = ", options: .backwards) else { return }
            let name = String(call[..<open])
            let args = Self.split(String(call[call.index(after: open)..<eq.lowerBound]))
            let ret = String(call[eq.upperBound...])
            guard !ret.hasPrefix("-") && !ret.hasPrefix("?") else { return }  // failed: changed nothing
            // An argument as an absolute path: a quoted path, resolved against a directory fd.
            func path(_ i: Int, dirfd: Int? = nil) -> String? {
                guard i < args.count, let p = Self.quoted(args[i]).map({ String(decoding: $0, as: UTF8.self) }) else { return nil }
                if p.hasPrefix("/") { return p }
                guard let d = dirfd, let base = Self.angle(args[d]) else { return nil }
                return base + "/" + p
            }
            func fdPath(_ i: Int) -> String? { i < args.count ? Self.angle(args[i]) : nil }

            switch name {
            case "open", "openat", "creat":
                let pi = name == "openat" ? 1 : 0
                guard let abs = path(pi, dirfd: name == "openat" ? 0 : nil), let rel = relative(abs) else { return }
                let flags = name == "creat" ? "O_CREAT|O_TRUNC" : (pi + 1 < args.count ? args[pi + 1] : "")
                let existing = resolve(rel)
                if existing == nil, flags.contains("O_CREAT") {
                    guard let (d, n) = parent(rel) else { return unmodelled.append(call) }
                    let id = newID()
                    names[.file(id)] = rel
                    apply(.names([Change(dir: d, name: n, node: .file(id))], touches: [d], what: "create \(rel)"))
                } else if case .file(let f)? = existing, flags.contains("O_TRUNC"), !(liveContent[f] ?? []).isEmpty {
                    apply(.truncate(file: f))
                }
            case "write", "pwrite64":
                guard let abs = fdPath(0), let rel = relative(abs) else { return }
                guard case .file(let f)? = resolve(rel), args.count >= 3, let data = Self.quoted(args[1]), let n = Int(ret) else { return unmodelled.append(call) }
                let offset = name == "pwrite64" && args.count >= 4 ? Int(args[3]) : nil
                apply(.write(file: f, offset: offset, data: Array(data.prefix(n))))
            case "fsync", "fdatasync":
                guard let abs = fdPath(0), let rel = relative(abs) else { return }
                switch resolve(rel) {
                case .file(let f)?: apply(.fsyncFile(f))
                case .dir(let d)?: apply(.fsyncDir(d))
                case nil: unmodelled.append(call)
                }
            case "rename", "renameat", "renameat2", "link", "linkat":
                let two = name == "rename" || name == "link"
                guard let a = path(two ? 0 : 1, dirfd: two ? nil : 0), let b = path(two ? 1 : 3, dirfd: two ? nil : 2) else { return }
                guard let ra = relative(a), let rb = relative(b) else {
                    if relative(a) != nil || relative(b) != nil { unmodelled.append(call) }
                    return
                }
                guard let node = resolve(ra), let (da, na) = parent(ra), let (db, nb) = parent(rb) else { return unmodelled.append(call) }
                if name.hasPrefix("link") {
                    apply(.names([Change(dir: db, name: nb, node: node)], touches: [db], what: "link \(ra) \(rb)"))
                } else {
                    apply(.names([Change(dir: da, name: na, node: nil), Change(dir: db, name: nb, node: node)], touches: [da, db], what: "rename \(ra) → \(rb)"))
                }
            case "unlink", "unlinkat", "rmdir":
                guard let abs = path(name == "unlinkat" ? 1 : 0, dirfd: name == "unlinkat" ? 0 : nil), let rel = relative(abs) else { return }
                guard let (d, n) = parent(rel) else { return unmodelled.append(call) }
                apply(.names([Change(dir: d, name: n, node: nil)], touches: [d], what: "unlink \(rel)"))
            case "mkdir", "mkdirat":
                guard let abs = path(name == "mkdirat" ? 1 : 0, dirfd: name == "mkdirat" ? 0 : nil), let rel = relative(abs) else { return }
                guard let (d, n) = parent(rel) else { return unmodelled.append(call) }
                let id = newID()
                names[.dir(id)] = rel
                live[id] = [:]
                dirs[id] = [:]
                apply(.names([Change(dir: d, name: n, node: .dir(id))], touches: [d], what: "mkdir \(rel)"))
            default:
                // ftruncate, symlink, chmod…: recorded only when they touch the tree.
                if args.contains(where: { a in (Self.quoted(a).map { relative(String(decoding: $0, as: UTF8.self)) != nil } ?? false) || (Self.angle(a).map { relative($0) != nil } ?? false) }) {
                    unmodelled.append(call)
                }
            }
        }

        /// What op `k - 1` did (the last one before crash point `k`).
        func describe(_ k: Int) -> String {
            guard k > 0 else { return "before the first op" }
            switch ops[k - 1] {
            case .names(_, _, let what): return what
            case .write(let f, _, let data): return "write \(data.count) bytes to \(names[.file(f)] ?? "?")"
            case .truncate(let f): return "truncate \(names[.file(f)] ?? "?")"
            case .fsyncFile(let f): return "fsync \(names[.file(f)] ?? "?")"
            case .fsyncDir(let d): return "fsync dir \(names[.dir(d)] ?? "?")/"
            }
        }

        /// Modes of everything that exists after the command (new nodes get 0644/0755 otherwise).
        mutating func takeModes() {
            func walk(_ d: Int, _ path: String) {
                for (name, node) in live[d] ?? [:] {
                    var st = stat()
                    if lstat(path + "/" + name, &st) == 0 { modes[node] = st.st_mode & 0o7777 }
                    if case .dir(let c) = node { walk(c, path + "/" + name) }
                }
            }
            walk(0, root)
        }

        // MARK: strace's argument syntax (-xx: every string byte as \xHH)

        /// Splits `a, "b, c", d<e>` at top-level commas.
        static func split(_ s: String) -> [String] {
            var out: [String] = [], cur = "", depth = 0, inQuote = false, escape = false
            for ch in s {
                if inQuote {
                    cur.append(ch)
                    if escape { escape = false } else if ch == "\\" { escape = true } else if ch == "\"" { inQuote = false }
                    continue
                }
                switch ch {
                case "\"": inQuote = true; cur.append(ch)
                case "(", "[", "{", "<": depth += 1; cur.append(ch)
                case ")", "]", "}", ">": depth -= 1; cur.append(ch)
                case "," where depth == 0:
                    out.append(cur.trimmingCharacters(in: .whitespaces))
                    cur = ""
                default: cur.append(ch)
                }
            }
            if !cur.isEmpty { out.append(cur.trimmingCharacters(in: .whitespaces)) }
            return out
        }

        /// The bytes of a quoted argument; nil when it is not one, or strace cut it ("…"...).
        static func quoted(_ arg: String) -> [UInt8]? {
            guard arg.hasPrefix("\""), arg.hasSuffix("\""), arg.count >= 2 else { return nil }
            return unescape(Substring(arg.dropFirst().dropLast()))
        }

        /// The path strace -y shows for a descriptor: `7</a/b>`, `AT_FDCWD</a>`.
        static func angle(_ arg: String) -> String? {
            guard let l = arg.firstIndex(of: "<"), arg.hasSuffix(">") else { return nil }
            return String(decoding: unescape(arg[arg.index(after: l)..<arg.index(before: arg.endIndex)]), as: UTF8.self)
        }

        static func unescape(_ s: Substring) -> [UInt8] {
            var out: [UInt8] = []
            let b = Array(s.utf8)
            var i = 0
            func hex(_ c: UInt8) -> UInt8? {
                switch c {
                case 48...57: return c - 48
                case 97...102: return c - 87
                case 65...70: return c - 55
                default: return nil
                }
            }
            while i < b.count {
                if b[i] == 92, i + 1 < b.count {  // backslash
                    let c = b[i + 1]
                    if c == 120, i + 3 < b.count, let h = hex(b[i + 2]), let l = hex(b[i + 3]) {
                        out.append(h << 4 | l)
                        i += 4
                        continue
                    }
                    let simple: [UInt8: UInt8] = [110: 10, 116: 9, 114: 13, 118: 11, 102: 12, 92: 92, 34: 34]
                    out.append(simple[c] ?? c)
                    i += 2
                    continue
                }
                out.append(b[i])
                i += 1
            }
            return out
        }
    }
}

extension PowerLoss {
    /// How a file's un-fsync'd bytes come back.
    enum Tail: Hashable {
        case kept, lost, torn, zeroed
    }

    /// One state a power loss can leave: the first `crashAfter` ops happened; of the
    /// directory operations not yet made durable, `lost` did not reach the disk; `tails`
    /// says what became of files with un-fsync'd bytes (default: kept).
    struct CrashState {
        var crashAfter: Int
        var lost: Set<Int>
        var tails: [Int: Tail]
        var label: String
        /// 0: all or none of the pending operations lost, each one lost alone, a file's
        /// tail; 1: the rest (pairs, prefixes, one kept alone, larger subsets).
        var priority = 0
    }

    /// Everything the model allows at each point, bounded:
    /// - every subset of the pending directory operations when there are at most
    ///   `allSubsetsUpTo`; else each one lost alone, each pair lost, each one kept alone, and
    ///   each prefix in program order (a journalled filesystem's commit order);
    /// - for the states where all or none of them persisted, each file with un-fsync'd bytes
    ///   lost, torn to half or zero-filled, one file at a time.
    static func enumerate(_ r: Recording, allSubsetsUpTo: Int = 5) -> [CrashState] {
        let ops = r.ops
        // The first fsync after each directory op of a directory it touches.
        var durableAt = [Int](repeating: Int.max, count: ops.count)
        for (i, op) in ops.enumerated() {
            guard case .names(_, let touches, _) = op else { continue }
            for j in (i + 1)..<max(i + 1, ops.count) {
                if case .fsyncDir(let d) = ops[j], touches.contains(d) {
                    durableAt[i] = j
                    break
                }
            }
        }
        var states: [CrashState] = []
        for k in 0...ops.count {
            let pending = (0..<k).filter { ops[$0].isNames && durableAt[$0] >= k }
            var losses: [Set<Int>] = []
            if pending.count <= allSubsetsUpTo {
                for mask in 0..<(1 << pending.count) {
                    losses.append(Set(pending.enumerated().filter { mask & (1 << $0.offset) != 0 }.map(\.element)))
                }
            } else {
                let all = Set(pending)
                losses.append([])
                losses.append(all)
                for (x, a) in pending.enumerated() {
                    losses.append([a])
                    losses.append(all.subtracting([a]))
                    for b in pending[(x + 1)...] { losses.append([a, b]) }
                }
                for m in 1..<pending.count { losses.append(Set(pending[m...])) }
            }
            for lost in losses {
                let first = lost.isEmpty || lost.count == pending.count || lost.count == 1
                states.append(CrashState(crashAfter: k, lost: lost, tails: [:], label: "crash after op \(k) (\(r.describe(k))), \(lost.count) of \(pending.count) pending dir ops lost\(lost.isEmpty || lost.count == pending.count ? "" : ": " + lost.sorted().map { r.describe($0 + 1) }.joined(separator: "; "))", priority: first ? 0 : 1))
            }
            let unsynced = unsyncedFiles(r, at: k)
            for lost in [Set<Int>(), Set(pending)] {
                for f in unsynced {
                    for t in [Tail.lost, .torn, .zeroed] {
                        states.append(CrashState(crashAfter: k, lost: lost, tails: [f: t], label: "crash after op \(k) (\(r.describe(k))), \(lost.count) of \(pending.count) pending dir ops lost, un-fsync'd bytes of \(r.names[.file(f)] ?? "?") \(t)"))
                    }
                }
            }
        }
        return states
    }

    /// Whether the directory op `i` is durable at crash point `k`.
    static func durable(_ r: Recording, op i: Int, at k: Int) -> Bool {
        guard case .names(_, let touches, _) = r.ops[i] else { return true }
        for j in (i + 1)..<max(i + 1, k) {
            if case .fsyncDir(let d) = r.ops[j], touches.contains(d) { return true }
        }
        return false
    }

    /// A file's bytes after the first `k` ops, and its bytes at its last fsync before `k`.
    static func content(_ r: Recording, file f: Int, at k: Int) -> (now: [UInt8], synced: [UInt8]) {
        if let t = r.timeline[f] { return t[k] }
        let c = r.content[f] ?? []
        return (c, c)
    }

    static func unsyncedFiles(_ r: Recording, at k: Int) -> [Int] {
        r.timeline.keys.sorted().filter { let c = r.timeline[$0]![k]; return c.now != c.synced }
    }

    /// The tree of a crash state: relative path → nil for a directory, else the file's bytes.
    static func tree(_ r: Recording, _ s: CrashState) -> [String: [UInt8]?] {
        var dirs = r.dirs
        for i in 0..<s.crashAfter {
            guard case .names(let changes, _, _) = r.ops[i], !s.lost.contains(i) else { continue }
            for c in changes { dirs[c.dir, default: [:]][c.name] = c.node }
        }
        var out: [String: [UInt8]?] = [:]
        var seen = Set<Int>()
        func walk(_ d: Int, _ prefix: String) {
            guard seen.insert(d).inserted else { return }
            for (name, node) in dirs[d] ?? [:] {
                let p = prefix.isEmpty ? name : prefix + "/" + name
                switch node {
                case .dir(let c):
                    out[p] = .some(nil)
                    walk(c, p)
                case .file(let f):
                    let c = content(r, file: f, at: s.crashAfter)
                    var bytes = c.now
                    switch s.tails[f] ?? .kept {
                    case .kept: break
                    case .lost: bytes = c.synced
                    case .torn:
                        if c.now.starts(with: c.synced) { bytes = Array(c.now.prefix(c.synced.count + (c.now.count - c.synced.count) / 2)) } else { bytes = [] }
                    case .zeroed:
                        let keep = c.now.starts(with: c.synced) ? c.synced.count + (c.now.count - c.synced.count) / 2 : 0
                        bytes = Array(c.now.prefix(keep)) + [UInt8](repeating: 0, count: c.now.count - keep)
                    }
                    out[p] = .some(bytes)
                }
            }
        }
        walk(0, "")
        return out
    }

    /// Node ids by relative path in a crash state (for modes).
    static func nodes(_ r: Recording, _ s: CrashState) -> [String: Node] {
        var dirs = r.dirs
        for i in 0..<s.crashAfter {
            guard case .names(let changes, _, _) = r.ops[i], !s.lost.contains(i) else { continue }
            for c in changes { dirs[c.dir, default: [:]][c.name] = c.node }
        }
        var out: [String: Node] = [:]
        var seen = Set<Int>()
        func walk(_ d: Int, _ prefix: String) {
            guard seen.insert(d).inserted else { return }
            for (name, node) in dirs[d] ?? [:] {
                let p = prefix.isEmpty ? name : prefix + "/" + name
                out[p] = node
                if case .dir(let c) = node { walk(c, p) }
            }
        }
        walk(0, "")
        return out
    }

    /// Writes a crash state's tree into `dir` (which must not exist).
    static func materialise(_ r: Recording, _ s: CrashState, tree: [String: [UInt8]?], into dir: String) throws {
        let nodes = nodes(r, s)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (path, bytes) in tree.sorted(by: { $0.key < $1.key }) {
            let p = dir + "/" + path
            let mode = nodes[path].flatMap { r.modes[$0] }
            if let bytes {
                guard FileManager.default.createFile(atPath: p, contents: Data(bytes)) else { throw CocoaError(.fileWriteUnknown) }
                _ = chmod(p, mode ?? 0o644)
            } else {
                guard mkdir(p, 0o755) == 0 else { throw CocoaError(.fileWriteUnknown) }
            }
        }
        // Directory modes last (a read-only one would refuse its children).
        for (path, bytes) in tree where bytes == nil {
            if let m = nodes[path].flatMap({ r.modes[$0] }) { _ = chmod(dir + "/" + path, m) }
        }
    }

    /// The journal records (relative paths) acknowledged at `k`: their name is durable (the
    /// rename and the fsync of the journal directory after it) and so are their bytes.
    static func acknowledged(_ r: Recording, at k: Int, under prefix: String) -> Set<String> {
        var out = Set<String>()
        let state = CrashState(crashAfter: k, lost: Set((0..<k).filter { r.ops[$0].isNames && !durable(r, op: $0, at: k) }), tails: [:], label: "")
        for (path, bytes) in tree(r, state) where path.hasPrefix(prefix) && bytes != nil { out.insert(path) }
        return out
    }
}
