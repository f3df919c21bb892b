import Foundation
import Synchronization
import SystemPackage

/// A spool directory (SPEC §2): the paths, the settings, and run creation.
/// Reading a spool never needs a daemon.
public struct Spool: Sendable {
    /// The spool format this code reads and writes (`cairn.json`'s `"format"`).
    public static let formatVersion = 1

    /// The spool's directory.
    public let root: FilePath
    /// The durable-write routine every runtime write to this spool goes through.
    public let durable: DurableFile

    /// `cairn.json`: the spool's settings.
    public var configFile: FilePath { root.appending("cairn.json") }
    /// `runs/`: one directory per run.
    public var runsDirectory: FilePath { root.appending("runs") }
    /// `inbox/`: submissions dropped as files.
    public var inboxDirectory: FilePath { root.appending("inbox") }
    /// `rejected/`: inbox files that could not be submitted, with their error.
    public var rejectedDirectory: FilePath { root.appending("rejected") }
    /// `tmp/`: staging for writes that land by rename.
    public var tmpDirectory: FilePath { root.appending("tmp") }
    /// `workflows/`: executables run as script workflows.
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
        // Every status's index directory from the start, so that a watcher (`cairn ls
        // --watch`, not the service user) can watch each one before its first run.
        for s in RunStatus.allCases { try DurableFile.makeDirectory(root.appending("index").appending(s.rawValue)) }
        DurableFile.probeNoReplace(in: spool.tmpDirectory)
        // inbox/ is a drop directory; the rest belongs to the runtime.
        try makeDropDirectories([root.appending("inbox")], group: nil)
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
        // On a filesystem other hosts share (FUSE, NFS, CephFS…), a file another client is
        // replacing can read as missing for a moment through this one: every read of this
        // process looks again before it counts (fsck through a second GlusterFS mount read a
        // state.json being replaced as "No such file or directory").
        if FilesystemCheck.isShared(root) { DurableFile.assumeSharedFilesystem() }
        for d in subdirectories where !DurableFile.exists(root.appending(d)) {
            try DurableFile.makeDirectory(root.appending(d))
        }
        // A spool made before the index's directories were (best effort: its owner only).
        for s in RunStatus.allCases where !DurableFile.exists(root.appending("index").appending(s.rawValue)) {
            try? DurableFile.makeDirectory(root.appending("index").appending(s.rawValue))
        }
        // (No probe here: opening a spool must not write. Where RENAME_NOREPLACE is refused,
        // the first no-replace rename of the process finds out and switches.)
        return spool
    }

    /// Reads and checks `cairn.json` (a duplicate key is refused).
    public func config() throws -> SpoolConfig {
        // A key twice (`"approvers"` twice, or a gate twice) is refused, not resolved: the
        // daemon would read one value and jq, an editor or a reviewer the other (fail closed).
        let v = try JSONValue.parseRejectingDuplicateKeys(DurableFile.read(configFile, limit: 1 << 20), file: configFile.string)
        return try SpoolConfig(v, file: configFile.string)
    }

    // MARK: runs

    /// `runs/ID`.
    public func runDirectory(_ id: String) -> FilePath { runsDirectory.appending(id) }
    /// The paths of run `id`'s files.
    public func run(_ id: String) -> RunPaths { RunPaths(directory: runDirectory(id)) }

    /// Whether `id` is a valid run id with a `run.json`.
    public func runExists(_ id: String) -> Bool {
        Names.isValidRunID(id) && DurableFile.exists(run(id).runFile)
    }

    /// Every run id, sorted (generated ids sort by creation time).
    public func runIDs() throws -> [String] {
        try Self.list(runsDirectory).filter { Names.isValidRunID($0) }.sorted()
    }

    /// Reads run `id`'s `run.json`; throws for an invalid id or a missing run.
    public func readRun(_ id: String) throws -> RunRecord {
        guard Names.isValidRunID(id) else { throw SpoolError(.invalid, "invalid run id '\(id)'") }
        let p = run(id)
        guard DurableFile.exists(p.directory) else { throw SpoolError(.notFound, path: p.directory.string, "no such run '\(id)'") }
        return try Self.decode(RunRecord.self, from: p.runFile)
    }

    /// Reads run `id`'s `state.json`; nil when it has none yet.
    public func readState(_ id: String) throws -> RunState? {
        let p = run(id).stateFile
        guard DurableFile.exists(p) else { return nil }
        return try Self.decode(RunState.self, from: p)
    }

    /// Writes state.json (derived from the journal), then moves the run's entry in the status
    /// index. `.atomicOnly` for the
    /// `running` mark an execution writes before its first record: a durable state follows
    /// before the execution ends, and after a power loss that lost or tore it the daemon's
    /// start advances the run (listed as running or waiting), which writes it again.
    public func writeState(_ state: RunState, durability: DurableFile.Durability = .durable) throws {
        try durable.write(json: state.canonicalJSON(), to: run(state.run).stateFile, durability: durability)
        updateIndex(state.run, status: state.status)
    }

    // MARK: status index

    /// `index/STATUS/RUN_ID`: empty files, one per run, so listing the runs in a status
    /// (and the daemon's recovery, which lists queued/running/waiting) costs what is
    /// listed, not every run in the spool. Derived and not fsync'd: readers check each
    /// entry against state.json, and `cairn fsck --repair` rebuilds it.
    public var indexDirectory: FilePath { root.appending("index") }

    /// Moves the run's entry to `index/STATUS/` (best effort: the index is derived).
    public func updateIndex(_ id: String, status: RunStatus) {
        let base = indexDirectory.string
        let dir = base + "/" + status.rawValue
        // The new entry first, then the old ones go: a process killed in between leaves a
        // run listed twice (readers check state.json), never not at all.
        var fd = Glibc.open(dir + "/" + id, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 && errno == ENOENT {
            _ = mkdir(base, 0o755)
            _ = mkdir(dir, 0o755)
            fd = Glibc.open(dir + "/" + id, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        }
        if fd >= 0 { close(fd) }
        for s in RunStatus.allCases where s != status {
            _ = unlink(base + "/" + s.rawValue + "/" + id)
        }
    }

    /// The index's drift from state.json: runs with no entry in their status (or none at
    /// all), and entries that contradict state.json or name no run. Costs one listing of
    /// `runs/` and of each index directory, plus a state read per disagreeing name.
    public struct IndexDrift: Sendable {
        /// Runs whose status directory does not list them: (run, status in state.json).
        public var missing: [(run: String, status: RunStatus)] = []
        /// Entries that contradict state.json or name no run: (run, listed status).
        public var stale: [(run: String, listed: RunStatus)] = []
        /// Whether the index agrees with every state.json.
        public var isEmpty: Bool { missing.isEmpty && stale.isEmpty }
    }

    /// `verifyFinished` reads state.json of runs listed as completed or cancelled too (fsck
    /// does: a restored copy of a run can rewind it from completed to waiting); without it,
    /// one such entry is trusted (the daemon's start: finished runs never change by themselves).
    public func indexDrift(verifyFinished: Bool = false) throws -> IndexDrift {
        var listed: [String: [RunStatus]] = [:]
        for status in RunStatus.allCases {
            for id in try indexedRuns(status) { listed[id, default: []].append(status) }
        }
        var drift = IndexDrift()
        let runs = Set(try runIDs())
        for id in runs {
            let entries = listed[id] ?? []
            // One entry is the common case; trust it without reading state.json only for
            // completed and cancelled runs (they never change again), and check the others.
            if !verifyFinished, entries.count == 1, entries[0] == .completed || entries[0] == .cancelled { continue }
            guard let state = try? readState(id) else { continue }
            if !entries.contains(state.status) { drift.missing.append((id, state.status)) }
            for s in entries where s != state.status { drift.stale.append((id, s)) }
        }
        for (id, statuses) in listed where !runs.contains(id) {
            for s in statuses { drift.stale.append((id, s)) }
        }
        drift.missing.sort { $0.run < $1.run }
        drift.stale.sort { $0.run < $1.run }
        return drift
    }

    /// Makes the index agree with state.json (see `indexDrift`). Returns what it changed.
    @discardableResult
    public func reconcileIndex(verifyFinished: Bool = false) throws -> IndexDrift {
        #if CAIRN_TEST_HOOKS
        // `CAIRN_SIMULATE_SLOW_RECONCILE=MS` (debug builds only): the reconcile takes that long
        // more, as it does over a million runs (two listings of a million names).
        if let ms = ProcessInfo.processInfo.environment["CAIRN_SIMULATE_SLOW_RECONCILE"].flatMap(UInt32.init) { usleep(ms * 1000) }
        #endif
        let drift = try indexDrift(verifyFinished: verifyFinished)
        for m in drift.missing { updateIndex(m.run, status: m.status) }
        for s in drift.stale {
            let state = try? readState(s.run)
            if state?.status != s.listed { _ = unlink(indexDirectory.appending(s.listed.rawValue).appending(s.run).string) }
        }
        return drift
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

    /// The blob store of run `id` (values larger than `threshold` bytes go there).
    public func blobs(_ id: String, threshold: Int? = nil) -> BlobStore {
        BlobStore(directory: run(id).blobsDirectory, durable: durable, threshold: threshold ?? SpoolConfig.defaultBlobThreshold)
    }

    /// The journal of run `id`.
    public func journal(_ id: String) -> Journal { Journal(directory: run(id).journalDirectory, durable: durable) }

    // MARK: creating runs

    /// What a submission asks for (SPEC §2 inbox file, `cairn submit`, child workflows).
    public struct Submission: Sendable {
        /// The workflow's name.
        public var workflow: String
        /// The run's input.
        public var input: JSONValue
        /// The run id to use; nil: a generated one.
        public var id: String?
        /// A key that makes a repeated submission return the first run.
        public var idempotencyKey: String?
        /// The workflow's version, when the submitter knows it.
        public var workflowVersion: String?
        /// For a child run: its parent.
        public var parent: RunRecord.ParentRef?
        /// Who submits (the current user by default).
        public var submittedBy: Principal
        /// Runs sharing this key are advanced a limited number at a time.
        public var concurrencyKey: String?
        /// For a run started by `ctx.continueAsNew`: the run it continues.
        public var continuedFrom: String?

        /// A submission of `workflow` with `input`.
        public init(workflow: String, input: JSONValue, id: String? = nil, idempotencyKey: String? = nil, workflowVersion: String? = nil, parent: RunRecord.ParentRef? = nil, submittedBy: Principal = .current, concurrencyKey: String? = nil, continuedFrom: String? = nil) {
            self.concurrencyKey = concurrencyKey
            self.continuedFrom = continuedFrom
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
            // refused/ too, from the start: made later, at the first refusal, its name could
            // be taken first by any member of the group (a symlink, a directory of theirs).
            for d in [paths.journalDirectory, paths.approvalsDirectory, paths.eventsDirectory, paths.blobsDirectory, paths.logsDirectory, paths.decisionsDirectory, paths.workDirectory, paths.refusedDirectory] {
                try DurableFile.makeDirectory(d, durable: false)
            }
            close(try RunLock.openLockFile(staging))
            // Drops come from people and programs: the run directory (control files),
            // approvals/ and events/ are group-writable, setgid (files keep the group) and
            // sticky (nobody moves or deletes another's file). They take the group of runs/,
            // so `chgrp` of the spool once is enough. Everything else is the runtime's alone.
            try Self.makeDropDirectories([staging, paths.approvalsDirectory, paths.eventsDirectory], group: groupOf(runsDirectory))
            let blobs = BlobStore(directory: paths.blobsDirectory, durable: durable, threshold: config.blobThreshold)
            let input = try blobs.externalize(s.input, staged: true)
            let record = RunRecord(id: id, workflow: s.workflow, workflowVersion: s.workflowVersion, input: input, submittedAt: now, submittedBy: s.submittedBy, idempotencyKey: s.idempotencyKey, parent: s.parent, concurrencyKey: s.concurrencyKey, continuedFrom: s.continuedFrom)
            try DurableFile.writeStaged(record.canonicalJSON().canonicalData(), to: paths.runFile)
            let state = RunState(run: id, workflow: s.workflow, status: .queued, updatedAt: now)
            try DurableFile.writeStaged(state.canonicalJSON().canonicalData(), to: paths.stateFile)
            for d in [paths.journalDirectory, paths.approvalsDirectory, paths.eventsDirectory, paths.blobsDirectory, paths.logsDirectory, paths.decisionsDirectory, paths.workDirectory, paths.refusedDirectory, staging] {
                try DurableFile.fsyncDirectory(d)
            }
            try DurableFile.fsyncDirectory(tmpDirectory)
            // Listed before it exists: a crash after the rename cannot leave it unlisted (an
            // entry for a run that never appeared is skipped by readers and fsck removes it).
            updateIndex(id, status: .queued)
            CrashPoints.reached("run.before-rename")
            try DurableFile.rename(staging, to: runDirectory(id), mode: .noReplace)
        } catch let e as SpoolError where e.code == .exists {
            try? FileManager.default.removeItem(atPath: staging.string)
            // Another submission made it first: its index entry is its own business.
            if let st = try? readState(id), st.status != .queued { _ = unlink(indexDirectory.appending("queued").appending(id).string) }
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

    /// The file name under which an idempotency key is claimed (its SHA-256, hex).
    public static func keyFileName(_ key: String) -> String { ContentHash.sha256Hex(Array(key.utf8)) }

    /// The run an idempotency key is bound to, if any.
    public func runForKey(_ key: String) -> String? {
        let file = keysDirectory.appending(Self.keyFileName(key))
        return (try? DurableFile.readJSON(file, limit: 1 << 20))?["run"]?.stringValue
    }

    // MARK: permissions (SPEC §3, permission model)

    /// Mode of drop directories: group-writable, setgid, sticky.
    public static let dropDirectoryMode: mode_t = 0o3775

    /// Gives drop directories their mode and `group` (the owner must belong to it, or be root).
    static func makeDropDirectories(_ dirs: [FilePath], group: gid_t?) throws {
        for d in dirs {
            if let group, lchown(d.string, uid_t.max, group) != 0 {
                throw SpoolError(.io, path: d.string, errno: errno, "cannot give the drop directory group \(group) (the service user must be a member of the spool's group)")
            }
            guard chmod(d.string, dropDirectoryMode) == 0 else {
                throw SpoolError(.io, path: d.string, errno: errno, "cannot make the drop directory group-writable and sticky")
            }
        }
    }

    func groupOf(_ dir: FilePath) -> gid_t? {
        var st = stat()
        return lstat(dir.string, &st) == 0 ? st.st_gid : nil
    }

    /// The user the runtime runs as: the owner of the spool's `runs/` directory.
    public var serviceUID: uid_t? {
        var st = stat()
        return lstat(runsDirectory.string, &st) == 0 ? st.st_uid : nil
    }

    /// Whether this process may write the runtime's files (it is the service user).
    public var isServiceUser: Bool { serviceUID == geteuid() }

    /// A directory only the runtime writes: created if missing (mode 0755); an existing one
    /// must be a real directory owned by this user and writable by nobody else.
    public func ensureRuntimeDirectory(_ dir: FilePath) throws { try Self.ensureRuntimeDirectory(dir) }

    /// The same, without a spool at hand (for CairnSpool's own drop handling).
    public static func ensureRuntimeDirectory(_ dir: FilePath) throws {
        // In a run directory (group-writable) a member could have put something at the name
        // first — a symlink to follow, a directory of theirs: it is set aside, not used.
        setAsideForeign(dir, expecting: .directory)
        if mkdir(dir.string, 0o755) == 0 {
            try DurableFile.fsyncDirectory(dir.removingLastComponent())
            return
        }
        guard errno == EEXIST else { throw SpoolError(.io, path: dir.string, errno: errno, "cannot create directory") }
        if let problem = runtimeFileProblem(dir.string, owner: geteuid()) {
            throw SpoolError(.invalid, path: dir.string, "\(problem); the runtime will not use it (`cairn fsck` lists such files)")
        }
    }

    /// Why `path` is not a runtime file (owned by `owner`, not a symlink, not writable by
    /// group or others), or nil when it is.
    public static func runtimeFileProblem(_ path: String, owner: uid_t) -> String? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        if (st.st_mode & S_IFMT) == S_IFLNK { return "is a symbolic link, which the runtime never writes" }
        if st.st_uid != owner {
            return "is owned by \(Principal.userName(uid: st.st_uid) ?? String(st.st_uid)), not by the service user \(Principal.userName(uid: owner) ?? String(owner)): the runtime did not write it"
        }
        if st.st_mode & 0o022 != 0 { return "is writable by group or others (mode \(String(st.st_mode & 0o7777, radix: 8)))" }
        return nil
    }

    /// `path` made absolute against the working directory (`/` + `spool` is `/spool`, not
    /// `//spool`, as a person at `/` once saw).
    public static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FilePath(FileManager.default.currentDirectoryPath).appending(path).string
    }

    /// What the daemon reads as configuration or executes must not be writable by anyone
    /// but the service user (or root): cairn.json, the spool root and workflows/.
    public func checkConfigurationFiles() throws {
        for p in [root, configFile, workflowsDirectory] {
            if let problem = Self.trustedFileProblem(p.string) {
                throw SpoolError(.invalid, path: p.string, "\(problem); the daemon will not trust it (\(Self.trustFixAdvice))")
            }
        }
    }

    /// How to fix what `trustedFileProblem` reports. A file that was writable by others is
    /// replaced, not chmod'ed: a descriptor someone opened for writing while it was writable
    /// keeps working after a chmod (write permission is checked at open only).
    public static let trustFixAdvice = "chown/chmod a directory; replace a file with a fresh copy of the service user's (cp it to a new name, check it, mv that over it): a chmod does not take back a descriptor someone opened for writing meanwhile"

    /// Why the daemon may not trust `path` as configuration or code: owned by someone other
    /// than the service user `serviceUser` or root, or writable by group or others. nil when
    /// it may. The daemon runs as the service user (its own uid is the default); a command
    /// run by someone else (fsck, why as root or a teammate) passes the spool's `serviceUID`,
    /// so that it judges as the daemon will, not by who runs it.
    public static func trustedFileProblem(_ path: String, serviceUser: uid_t = geteuid()) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        if st.st_uid != serviceUser && st.st_uid != 0 {
            return "is owned by \(Principal.userName(uid: st.st_uid) ?? String(st.st_uid)), neither the service user \(Principal.userName(uid: serviceUser) ?? String(serviceUser)) nor root"
        }
        if st.st_mode & 0o022 != 0 { return "is writable by group or others (mode \(String(st.st_mode & 0o7777, radix: 8)))" }
        return nil
    }

    /// Before the runtime writes `path` in a directory others can write (result.json in the
    /// run directory, request and error files in approvals/, wake files in events/), or makes
    /// a directory of its own there (refused/, repair/, work/, decisions/): whatever someone
    /// else put at that name (a directory, a FIFO, a symlink, a file of theirs) is renamed
    /// aside, within the same directory (a rename within one parent needs no write permission
    /// on a moved directory), to `foreign.NAME.INODE.RANDOM` (kept; `cairn fsck` lists it),
    /// instead of wedging the write or being followed. The random part cannot be guessed, so
    /// nobody can take the set-aside name first; a taken one is retried. Returns false when
    /// the name is still occupied by something foreign (the caller's write then fails loudly).
    @discardableResult
    public static func setAsideForeign(_ path: FilePath, expecting kind: RuntimeEntry = .file) -> Bool {
        var st = stat()
        guard lstat(path.string, &st) == 0 else { return true }
        // Ours, or the service user's (the directory's owner; root may be the one running).
        var parent = stat()
        let owner = lstat(path.removingLastComponent().string, &parent) == 0 ? parent.st_uid : geteuid()
        if (st.st_mode & S_IFMT) == kind.type && (st.st_uid == geteuid() || st.st_uid == owner) { return true }
        return setAside(path, as: "foreign.", inode: UInt64(st.st_ino)) != nil
    }

    /// What the runtime expects at one of its names.
    public enum RuntimeEntry: Sendable {
        case file, directory
        var type: mode_t { self == .file ? S_IFREG : S_IFDIR }
    }

    /// Renames `path` within its directory to `PREFIX.NAME.INODE.RANDOM` (fitting NAME_MAX),
    /// never replacing anything; returns the new name, or nil when it could not be moved
    /// (gone already counts as moved: nil only when the name is still taken).
    public static func setAside(_ path: FilePath, as prefix: String, inode: UInt64) -> String? {
        let dir = path.removingLastComponent()
        let name = path.lastComponent?.string ?? "file"
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<16 {
            let random = String(rng.next() & 0xFFFF_FFFF, radix: 16)
            let aside = Names.fitting(prefix, name, ".\(inode).\(random)")
            do {
                try DurableFile.rename(path, to: dir.appending(aside), mode: .noReplace)
                try? DurableFile.fsyncDirectory(dir)
                return aside
            } catch let e as SpoolError where e.code == .exists {
                continue
            } catch let e as SpoolError where e.errno == ENOENT {
                return DurableFile.exists(path) ? nil : aside
            } catch {
                return nil
            }
        }
        return nil
    }

    /// Checks, before a run is advanced, that nobody but this user can have written what the
    /// engine trusts (run.json, state.json, journal/, blobs/, decisions/, logs/), and that the
    /// drop directories are sticky. A group-writable directory without the sticky bit (made
    /// by an older version) gets it; anything else is a SpoolError naming the file, and the
    /// run is not advanced (fail closed).
    public func verifyRuntimeFiles(_ id: String) throws {
        let p = run(id)
        let me = geteuid()
        for dir in [p.directory, p.approvalsDirectory, p.eventsDirectory] {
            var st = stat()
            guard lstat(dir.string, &st) == 0 else { continue }
            guard (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == me else {
                throw SpoolError(.invalid, path: dir.string, Self.runtimeFileProblem(dir.string, owner: me) ?? "is not a directory of the service user; the run is not advanced (`cairn fsck`)")
            }
            if st.st_mode & 0o022 != 0 && st.st_mode & S_ISVTX == 0 {
                guard chmod(dir.string, (st.st_mode & 0o7777) | S_ISVTX) == 0 else {
                    throw SpoolError(.io, path: dir.string, errno: errno, "cannot make the group-writable directory sticky")
                }
            }
        }
        // Directories a run made before this version may lack, made when first needed: a
        // member's entry at one of these names (a symlink, a directory of theirs) cannot be
        // the runtime's, so it is set aside rather than freezing the run (cancel included).
        for d in [p.decisionsDirectory, p.workDirectory, p.refusedDirectory, p.repairDirectory] {
            Self.setAsideForeign(d, expecting: .directory)
        }
        // (result.json is not among them: the engine never reads it, and replaces it whole.)
        for f in [p.runFile, p.stateFile, p.journalDirectory, p.blobsDirectory, p.logsDirectory, p.decisionsDirectory, p.workDirectory, p.refusedDirectory] {
            if let problem = Self.runtimeFileProblem(f.string, owner: me) {
                throw SpoolError(.invalid, path: f.string, "\(problem); the run is not advanced until it is fixed (`cairn fsck` lists such files)")
            }
        }
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
    /// The run's directory, `runs/ID`.
    public let directory: FilePath
    /// The paths under `directory`.
    public init(directory: FilePath) { self.directory = directory }

    /// `run.json`: the submission, never changed.
    public var runFile: FilePath { directory.appending("run.json") }
    /// `state.json`: the derived state.
    public var stateFile: FilePath { directory.appending("state.json") }
    /// `result.json`: the output of a completed run.
    public var resultFile: FilePath { directory.appending("result.json") }
    /// `journal/`: the records.
    public var journalDirectory: FilePath { directory.appending("journal") }
    /// `approvals/`: gate requests and dropped decisions.
    public var approvalsDirectory: FilePath { directory.appending("approvals") }
    /// `events/`: dropped events.
    public var eventsDirectory: FilePath { directory.appending("events") }
    /// `blobs/`: large values, by content hash.
    public var blobsDirectory: FilePath { directory.appending("blobs") }
    /// Decisions the run recorded, moved out of approvals/ (only the runtime writes here).
    public var decisionsDirectory: FilePath { directory.appending("decisions") }
    /// A script workflow's working directory: private to the service user (the run
    /// directory itself is group-writable, for control files).
    public var workDirectory: FilePath { directory.appending("work") }
    /// Drops that were refused, moved out of the way (only the runtime writes here).
    public var refusedDirectory: FilePath { directory.appending("refused") }
    /// `logs/`: the run's logs (script output, LLM streams).
    public var logsDirectory: FilePath { directory.appending("logs") }
    /// `cancel`: dropped to cancel the run.
    public var cancelFile: FilePath { directory.appending("cancel") }
    /// `pause`: present while the run is paused.
    public var pauseFile: FilePath { directory.appending("pause") }
    /// `retry`: dropped to retry a failed run.
    public var retryFile: FilePath { directory.appending("retry") }
    /// Where repair moves journal records past the longest valid prefix.
    public var repairDirectory: FilePath { directory.appending("repair") }
}

/// Settings from `cairn.json`.
public struct SpoolConfig: Sendable {
    /// 64 KiB.
    public static let defaultBlobThreshold = 64 * 1024
    /// 64 KiB.
    public static let defaultDropSizeLimit = 64 * 1024
    /// 1,000 records: a segment of ~400 KB for steps with small values, and at most ~1,000
    /// single files (one block each) in a journal.
    public static let defaultJournalSegmentRecords = 1000

    /// The spool format (`Spool.formatVersion`).
    public var format: Int
    /// Values whose JSON is larger than this many bytes live in blobs/.
    public var blobThreshold: Int
    /// Approval and event drops larger than this are refused.
    public var dropSizeLimit: Int
    /// A run's journal moves its single record files into a segment file once this many
    /// have piled up after the last segment (`journal_segment_records`; 0: never).
    public var journalSegmentRecords: Int
    /// Gate name (or "*") → who may decide. A gate not listed (and no "*") is open to
    /// anyone who can write the approvals directory (Unix permissions).
    public var approvers: [String: Approvers]
    /// The whole file, for settings other modules read (providers, concurrency).
    public var raw: JSONValue

    /// Who may decide a gate.
    public struct Approvers: Sendable, Hashable {
        /// User names allowed to decide.
        public var users: [String]
        /// Groups whose members may decide.
        public var groups: [String]
        /// Set when the rule in cairn.json is malformed: then nobody may decide (fail closed).
        public var invalid: String?
        /// A rule; `invalid` set makes it one nobody passes.
        public init(users: [String], groups: [String], invalid: String? = nil) {
            self.users = users
            self.groups = groups
            self.invalid = invalid
        }
    }

    /// Set when the `approvers` block as a whole is malformed: every gate is closed.
    public var approversProblem: String?

    /// The rule for `gate` (its own, else `"*"`); nil when no rule narrows it (Unix
    /// permissions decide). A malformed rule, or a malformed block, is a rule nobody passes.
    public func approvalPolicy(gate: String) -> Approvers? {
        if let problem = approversProblem { return Approvers(users: [], groups: [], invalid: problem) }
        return approvers[gate] ?? approvers["*"]
    }

    /// Reads the settings from the parsed `cairn.json` (`file` names it in errors).
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
        journalSegmentRecords = Int(o["journal_segment_records"]?.intValue ?? Int64(Self.defaultJournalSegmentRecords))
        (approvers, approversProblem) = Self.parseApprovers(o["approvers"])
        if let problem = Self.settingsProblems(o).first {
            throw SpoolError(.malformed, path: file, "\(problem) (a setting of the wrong shape is refused rather than ignored)")
        }
    }

    /// The settings Cairn reads, and what each must look like.
    public static let knownSettings: Set<String> = [
        "format", "created_at", "blob_threshold", "drop_size_limit", "approvers", "concurrency",
        "script_retries", "script_timeout", "script_log_limit", "llm", "journal_segment_records",
    ]

    /// Settings of the wrong shape (a string where a number belongs, a misspelled inner
    /// key): each one is a problem, never a silent default. Top-level keys Cairn does not
    /// know are left to `cairn fsck` (they may be notes, or a newer version's settings).
    static func settingsProblems(_ o: [String: JSONValue]) -> [String] {
        var out: [String] = []
        func positiveInt(_ key: String, _ v: JSONValue?, at: String) {
            guard let v else { return }
            if (v.intValue ?? 0) < 1 || v.doubleValue.map({ $0.rounded() != $0 }) == true { out.append("\(at) must be a whole number of at least 1, not \(v.compactText())") }
        }
        func object(_ v: JSONValue?, at: String, keys: Set<String>? = nil, _ each: ((String, JSONValue) -> Void)? = nil) {
            guard let v else { return }
            guard case .object(let m) = v else { out.append("\(at) must be a JSON object, not \(v.compactText())"); return }
            if let keys, let bad = Set(m.keys).subtracting(keys).sorted().first {
                out.append("\(at) has an unknown key \"\(bad)\" (known: \(keys.sorted().joined(separator: ", ")))")
            }
            for (k, x) in m.sorted(by: { $0.key < $1.key }) { each?(k, x) }
        }
        func duration(_ v: JSONValue, at: String) {
            guard let s = v.stringValue, let d = DurationText.parse(s), d > .zero else { out.append("\(at) must be a duration like \"90s\", \"15m\", \"2h\", not \(v.compactText())"); return }
        }
        positiveInt("blob_threshold", o["blob_threshold"], at: "\"blob_threshold\"")
        positiveInt("drop_size_limit", o["drop_size_limit"], at: "\"drop_size_limit\"")
        positiveInt("script_log_limit", o["script_log_limit"], at: "\"script_log_limit\"")
        if let v = o["journal_segment_records"], v.intValue.map({ $0 == 0 || $0 >= 2 }) != true || v.doubleValue.map({ $0.rounded() != $0 }) == true {
            out.append("\"journal_segment_records\" must be 0 (never compact) or a whole number of at least 2, not \(v.compactText())")
        }
        object(o["concurrency"], at: "\"concurrency\"", keys: ["workflows", "keys", "default_key_limit"]) { k, v in
            switch k {
            case "default_key_limit": positiveInt(k, v, at: "concurrency.default_key_limit")
            default: object(v, at: "concurrency.\(k)") { name, n in positiveInt(name, n, at: "concurrency.\(k)[\"\(name)\"]") }
            }
        }
        object(o["script_retries"], at: "\"script_retries\"") { name, policy in
            object(policy, at: "script_retries[\"\(name)\"]", keys: ["max_attempts", "initial_delay", "max_delay"]) { k, v in
                if k == "max_attempts" { positiveInt(k, v, at: "script_retries[\"\(name)\"].max_attempts") } else { duration(v, at: "script_retries[\"\(name)\"].\(k)") }
            }
        }
        object(o["script_timeout"], at: "\"script_timeout\"") { name, v in duration(v, at: "script_timeout[\"\(name)\"]") }
        object(o["llm"], at: "\"llm\"")
        return out
    }

    /// Parses `"approvers": {GATE | "*": {"users": [NAME…], "groups": [NAME…]}}` strictly:
    /// anything else (a string where a list belongs, a misspelled key, an empty rule) is a
    /// problem that closes the gate it names — or every gate, when the block itself is wrong.
    static func parseApprovers(_ a: JSONValue?) -> ([String: Approvers], String?) {
        guard let a else { return ([:], nil) }
        guard case .object(let gates) = a else {
            return ([:], "cairn.json: \"approvers\" must be an object of gate → {\"users\": [...], \"groups\": [...]}; every gate is closed until it is fixed")
        }
        var out: [String: Approvers] = [:]
        for (gate, rule) in gates {
            let at = "cairn.json: approvers[\"\(gate)\"]"
            guard case .object(let r) = rule else {
                out[gate] = Approvers(users: [], groups: [], invalid: "\(at) must be an object {\"users\": [...], \"groups\": [...]}; nobody may decide this gate until it is fixed")
                continue
            }
            var problem: String? = nil
            let unknown = Set(r.keys).subtracting(["users", "groups"])
            if !unknown.isEmpty { problem = "\(at) has unknown key(s) \(unknown.sorted().map { "\"\($0)\"" }.joined(separator: ", ")) (only \"users\" and \"groups\")" }
            func names(_ key: String) -> [String] {
                guard let v = r[key] else { return [] }
                guard case .array(let items) = v, items.allSatisfy({ $0.stringValue.map { !$0.isEmpty } ?? false }) else {
                    if problem == nil { problem = "\(at).\(key) must be a list of names, like [\"alice\"]" }
                    return []
                }
                return items.compactMap(\.stringValue)
            }
            let users = names("users"), groups = names("groups")
            if problem == nil && users.isEmpty && groups.isEmpty { problem = "\(at) names no users and no groups" }
            out[gate] = Approvers(users: users, groups: groups, invalid: problem.map { $0 + "; nobody may decide this gate until it is fixed" })
        }
        return (out, nil)
    }
}

/// Generated run ids: `YYYYMMDD-HHMMSS-mmm-XXXXXX`, UTC, so `ls runs/` sorts by creation.
public enum RunID {
    private static let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz")

    /// A new id for a run created at `now`, with six random characters.
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
