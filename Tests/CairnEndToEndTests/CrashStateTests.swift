import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// Power loss, not just kill -9: the file-system calls of the real binary are recorded with
/// strace, every on-disk state a power loss could leave at every point is enumerated under
/// POSIX rules (`PowerLoss`), and each distinct state is written out, recovered with
/// `cairn fsck --repair` and a daemon start, and checked: no acknowledged journal record
/// lost or changed, no JSON file that does not parse, no step recorded twice, the
/// at-most-once step run at most once, a recorded step not run again, a submission or an
/// acknowledged approval never lost, and the run finishing with the right result.
///
/// The operations, on one run of `crash-states` (step `a`, approval `go`, at-most-once
/// `pay`): a submission through `inbox/` taken by a daemon (run created, step `a`
/// committed, approval requested); `cairn approve`; `cairn advance` (decision consumed,
/// intent and step `pay`, completion: complete record, result.json, state.json, index);
/// `cairn fsck --repair` rebuilding state.json, result.json and the index.
@Suite(.serialized) struct CrashStateTests {
    static let run = "cs"
    static let expected: JSONValue = ["a": .int(1), "approved": .bool(true), "paid": .bool(true)]
    static let syscalls = "open,openat,creat,write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,sync_file_range,rename,renameat,renameat2,link,linkat,unlink,unlinkat,mkdir,mkdirat,rmdir,truncate,ftruncate,symlink,symlinkat,fallocate"

    /// Distinct states checked per operation beyond the priority-0 ones (CAIRN_POWERLOSS_STATES).
    static var budget: Int {
        let v = ProcessInfo.processInfo.environment["CAIRN_POWERLOSS_STATES"] ?? ""
        return v == "all" ? Int.max : Int(v) ?? 120
    }

    struct Figures: CustomStringConvertible {
        var operation: String
        var ops = 0, points = 0, enumerated = 0, distinct = 0, checked = 0, failed = 0
        var description: String {
            "\(operation): \(ops) file-system ops, \(points) crash points, \(enumerated) states enumerated, \(distinct) distinct, \(checked) checked, \(failed) failed"
        }
    }

    @Test func powerLossStatesRecover() async throws {
        let t = try TempSpool(prefix: "cairn-powerloss")
        let work = try TempSpool(prefix: "cairn-powerloss-states")  // traces and states, outside the recorded tree
        let scratch = work.path.string
        let root = URL(fileURLWithPath: t.path.string).resolvingSymlinksInPath().path
        let spool = root + "/spool"
        // Compaction inside the operations: the journal's tail moves into a segment every 3
        // records (the run has 7), so the states include every point of it.
        try t.setConfig("journal_segment_records", 3)
        _ = FileManager.default.createFile(atPath: root + "/effects.log", contents: nil)
        let submission = #"{"workflow": "crash-states", "input": {"effects": "effects.log"}, "id": "cs"}"#
        try Data(submission.utf8).write(to: URL(fileURLWithPath: spool + "/inbox/cs.json"))
        sync()

        var all: [Figures] = []
        let started = ContinuousClock.now

        // 1. A submission through inbox/, taken by a daemon: the run, step a, the approval request.
        var rec = try PowerLoss.Recording(snapshot: root)
        try await Self.traceDaemon(root: root, spool: spool, trace: scratch + "/trace-submit") {
            (try? Spool.open(at: FilePath(spool)).readState(Self.run))?.status == .waiting
        }
        try rec.read(trace: scratch + "/trace-submit")
        #expect(try Spool.list(FilePath(spool + "/runs/cs/journal")).contains("000001-000003.jsonl"), "the operation compacted the journal")
        all.append(try await Self.attack(scratch: scratch, "submit via inbox/ + step a + approval requested", rec, root: root))

        // 2. cairn approve: the decision is acknowledged when the command returns.
        rec = try PowerLoss.Recording(snapshot: root)
        let approve = try await Self.traced(["approve", Self.run, "go", "--spool", spool], root: root, trace: scratch + "/trace-approve")
        #expect(approve.code == 0, "\(approve.stderr)")
        try rec.read(trace: scratch + "/trace-approve")
        all.append(try await Self.attack(scratch: scratch, "cairn approve", rec, root: root))

        // 3. cairn advance: the decision consumed, step pay, completion.
        rec = try PowerLoss.Recording(snapshot: root)
        let advance = try await Self.traced(["advance", Self.run, "--spool", spool], root: root, trace: scratch + "/trace-advance")
        #expect(advance.code == 0, "\(advance.stderr)")
        try rec.read(trace: scratch + "/trace-advance")
        all.append(try await Self.attack(scratch: scratch, "advance: decision consumed + step pay + completion", rec, root: root))

        // 4. cairn fsck --repair rebuilding what is derived (state.json, result.json, index).
        for p in ["runs/cs/state.json", "runs/cs/result.json", "index/completed/cs"] { _ = unlink(spool + "/" + p) }
        sync()
        rec = try PowerLoss.Recording(snapshot: root)
        let fsck = try await Self.traced(["fsck", "--repair", "--spool", spool], root: root, trace: scratch + "/trace-fsck")
        #expect(fsck.code == 0, "\(fsck.stdout)\(fsck.stderr)")
        try rec.read(trace: scratch + "/trace-fsck")
        all.append(try await Self.attack(scratch: scratch, "fsck --repair", rec, root: root))

        for f in all { print("power loss: \(f)") }
        print("power loss: \(all.map(\.checked).reduce(0, +)) states checked in \(ContinuousClock.now - started)")
    }

    // MARK: recording

    static func straceArgs(_ trace: String) -> [String] {
        ["-f", "-y", "-xx", "-s", "4194304", "-o", trace, "-e", "trace=\(syscalls)", "--", Binary.path("cairn-fixtures")]
    }

    /// Runs cairn-fixtures ARGS under strace (working directory: the root, where effects.log is).
    static func traced(_ args: [String], root: String, trace: String) async throws -> Binary.Result {
        await Binary.finish(try Binary.start("/usr/bin/strace", straceArgs(trace) + args, cwd: root))
    }

    /// A daemon under strace until `done`, then SIGTERM to the daemon (strace exits with it).
    static func traceDaemon(root: String, spool: String, trace: String, until done: () -> Bool) async throws {
        let p = try Binary.start("/usr/bin/strace", straceArgs(trace) + ["daemon", "--spool", spool, "--log-level", "warning"], cwd: root)
        let pid = p.0.processIdentifier
        do {
            try await waitUntil("the traced daemon to reach the approval", timeout: 30, done)
        } catch {
            kill(pid, SIGKILL)
            _ = await Binary.finish(p)
            throw error
        }
        let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        for c in children.split(separator: " ").compactMap({ Int32($0) }) { kill(c, SIGTERM) }
        let r = await Binary.finish(p)
        #expect(r.code == 0, "traced daemon: \(r.stderr)")
    }

    // MARK: attacking one operation

    /// Enumerates the crash states of one recorded operation and checks each distinct one.
    static func attack(scratch: String, _ name: String, _ rec: PowerLoss.Recording, root: String) async throws -> Figures {
        #expect(rec.unmodelled.isEmpty, "\(name): calls the model does not cover: \(rec.unmodelled.prefix(5))")
        var taken = rec
        taken.takeModes()
        let rec = taken
        var fig = Figures(operation: name)
        fig.ops = rec.ops.count
        fig.points = rec.ops.count + 1
        let states = PowerLoss.enumerate(rec)
        fig.enumerated = states.count
        // Distinct trees only (many subsets at one point repeat another point's tree). The
        // bytes of temp files (tmp/*.tmp) are left out of the comparison: nothing reads them.
        var seen = Set<Int>()
        var unique: [(PowerLoss.CrashState, [String: [UInt8]?])] = []
        for s in states {
            let tree = PowerLoss.tree(rec, s)
            var h = Hasher()
            h.combine(s.crashAfter == rec.ops.count)  // after the command returned, more is acknowledged
            for (k, v) in tree.sorted(by: { $0.key < $1.key }) {
                h.combine(k)
                if k.hasPrefix("spool/tmp/") && k.hasSuffix(".tmp") { h.combine(v == nil) } else { h.combine(v) }
            }
            if seen.insert(h.finalize()).inserted { unique.append((s, tree)) }
        }
        fig.distinct = unique.count
        // Every distinct state of priority 0, then a seeded sample of the rest up to the budget
        // (CAIRN_POWERLOSS_STATES per operation; "all" checks every one).
        var rng = SeededRandom("power loss \(name)")
        let budget = Self.budget
        var chosen = unique.filter { $0.0.priority == 0 }
        var rest = unique.filter { $0.0.priority != 0 }
        while chosen.count < budget && !rest.isEmpty { chosen.append(rest.remove(at: Int(rng.next() % UInt64(rest.count)))) }
        unique = chosen
        let end = PowerLoss.CrashState(crashAfter: rec.ops.count, lost: [], tails: [:], label: "")
        let finished = Set(PowerLoss.tree(rec, end).filter { $0.key.hasPrefix("spool/runs/cs/") && $0.value != nil }.keys)
        let statesDir = scratch + "/states-\(name.prefix(6).filter(\.isLetter))"
        // Two at a time (a 2-core machine): each check runs fsck and a daemon.
        let results = await withTaskGroup(of: [String].self) { group in
            var out: [[String]] = []
            var next = 0
            func add(_ group: inout TaskGroup<[String]>) {
                let (s, tree) = unique[next]
                let dir = "\(statesDir)/\(next)"
                // Acknowledged: durable by the model's rules at this point; and once the
                // command has returned, everything it did (it said so by exiting 0).
                let durable = s.crashAfter == rec.ops.count ? finished : PowerLoss.acknowledged(rec, at: s.crashAfter, under: "spool/runs/cs/")
                let ack = durable.filter { $0.hasPrefix("spool/runs/cs/journal/") }
                let approvalAcked = durable.contains("spool/runs/cs/approvals/go.approved")
                group.addTask {
                    let problems = await check(rec, s, tree: tree, dir: dir, acknowledged: ack, approvalAcknowledged: approvalAcked)
                    if problems.isEmpty { try? FileManager.default.removeItem(atPath: dir) }
                    return problems.map { "\(name), \(s.label) [\(dir)]: \($0)" }
                }
                next += 1
            }
            while next < unique.count && next < 2 { add(&group) }
            while let r = await group.next() {
                out.append(r)
                if next < unique.count { add(&group) }
            }
            return out
        }
        fig.checked = results.count
        fig.failed = results.filter { !$0.isEmpty }.count
        // One issue per kind of problem: how many states showed it, and the first of them.
        var kinds: [String: (Int, String)] = [:]
        for p in results.flatMap({ $0 }) {
            let kind = p.range(of: "]: ").map { String(p[$0.upperBound...].prefix(80)) } ?? p
            kinds[kind, default: (0, p)].0 += 1
        }
        for (_, (n, first)) in kinds.sorted(by: { $0.key < $1.key }) { Issue.record(Comment(rawValue: "\(n) state(s); the first: \(first)")) }
        return fig
    }

    /// Writes one crash state out, recovers it, and returns what is wrong (nothing, if all is well).
    static func check(_ rec: PowerLoss.Recording, _ s: PowerLoss.CrashState, tree: [String: [UInt8]?], dir: String, acknowledged: Set<String>, approvalAcknowledged: Bool) async -> [String] {
        var problems: [String] = []
        do {
            try PowerLoss.materialise(rec, s, tree: tree, into: dir)
        } catch {
            return ["cannot write the state: \(error)"]
        }
        let spool = dir + "/spool"
        // What the disk holds right after the loss: every JSON file the runtime renamed into
        // place was fsync'd first, so it parses (temp and dot-files may be partial) — but
        // state.json, whose `running` mark is not fsync'd (the daemon's start writes it again
        // from the journal; checked after recovery below).
        for (path, bytes) in tree {
            guard let bytes, path.hasSuffix(".json"), !path.hasPrefix("spool/tmp/"), !path.hasSuffix("/state.json"), !(path.split(separator: "/").last ?? "").hasPrefix(".") else { continue }
            if (try? JSONValue.parse(Data(bytes), file: path)) == nil { problems.append("\(path) does not parse after the loss (\(bytes.count) bytes)") }
        }
        let effectsBefore = CrashTests.effectCounts(dir + "/effects.log")
        // Records, not files: a compaction moves single record files into a segment.
        let recordedBefore = Self.records(tree.filter { $0.key.hasPrefix("spool/runs/cs/journal/") }).values
        let acknowledgedRecords = Self.records(tree.filter { acknowledged.contains($0.key) })

        // Recovery: fsck --repair, then a daemon until the run ends.
        guard let repair = try? await Binary.finish(Binary.start("cairn-fixtures", ["fsck", "--repair", "--spool", spool], cwd: dir)) else { return ["cannot start fsck"] }
        if repair.code != 0 { problems.append("fsck --repair exited \(repair.code): \(repair.stdout)\(repair.stderr)") }
        guard let daemon = try? Binary.start("cairn-fixtures", ["daemon", "--spool", spool, "--log-level", "warning"], cwd: dir) else { return ["cannot start the daemon"] }
        var approved = false, resolved = false, finished = false
        var waitingSince: Date? = nil
        // A whole recovery (inbox → step → approval → step → completion) on a loaded 2-core
        // machine: 20 s was once too little for a state that recovers in 2 s alone (a full
        // `make test` beside another load; the same seed passed alone).
        let deadline = Date().addingTimeInterval(60 * testTimeScale)
        while Date() < deadline {
            let state = try? Spool.open(at: FilePath(spool)).readState(run)
            if let state {
                if state.status == .completed { finished = true; break }
                if state.status == .failed || state.status == .cancelled {
                    problems.append("the run ended \(state.status.rawValue): \(state.error.map { "\($0)" } ?? "")")
                    break
                }
                if state.status == .waiting, state.waitingFor?["kind"] == "approval", approvalAcknowledged {
                    // The daemon takes a decision dropped while none ran at its start: give it 10 s
                    // (a loaded machine; it is not a latency bound).
                    let since = waitingSince ?? Date()
                    waitingSince = since
                    if Date().timeIntervalSince(since) > 10 * testTimeScale {
                        problems.append("the run waits for an approval `cairn approve` acknowledged")
                        break
                    }
                } else if state.status == .waiting, state.waitingFor?["kind"] == "approval", !approved {
                    approved = true
                    _ = try? await Binary.finish(Binary.start("cairn-fixtures", ["approve", run, "go", "--spool", spool], cwd: dir))
                }
                if state.status == .waiting, state.waitingFor?["kind"] == "uncertain", !resolved {
                    // A person checks the effects log: record what really happened.
                    resolved = true
                    let paid = CrashTests.effectCounts(dir + "/effects.log")["pay", default: 0] == 1
                    let drop = spool + "/runs/cs/approvals/uncertain-pay.approved"
                    try? Data((paid ? #"{"action": "done", "value": true}"# : "").utf8).write(to: URL(fileURLWithPath: drop + ".tmp"))
                    _ = rename(drop + ".tmp", drop)
                }
            } else if !FileManager.default.fileExists(atPath: spool + "/inbox/cs.json") && !FileManager.default.fileExists(atPath: spool + "/runs/cs") {
                problems.append("the submission is lost: neither inbox/cs.json nor runs/cs")
                break
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
        kill(daemon.0.processIdentifier, SIGTERM)
        let d = await Binary.finish(daemon)
        if !finished && problems.isEmpty { problems.append("the run did not complete (daemon: \(d.stderr.suffix(600)))") }
        guard finished else { return problems }

        // After recovery.
        if let result = try? DurableFile.readJSON(FilePath(spool + "/runs/cs/result.json")) {
            if result != expected { problems.append("result \(result), expected \(expected)") }
        } else {
            problems.append("no result.json that parses")
        }
        let journal: [JournalEntry]
        do {
            journal = try Spool.open(at: FilePath(spool)).journal(run).load()
        } catch {
            return problems + ["the journal does not load after recovery: \(error)"]
        }
        var kinds: [String: Int] = [:]
        for record in journal {
            // KIND-NAME, and the phase of two-record operations (an approval's requested/decided).
            // An at-most-once step writes an intent per attempt (a person may choose "rerun").
            let attempt = record.kind == .intent ? record.attempt.map { " attempt \($0)" } ?? "" : ""
            kinds[String(record.fileName.drop { $0 != "-" }) + (record.phase.map { " (\($0.rawValue))" } ?? "") + attempt, default: 0] += 1
        }
        for (k, n) in kinds where n > 1 { problems.append("recorded \(n) times: \(k)") }
        for (seq, was) in acknowledgedRecords {
            if seq > journal.count { problems.append("acknowledged record \(seq) (\(was.fileName)) lost") } else if journal[seq - 1] != was { problems.append("acknowledged record \(seq) (\(was.fileName)) changed") }
        }
        let effects = CrashTests.effectCounts(dir + "/effects.log")
        if effects["pay", default: 0] != 1 { problems.append("the at-most-once step ran \(effects["pay", default: 0]) times") }
        if effects["a", default: 0] < 1 { problems.append("step a never ran") }
        if recordedBefore.contains(where: { $0.kind == .step && $0.name == "a" }), effects["a", default: 0] != effectsBefore["a", default: 0] {
            problems.append("step a ran again after its record was on disk")
        }
        for (path, bytes) in Self.files(under: spool) where path.hasSuffix(".json") && !path.hasPrefix("tmp/") && !(path.split(separator: "/").last ?? "").hasPrefix(".") {
            if (try? JSONValue.parse(bytes, file: path)) == nil { problems.append("\(path) does not parse after recovery") }
        }
        if let runs = try? FileManager.default.contentsOfDirectory(atPath: spool + "/runs"), runs != [run] { problems.append("runs after recovery: \(runs)") }
        if let v = try? await Binary.finish(Binary.start("cairn-fixtures", ["fsck", "--spool", spool], cwd: dir)), v.code != 0 {
            problems.append("fsck after recovery: \(v.stdout)\(v.stderr)")
        }
        return problems
    }

    /// The journal records in `files` (paths → bytes at the crash): single record files and
    /// segments; what does not decode is left out (the checks above say what parses).
    static func records(_ files: [String: [UInt8]?]) -> [Int: JournalEntry] {
        var out: [Int: JournalEntry] = [:]
        for (path, bytes) in files {
            guard let bytes, let name = path.split(separator: "/").last.map(String.init) else { continue }
            if JournalEntry.parseFileName(name) != nil, let e = try? JournalEntry.decode(Data(bytes), file: path) {
                out[e.seq] = e
            } else if let (first, last) = Journal.parseSegmentName(name), let es = try? Journal.decodeSegment(Data(bytes), first: first, last: last) {
                for e in es { out[e.seq] = e }
            }
        }
        return out
    }

    static func files(under root: String) -> [(String, Data)] {
        var out: [(String, Data)] = []
        let e = FileManager.default.enumerator(atPath: root)
        while let rel = e?.nextObject() as? String {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: root + "/" + rel, isDirectory: &isDir), !isDir.boolValue, let d = FileManager.default.contents(atPath: root + "/" + rel) {
                out.append((rel, d))
            }
        }
        return out
    }
}
