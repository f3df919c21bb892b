import Foundation
import Synchronization
import SystemPackage

/// A spool directory (SPEC §2): the paths, the settings, and run creation.
/// Reading a spool never needs a daemon.
public struct Spool: Sendable {
    public static let formatVersion = 1

    public let root: FilePath
    public let durable: DurableFile

    public var configFile: FilePath { root.appending("cairn.json") }
    public var runsDirectory: FilePath { root.appending("runs") }
    public var inboxDirectory: FilePath { root.appending("inbox") }
    public var rejectedDirectory: FilePath { root.appending("rejected") }
    public var tmpDirectory: FilePath { root.appending("tmp") }
    public var workflowsDirectory: FilePath { root.appending("workflows") }
    /// Idempotency-key index: `keys/sha256(key)` → run id. Derived; fsck rebuilds it.
    public var keysDirectory: FilePath { root.appending("keys") }

    init(root: FilePath) {
        // Absolute, so paths stay right for scripts and after a chdir.
        let absolute = root.isAbsolute ? root : FilePath(FileManager.default.currentDirectoryPath).pushing(root)
        self.root = absolute.lexicallyNormalized()
        self.durable = DurableFile(tmpDirectory: self.root.appending("tmp"))
    }

    /// `--spool DIR`, else `$CAIRN_SPOOL`, else `./spool`.
    public static func resolveRoot(_ explicit: String?) -> FilePath {
        if let explicit, !explicit.isEmpty { return FilePath(explicit) }
        if let env = ProcessInfo.processInfo.environment["CAIRN_SPOOL"], !env.isEmpty { return FilePath(env) }
        return FilePath("spool")
    }

    static let subdirectories = ["runs", "inbox", "rejected", "tmp", "workflows", "keys", "index"]

    /// Creates a spool (or completes a partial one); an existing spool is left as it is.
    @discardableResult
    public static func create(at root: FilePath) throws -> Spool {
        try DurableFile.makeDirectory(root)
        let spool = Spool(root: root)
        for d in subdirectories { try DurableFile.makeDirectory(root.appending(d)) }
        _ = chmod(root.appending("inbox").string, 0o2775)
        if !DurableFile.exists(spool.configFile) {
            let config: JSONValue = [
                "format": .int(Int64(formatVersion)),
                "created_at": .string(Timestamp.format(Date())),
                "blob_threshold": .int(Int64(SpoolConfig.defaultBlobThreshold)),
                "drop_size_limit": .int(Int64(SpoolConfig.defaultDropSizeLimit)),
                "approvers": .object([:]),
            ]
            do {
                try spool.durable.write(json: config, to: spool.configFile, mode: .noReplace)
            } catch let e as SpoolError where e.code == .exists {}
        }
        _ = try spool.config()
        return spool
    }

    /// Opens an existing spool, checking `cairn.json`'s format.
    public static func open(at root: FilePath) throws -> Spool {
        let spool = Spool(root: root)
        guard DurableFile.exists(spool.configFile) else {
            throw SpoolError(.notASpool, path: root.string, "not a Cairn spool (no cairn.json); create one with `cairn init \(root.string)`")
        }
        _ = try spool.config()
        for d in subdirectories where !DurableFile.exists(root.appending(d)) {
            try DurableFile.makeDirectory(root.appending(d))
        }
        return spool
    }

    public func config() throws -> SpoolConfig {
        let v = try DurableFile.readJSON(configFile, limit: 1 << 20)
        return try SpoolConfig(v, file: configFile.string)
    }

    // MARK: runs

    public func runDirectory(_ id: String) -> FilePath { runsDirectory.appending(id) }
    public func run(_ id: String) -> RunPaths { RunPaths(directory: runDirectory(id)) }

    public func runExists(_ id: String) -> Bool {
        Names.isValidRunID(id) && DurableFile.exists(run(id).runFile)
    }

    /// Every run id, sorted (generated ids sort by creation time).
    public func runIDs() throws -> [String] {
        try Self.list(runsDirectory).filter { Names.isValidRunID($0) }.sorted()
    }

    public func readRun(_ id: String) throws -> RunRecord {
        guard Names.isValidRunID(id) else { throw SpoolError(.invalid, "invalid run id '\(id)'") }
        let p = run(id)
        guard DurableFile.exists(p.directory) else { throw SpoolError(.notFound, path: p.directory.string, "no such run '\(id)'") }
        return try Self.decode(RunRecord.self, from: p.runFile)
    }

    public func readState(_ id: String) throws -> RunState? {
        let p = run(id).stateFile
        guard DurableFile.exists(p) else { return nil }
        return try Self.decode(RunState.self, from: p)
    }

    /// Writes state.json, then moves the run's entry in the status index.
    public func writeState(_ state: RunState) throws {
        try durable.write(json: state.canonicalJSON(), to: run(state.run).stateFile)
        updateIndex(state.run, status: state.status)
    }

    // MARK: status index

    /// `index/STATUS/RUN_ID`: empty files, one per run, so listing the runs in a status
    /// (and the daemon's recovery, which lists queued/running/waiting) costs what is
    /// listed, not every run in the spool. Derived and not fsync'd: readers check each
    /// entry against state.json, and `cairn fsck --repair` rebuilds it.
    public var indexDirectory: FilePath { root.appending("index") }

    public func updateIndex(_ id: String, status: RunStatus) {
        let base = indexDirectory.string
        for s in RunStatus.allCases where s != status {
            _ = unlink(base + "/" + s.rawValue + "/" + id)
        }
        let dir = base + "/" + status.rawValue
        var fd = Glibc.open(dir + "/" + id, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 && errno == ENOENT {
            _ = mkdir(base, 0o755)
            _ = mkdir(dir, 0o755)
            fd = Glibc.open(dir + "/" + id, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        }
        if fd >= 0 { close(fd) }
    }

    /// Run ids the index lists under `status` (unverified: check state.json).
    public func indexedRuns(_ status: RunStatus) throws -> [String] {
        try Self.list(indexDirectory.appending(status.rawValue)).filter { Names.isValidRunID($0) }.sorted()
    }

    /// Runs whose state.json says `status`, found through the index (entries that
    /// disagree with state.json are skipped).
    public func runs(withStatus status: RunStatus) throws -> [String] {
        try indexedRuns(status).filter { (try? readState($0))??.status == status }
    }

    public func blobs(_ id: String, threshold: Int? = nil) -> BlobStore {
        BlobStore(directory: run(id).blobsDirectory, durable: durable, threshold: threshold ?? SpoolConfig.defaultBlobThreshold)
    }

    public func journal(_ id: String) -> Journal { Journal(directory: run(id).journalDirectory, durable: durable) }

    // MARK: creating runs

    /// What a submission asks for (SPEC §2 inbox file, `cairn submit`, child workflows).
    public struct Submission: Sendable {
        public var workflow: String
        public var input: JSONValue
        public var id: String?
        public var idempotencyKey: String?
        public var workflowVersion: String?
        public var parent: RunRecord.ParentRef?
        public var submittedBy: Principal
        public var concurrencyKey: String?

        public init(workflow: String, input: JSONValue, id: String? = nil, idempotencyKey: String? = nil, workflowVersion: String? = nil, parent: RunRecord.ParentRef? = nil, submittedBy: Principal = .current, concurrencyKey: String? = nil) {
            self.concurrencyKey = concurrencyKey
            self.workflow = workflow
            self.input = input
            self.id = id
            self.idempotencyKey = idempotencyKey
            self.workflowVersion = workflowVersion
            self.parent = parent
            self.submittedBy = submittedBy
        }
    }

    /// Creates `runs/ID/` whole, by one rename of a directory built in tmp/.
    /// The same id or idempotency key submitted twice yields one run: the second call
    /// returns the first run's id with `created == false`.
    public func createRun(_ s: Submission, now: Date = Date()) throws -> (id: String, created: Bool) {
        guard Names.isValidName(s.workflow) else {
            throw SpoolError(.invalid, "invalid workflow name '\(s.workflow)' (letters, digits, '.', '_', '-')")
        }
        if let id = s.id, !Names.isValidRunID(id) {
            throw SpoolError(.invalid, "invalid run id '\(id)' (must match [A-Za-z0-9][A-Za-z0-9._-]{0,127})")
        }
        var id = s.id ?? RunID.generate(now: now)
        if let key = s.idempotencyKey {
            id = try claimKey(key, for: id)
        }
        if DurableFile.exists(runDirectory(id)) { return (id, false) }

        let config = try config()
        let staging = try durable.makeStagingDirectory(hint: "run-\(id)")
        do {
            let paths = RunPaths(directory: staging)
            for d in [paths.journalDirectory, paths.approvalsDirectory, paths.eventsDirectory, paths.blobsDirectory, paths.logsDirectory] {
                try DurableFile.makeDirectory(d, durable: false)
            }
            // Drops come from people and programs: group-writable, setgid (files keep the
            // spool's group). Who may decide is then the spool group (and cairn.json approvers).
            for d in [paths.approvalsDirectory, paths.eventsDirectory, staging] { _ = chmod(d.string, 0o2775) }
            let blobs = BlobStore(directory: paths.blobsDirectory, durable: durable, threshold: config.blobThreshold)
            let input = try blobs.externalize(s.input, staged: true)
            let record = RunRecord(id: id, workflow: s.workflow, workflowVersion: s.workflowVersion, input: input, submittedAt: now, submittedBy: s.submittedBy, idempotencyKey: s.idempotencyKey, parent: s.parent, concurrencyKey: s.concurrencyKey)
            try DurableFile.writeStaged(record.canonicalJSON().canonicalData(), to: paths.runFile)
            let state = RunState(run: id, workflow: s.workflow, status: .queued, updatedAt: now)
            try DurableFile.writeStaged(state.canonicalJSON().canonicalData(), to: paths.stateFile)
            for d in [paths.journalDirectory, paths.approvalsDirectory, paths.eventsDirectory, paths.blobsDirectory, paths.logsDirectory, staging] {
                try DurableFile.fsyncDirectory(d)
            }
            try DurableFile.fsyncDirectory(tmpDirectory)
            CrashPoints.reached("run.before-rename")
            try DurableFile.rename(staging, to: runDirectory(id), mode: .noReplace)
            updateIndex(id, status: .queued)
        } catch let e as SpoolError where e.code == .exists {
            try? FileManager.default.removeItem(atPath: staging.string)
            return (id, false)
        } catch {
            try? FileManager.default.removeItem(atPath: staging.string)
            throw error
        }
        try DurableFile.fsyncDirectory(runsDirectory)
        return (id, true)
    }

    /// Binds an idempotency key to a run id, first writer wins. Returns the id the key is
    /// bound to (ours, or the one an earlier submission claimed).
    func claimKey(_ key: String, for id: String) throws -> String {
        let file = keysDirectory.appending(Self.keyFileName(key))
        let record: JSONValue = ["key": .string(key), "run": .string(id)]
        do {
            try durable.write(json: record, to: file, mode: .noReplace)
            return id
        } catch let e as SpoolError where e.code == .exists {
            let existing = try DurableFile.readJSON(file, limit: 1 << 20)
            guard let bound = existing["run"]?.stringValue, Names.isValidRunID(bound) else {
                throw SpoolError(.malformed, path: file.string, "idempotency key file has no valid \"run\"; `cairn fsck --repair` rebuilds it")
            }
            return bound
        }
    }

    public static func keyFileName(_ key: String) -> String { SHA256.hex(Array(key.utf8)) }

    /// The run an idempotency key is bound to, if any.
    public func runForKey(_ key: String) -> String? {
        let file = keysDirectory.appending(Self.keyFileName(key))
        return (try? DurableFile.readJSON(file, limit: 1 << 20))?["run"]?.stringValue
    }

    // MARK: helpers

    static func decode<T: Decodable>(_ type: T.Type, from file: FilePath) throws -> T {
        let v = try DurableFile.readJSON(file, limit: 16 << 20)
        do {
            return try v.decode(as: T.self)
        } catch {
            throw SpoolError(.malformed, path: file.string, JSONValue.describe(error))
        }
    }

    /// Directory entries (names), excluding dot entries. Missing directory → [].
    public static func list(_ dir: FilePath) throws -> [String] {
        guard let d = opendir(dir.string) else {
            if errno == ENOENT { return [] }
            throw SpoolError(.io, path: dir.string, errno: errno, "cannot list directory")
        }
        defer { closedir(d) }
        var out: [String] = []
        while let ent = readdir(d) {
            let name = withUnsafePointer(to: ent.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name == "." || name == ".." { continue }
            out.append(name)
        }
        return out
    }
}

/// Paths inside one run directory.
public struct RunPaths: Sendable {
    public let directory: FilePath
    public init(directory: FilePath) { self.directory = directory }

    public var runFile: FilePath { directory.appending("run.json") }
    public var stateFile: FilePath { directory.appending("state.json") }
    public var resultFile: FilePath { directory.appending("result.json") }
    public var journalDirectory: FilePath { directory.appending("journal") }
    public var approvalsDirectory: FilePath { directory.appending("approvals") }
    public var eventsDirectory: FilePath { directory.appending("events") }
    public var blobsDirectory: FilePath { directory.appending("blobs") }
    public var logsDirectory: FilePath { directory.appending("logs") }
    public var cancelFile: FilePath { directory.appending("cancel") }
    public var pauseFile: FilePath { directory.appending("pause") }
    public var retryFile: FilePath { directory.appending("retry") }
    /// Where repair moves journal records past the longest valid prefix.
    public var repairDirectory: FilePath { directory.appending("repair") }
}

/// Settings from `cairn.json`.
public struct SpoolConfig: Sendable {
    public static let defaultBlobThreshold = 64 * 1024
    public static let defaultDropSizeLimit = 64 * 1024

    public var format: Int
    /// Values whose JSON is larger than this many bytes live in blobs/.
    public var blobThreshold: Int
    /// Approval and event drops larger than this are refused.
    public var dropSizeLimit: Int
    /// Gate name (or "*") → who may decide. A gate not listed (and no "*") is open to
    /// anyone who can write the approvals directory (Unix permissions).
    public var approvers: [String: Approvers]
    /// The whole file, for settings other modules read (providers, concurrency).
    public var raw: JSONValue

    public struct Approvers: Sendable, Hashable {
        public var users: [String]
        public var groups: [String]
        public init(users: [String], groups: [String]) {
            self.users = users
            self.groups = groups
        }
    }

    public init(_ v: JSONValue, file: String) throws {
        guard case .object(let o) = v else { throw SpoolError(.malformed, path: file, "cairn.json must be a JSON object") }
        guard let f = o["format"]?.intValue else { throw SpoolError(.malformed, path: file, "missing \"format\"") }
        guard f == Int64(Spool.formatVersion) else {
            throw SpoolError(.notASpool, path: file, "spool format \(f) is not supported (this cairn reads format \(Spool.formatVersion))")
        }
        format = Int(f)
        raw = v
        blobThreshold = Int(o["blob_threshold"]?.intValue ?? Int64(Self.defaultBlobThreshold))
        dropSizeLimit = Int(o["drop_size_limit"]?.intValue ?? Int64(Self.defaultDropSizeLimit))
        guard blobThreshold >= 64 else { throw SpoolError(.malformed, path: file, "\"blob_threshold\" must be at least 64") }
        var approvers: [String: Approvers] = [:]
        if let a = o["approvers"] {
            guard case .object(let gates) = a else { throw SpoolError(.malformed, path: file, "\"approvers\" must be an object of gate → {\"users\", \"groups\"}") }
            for (gate, rule) in gates {
                let users = rule["users"]?.arrayValue?.compactMap(\.stringValue) ?? []
                let groups = rule["groups"]?.arrayValue?.compactMap(\.stringValue) ?? []
                approvers[gate] = Approvers(users: users, groups: groups)
            }
        }
        self.approvers = approvers
    }
}

/// Generated run ids: `YYYYMMDD-HHMMSS-mmm-XXXXXX`, UTC, so `ls runs/` sorts by creation.
public enum RunID {
    private static let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz")

    public static func generate(now: Date = Date()) -> String {
        let ms = Int64((now.timeIntervalSince1970 * 1000).rounded(.down))
        var t = time_t(ms / 1000)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        func pad(_ v: Int32, _ n: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, n - s.count)) + s
        }
        let date = pad(tmv.tm_year + 1900, 4) + pad(tmv.tm_mon + 1, 2) + pad(tmv.tm_mday, 2)
        let time = pad(tmv.tm_hour, 2) + pad(tmv.tm_min, 2) + pad(tmv.tm_sec, 2)
        var rnd = SystemRandomNumberGenerator()
        let suffix = String((0..<6).map { _ in alphabet[Int(rnd.next() % UInt64(alphabet.count))] })
        return "\(date)-\(time)-\(pad(Int32(ms % 1000), 3))-\(suffix)"
    }
}
