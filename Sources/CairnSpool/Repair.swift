import Foundation
import SystemPackage

/// `cairn fsck [--repair]`: verifies every file of a spool and, with repair, rebuilds what
/// is derived from run.json + journal/ + blobs/ (SPEC §1.4). It never deletes a journal
/// record or anything a person dropped: records past the longest valid prefix are moved to
/// `runs/ID/repair/TIME/`, so nothing that might be evidence is lost.
public enum Repair {
    /// Something wrong that fsck found in a spool.
    public struct Finding: Sendable, Hashable, CustomStringConvertible {
        /// The file at fault.
        public var file: String
        /// What is wrong with it.
        public var problem: String
        /// What repair did about it (nil: nothing, or not repairing).
        public var repaired: String?
        /// The finding (and its repair) in a line, with unprintable characters escaped.
        public var description: String { "\(Names.printable(file)): \(Names.printable(problem))" + (repaired.map { " — repaired: \(Names.printable($0))" } ?? "") }
    }

    /// What a check (or repair) of a whole spool found.
    public struct Report: Sendable {
        /// Every problem found.
        public var findings: [Finding] = []
        /// How many runs were checked.
        public var runsChecked = 0
        /// How many files were checked.
        public var filesChecked = 0
        /// Runs skipped because a daemon held their lock.
        public var busy: [String] = []
        /// True when nothing is wrong (or everything wrong was repaired).
        public var clean: Bool { findings.allSatisfy { $0.repaired != nil } }
    }

    /// Checks every run of `spool` (and the spool's own files), repairing what it can when
    /// `repair` is true; temp files older than `staleTempAge` seconds count as stale.
    public static func run(_ spool: Spool, repair: Bool, now: Date = Date(), staleTempAge: TimeInterval = 3600, progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws -> Report {
        var report = Report()
        let rel = { (p: FilePath) -> String in
            let s = p.string, r = spool.root.string + "/"
            return s.hasPrefix(r) ? String(s.dropFirst(r.count)) : s
        }
        // tmp/: anything old is a leftover of a crash (no writer keeps a temp file for an hour).
        for name in try Spool.list(spool.tmpDirectory) {
            let p = spool.tmpDirectory.appending(name)
            var st = stat()
            guard lstat(p.string, &st) == 0 else { continue }
            let age = now.timeIntervalSince1970 - Double(st.st_mtim.tv_sec)
            guard age > staleTempAge, name != "inbox.lock" else { continue }
            // A script execution's state lives as long as its run is held, however long.
            // Its files are `exec-RUN.json` and that name + `.lock` / `.spool-works` (the
            // script layer's full-disk marker).
            if name.hasPrefix("exec-"), let suffix = [".json.spool-works", ".json.lock", ".json"].first(where: { name.hasSuffix($0) }) {
                let run = name.dropFirst(5).dropLast(suffix.count)
                if RunLock.isHeld(spool.runDirectory(String(run))) != false { continue }
            }
            var f = Finding(file: rel(p), problem: "stale temporary file (\(Int(age))s old)")
            if repair {
                // Say so when it cannot be removed (files of another user inside it).
                do {
                    try FileManager.default.removeItem(atPath: p.string)
                    f.repaired = "removed"
                } catch {
                    f.problem += "; cannot be removed by this user (\(error.localizedDescription)): remove it as root"
                }
            }
            report.findings.append(f)
        }

        // Configuration and code the daemon trusts, and the approvers policy (fails closed).
        report.findings += configurationFindings(spool, rel: rel)
        let service = spool.serviceUID ?? geteuid()

        var keysWanted: [String: String] = [:]
        let ids = try Spool.list(spool.runsDirectory).sorted()
        for (n, id) in ids.enumerated() {
            progress?(n + 1, ids.count)
            let paths = spool.run(id)
            guard Names.isValidRunID(id) else {
                report.findings.append(Finding(file: rel(paths.directory), problem: "not a valid run id; left alone"))
                continue
            }
            report.runsChecked += 1
            let lock = try? RunLock.tryAcquire(paths.directory)
            if repair && lock == nil {
                report.busy.append(id)
                continue
            }
            let record: RunRecord
            do {
                record = try Spool.decode(RunRecord.self, from: paths.runFile)
                guard record.id == id else { throw SpoolError(.malformed, path: paths.runFile.string, "\"id\" is \(record.id), the directory is \(id)") }
            } catch {
                report.findings.append(Finding(file: rel(paths.runFile), problem: "\(error); this run cannot be recovered automatically"))
                continue
            }
            report.filesChecked += 1
            if let key = record.idempotencyKey { keysWanted[key] = id }
            report.findings += ownershipFindings(paths, service: service, rel: rel)

            // Blobs: every file's content must hash to its name.
            let blobs = spool.blobs(id)
            for name in try Spool.list(paths.blobsDirectory) {
                report.filesChecked += 1
                let p = paths.blobsDirectory.appending(name)
                guard BlobStore.isBlobName(name), let data = try? DurableFile.read(p), "sha256-" + ContentHash.sha256Hex(data) == name else {
                    report.findings.append(Finding(file: rel(p), problem: "blob content does not match its name (corrupt)"))
                    continue
                }
            }
            // Journal: the longest valid prefix is the truth.
            let journal = spool.journal(id)
            let contents = try journal.readPrefix(blobs: blobs)
            let (entries, damage) = (contents.entries, contents.damage)
            report.filesChecked += entries.count + damage.count
            if !contents.redundant.isEmpty {
                // A compaction stopped after writing its segment: the single files it moved repeat it.
                var f = Finding(file: rel(journal.directory), problem: "\(contents.redundant.count) record file(s) repeat what a segment holds (a compaction was interrupted): \(contents.redundant.prefix(3).joined(separator: ", "))\(contents.redundant.count > 3 ? ", …" : "")")
                if repair {
                    try journal.removeRedundant(contents.redundant)
                    f.repaired = "removed (the segment holds the same records)"
                }
                report.findings.append(f)
            }
            if !damage.isEmpty {
                let stamp = RunID.generate(now: now)
                let dest = paths.repairDirectory.appending(stamp)
                // repair/ is made in the run directory, which the group can write: whatever a
                // member put at that name first (a symlink into another run's journal, a
                // directory of theirs) is set aside, never followed or written into.
                var unusable: String? = nil
                if repair {
                    do {
                        try Spool.ensureRuntimeDirectory(paths.repairDirectory)
                        try Spool.ensureRuntimeDirectory(dest)
                    } catch {
                        unusable = "\(error)"
                    }
                }
                for d in damage {
                    var f = Finding(file: rel(journal.directory.appending(d.file)), problem: d.problem)
                    if let unusable {
                        f.problem += "; not moved: \(unusable)"
                    } else if repair {
                        let kept = try journal.keepValidPart(of: d, entries: entries, copyTo: dest.appending(d.file))
                        if kept == nil { try DurableFile.rename(journal.directory.appending(d.file), to: dest.appending(d.file), mode: .noReplace) }
                        f.repaired = "moved to \(rel(dest))/" + (kept.map { ", its records before the damage kept as journal/\($0)" } ?? "") + " (the journal now ends at position \(entries.count))"
                    }
                    report.findings.append(f)
                }
                if repair && unusable == nil {
                    try DurableFile.fsyncDirectory(journal.directory)
                    try DurableFile.fsyncDirectory(dest)
                }
            }
            let effective = Journal.effective(entries)
            let derived = StateDerivation.derive(record: record, entries: effective, now: now)

            // state.json: a cache; rebuilt when missing, unreadable or contradicting the journal.
            var stateProblem: String? = nil
            var previous: RunState? = nil
            do {
                previous = try spool.readState(id)
                if let s = previous {
                    report.filesChecked += 1
                    let stoppedByEngine = s.status == .failed && !derived.status.isTerminal && ["nondeterminism", "unknown_workflow"].contains(s.error?.type ?? "")
                    if stoppedByEngine {
                        // Stopped without a journal record on purpose (the code, not the run, is wrong).
                    } else if s.status.isTerminal != derived.status.isTerminal || (derived.status.isTerminal && s.status != derived.status) {
                        stateProblem = "says \(s.status.rawValue), the journal says \(derived.status.rawValue)"
                    } else if s.counters.journalEntries > effective.count {
                        stateProblem = "counts \(s.counters.journalEntries) journal records, the journal has \(effective.count)"
                    }
                } else {
                    stateProblem = "missing"
                }
            } catch {
                stateProblem = "unreadable: \(error)"
            }
            if let problem = stateProblem {
                var f = Finding(file: rel(paths.stateFile), problem: problem)
                if repair {
                    var s = derived
                    s.counters.executions = previous?.counters.executions ?? 0
                    try spool.writeState(s)
                    f.repaired = "rebuilt from the journal (status \(s.status.rawValue))"
                }
                report.findings.append(f)
            }
            // result.json: the complete record's value.
            if let last = effective.last, last.kind == "complete" {
                let want = try? blobs.resolve(last.value ?? .null)
                let have = Self.readRuntimeJSON(paths.resultFile, owner: service)
                report.filesChecked += 1
                if let want, have != want {
                    var f = Finding(file: rel(paths.resultFile), problem: have == nil ? "missing or unreadable" : "differs from the journal's complete record")
                    if repair {
                        try spool.durable.write(json: want, to: paths.resultFile)
                        f.repaired = "rewritten from the journal"
                    }
                    report.findings.append(f)
                }
            }
            // Other JSON the runtime wrote must parse (request files, error files). Only the
            // runtime's own are read (a teammate's `x.json` could be a FIFO, which would hang
            // the read, or hundreds of MiB): the others are listed as foreign already.
            for name in try Spool.list(paths.approvalsDirectory) where name.hasSuffix(".json") {
                let p = paths.approvalsDirectory.appending(name)
                guard Spool.runtimeFileProblem(p.string, owner: service) == nil else { continue }
                report.filesChecked += 1
                if Self.readRuntimeJSON(p, owner: service) == nil {
                    report.findings.append(Finding(file: rel(p), problem: "not valid JSON; the run rewrites request files when it next waits on the gate"))
                }
            }
            withExtendedLifetime(lock) {}
        }

        // index/: derived, but a run it does not list is invisible to `ls --status` and to a
        // daemon's recovery, so drift is a problem to report, not to fix in silence.
        var drift = try repair ? spool.reconcileIndex(verifyFinished: true) : spool.indexDrift(verifyFinished: true)
        // A shared filesystem's client caches names (GlusterFS's FUSE mount for 1 s): an index
        // entry another host moved a moment ago may still show at its old place. Drift that is
        // real stays; look again past the cache before reporting it.
        if !repair, !drift.isEmpty, FilesystemCheck.isShared(spool.root) {
            for _ in 0..<2 where !drift.isEmpty {
                usleep(1_100_000)
                drift = try spool.indexDrift(verifyFinished: true)
            }
        }
        for m in drift.missing {
            var f = Finding(file: "index/\(m.status.rawValue)/\(m.run)", problem: "missing: state.json says \(m.status.rawValue), the index does not list the run there")
            if repair { f.repaired = "added" }
            report.findings.append(f)
        }
        for st in drift.stale {
            var f = Finding(file: "index/\(st.listed.rawValue)/\(st.run)", problem: DurableFile.exists(spool.run(st.run).stateFile) ? "stale: state.json says otherwise" : "names no run")
            if repair { f.repaired = "removed" }
            report.findings.append(f)
        }
        // keys/: every run's idempotency key has its index file.
        for (key, id) in keysWanted.sorted(by: { $0.key < $1.key }) {
            let file = spool.keysDirectory.appending(Spool.keyFileName(key))
            let bound = (try? DurableFile.readJSON(file))?["run"]?.stringValue
            guard bound != id else { continue }
            var f = Finding(file: rel(file), problem: bound == nil ? "missing index of idempotency key '\(key)' (run \(id))" : "binds key '\(key)' to \(bound!), run \(id) has it")
            if repair && bound == nil {
                try spool.durable.write(json: ["key": .string(key), "run": .string(id)], to: file)
                f.repaired = "rebuilt"
            }
            report.findings.append(f)
        }
        return report
    }

    /// A JSON file of the runtime's in a directory others can write: read only when it is a
    /// regular file of the service user (never a FIFO or a link someone put there), within
    /// 16 MiB; nil otherwise, or when it does not parse.
    static func readRuntimeJSON(_ p: FilePath, owner: uid_t) -> JSONValue? {
        var st = stat()
        guard lstat(p.string, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_uid == owner else { return nil }
        return try? DurableFile.readJSON(p, limit: 16 << 20)
    }

    /// cairn.json, the spool root and workflows/ must be the service user's (or root's) and
    /// writable by nobody else; every approvers rule must parse.
    static func configurationFindings(_ spool: Spool, rel: (FilePath) -> String) -> [Finding] {
        var out: [Finding] = []
        var trusted = [spool.root, spool.configFile, spool.workflowsDirectory]
        trusted += ((try? Spool.list(spool.workflowsDirectory)) ?? []).filter { !$0.hasPrefix(".") }.map { spool.workflowsDirectory.appending($0) }
        for p in trusted {
            if let problem = Spool.trustedFileProblem(p.string, serviceUser: spool.serviceUID ?? geteuid()) {
                out.append(Finding(file: p == spool.root ? "." : rel(p), problem: "\(problem): the daemon will not trust it"))
            }
        }
        let config: SpoolConfig
        do { config = try spool.config() } catch {
            let why = (error as? SpoolError)?.message ?? "\(error)"
            out.append(Finding(file: "cairn.json", problem: "cannot be read or parsed: \(why); the daemon refuses to start, and every command to act, until it is fixed"))
            return out
        }
        if let problem = config.approversProblem { out.append(Finding(file: "cairn.json", problem: problem)) }
        for key in (config.raw.objectValue ?? [:]).keys.sorted() where !SpoolConfig.knownSettings.contains(key) {
            out.append(Finding(file: "cairn.json", problem: "unknown setting \"\(key)\" (misspelled? it has no effect)"))
        }
        for (gate, rule) in config.approvers.sorted(by: { $0.key < $1.key }) {
            if let problem = rule.invalid {
                out.append(Finding(file: "cairn.json", problem: problem))
                continue
            }
            for u in rule.users where getpwnam(u) == nil && UInt32(u) == nil {
                out.append(Finding(file: "cairn.json", problem: "approvers[\"\(gate)\"] names user '\(u)', who does not exist on this host"))
            }
            for g in rule.groups where getgrnam(g) == nil {
                out.append(Finding(file: "cairn.json", problem: "approvers[\"\(gate)\"] names group '\(g)', which does not exist on this host"))
            }
        }
        return out
    }

    /// Files of a run that the runtime did not write (wrong owner, writable by others, or
    /// not something the runtime makes), and drop directories that are not sticky.
    static func ownershipFindings(_ p: RunPaths, service: uid_t, rel: (FilePath) -> String) -> [Finding] {
        var out: [Finding] = []
        func check(_ path: FilePath) {
            if let problem = Spool.runtimeFileProblem(path.string, owner: service) { out.append(Finding(file: rel(path), problem: problem)) }
        }
        for f in [p.runFile, p.stateFile, p.resultFile, p.journalDirectory, p.blobsDirectory, p.logsDirectory, p.decisionsDirectory, p.workDirectory, p.refusedDirectory, p.repairDirectory] { check(f) }
        var lockStat = stat()
        let lockPath = p.directory.appending(RunLock.fileName)
        if lstat(lockPath.string, &lockStat) == 0, (lockStat.st_mode & S_IFMT) != S_IFREG || lockStat.st_uid != service || lockStat.st_mode & 0o077 != 0 {
            out.append(Finding(file: rel(lockPath), problem: "is not the service user's private lock file (owner \(Principal.userName(uid: lockStat.st_uid) ?? String(lockStat.st_uid)), mode \(String(lockStat.st_mode & 0o7777, radix: 8))): the run cannot be advanced until it is removed"))
        }
        for dir in [p.journalDirectory, p.blobsDirectory] {
            for name in (try? Spool.list(dir)) ?? [] { check(dir.appending(name)) }
        }
        for dir in [p.directory, p.approvalsDirectory, p.eventsDirectory] {
            var st = stat()
            guard lstat(dir.string, &st) == 0 else { continue }
            if (st.st_mode & S_IFMT) != S_IFDIR || st.st_uid != service {
                out.append(Finding(file: rel(dir), problem: Spool.runtimeFileProblem(dir.string, owner: service) ?? "is not a directory"))
            } else if st.st_mode & 0o022 != 0 && st.st_mode & S_ISVTX == 0 {
                out.append(Finding(file: rel(dir), problem: "is writable by others but not sticky: a member could move or replace another's files (the daemon adds the sticky bit when it next advances the run)"))
            }
        }
        // People's drop directories: what is there that is not a drop the runtime will read
        // (symlinks, FIFOs, directories, files of others it refused) or a staging dot-file
        // left for over an hour.
        let now = Date().timeIntervalSince1970
        for dir in [p.approvalsDirectory, p.eventsDirectory] {
            for name in (try? Spool.list(dir)) ?? [] {
                let path = dir.appending(name)
                var st = stat()
                guard lstat(path.string, &st) == 0, st.st_uid != service else { continue }
                let who = Principal.userName(uid: st.st_uid) ?? String(st.st_uid)
                if (st.st_mode & S_IFMT) != S_IFREG {
                    out.append(Finding(file: rel(path), problem: "is not a regular file (put here by \(who)); no run reads it"))
                } else if name.hasPrefix(".") && now - Double(st.st_mtim.tv_sec) > 3600 {
                    out.append(Finding(file: rel(path), problem: "is a staging dot-file left for over an hour by \(who)"))
                } else if DurableFile.exists(Drops.errorFile(for: path)) {
                    out.append(Finding(file: rel(path), problem: "was refused (see \(Drops.errorFileName(name))) and is still here (put here by \(who))"))
                }
            }
        }
        for name in ["cancel", "pause", "retry"] {
            var st = stat()
            let path = p.directory.appending(name)
            if lstat(path.string, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG {
                out.append(Finding(file: rel(path), problem: "is not a regular file: drop an empty file (touch)"))
            }
        }
        // What the runtime writes among people's drops: request and error files.
        for name in (try? Spool.list(p.approvalsDirectory)) ?? [] where name.hasSuffix(".request.json") || name.hasSuffix(".error.json") {
            check(p.approvalsDirectory.appending(name))
        }
        let known: Set<String> = ["run.json", "state.json", "result.json", "journal", "approvals", "events", "blobs", "logs", "decisions", "work", "refused", "repair", "cancel", "pause", "retry"]
        // Anything else there is a script's scratch file (scripts run in the run directory,
        // as the service user) or someone else's: only the latter is a problem.
        for name in (try? Spool.list(p.directory)) ?? [] where !known.contains(name) && !name.hasPrefix(".") {
            var st = stat()
            let path = p.directory.appending(name)
            if lstat(path.string, &st) == 0, st.st_uid != service {
                out.append(Finding(file: rel(path), problem: "was put here by \(Principal.userName(uid: st.st_uid) ?? String(st.st_uid)): not a file the runtime or a control drop makes"))
            }
        }
        return out
    }
}
