import Cairn
import CairnSpool
import Foundation
import CSystemShims
import SystemPackage

/// Turns `inbox/NAME.json` into runs (SPEC §2). A file that cannot be accepted moves to
/// `rejected/` with `NAME.error.json` beside it; nothing is ever deleted but an accepted
/// submission (whose content now lives in its run).
public enum Inbox {
    public enum Outcome: Sendable, Equatable {
        case accepted(run: String, created: Bool)
        case rejected(reason: String)
        case ignored
    }

    public static let sizeLimit = 1 << 20

    public static func process(_ name: String, spool: Spool, isKnownWorkflow: (String) -> Bool, now: Date = Date()) throws -> Outcome {
        guard !name.hasPrefix("."), !name.hasSuffix(".tmp"), !name.hasSuffix("~") else { return .ignored }
        let path = spool.inboxDirectory.appending(name)
        // Several daemons may see the same file: they take turns through a lock file only the
        // service user can open (a lock on the dropped file itself could be held by anyone
        // who can read it, to keep a submission out), and the winner removes or rejects the
        // file before letting go; the next finds it gone.
        let lockPath = spool.tmpDirectory.appending("inbox.lock").string
        let fd = open(lockPath, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SpoolError(.io, path: lockPath, errno: errno, "cannot open the inbox lock") }
        defer { close(fd) }
        guard cairn_flock(fd, CAIRN_LOCK_EX) == 0 else { throw SpoolError(.io, path: lockPath, errno: errno, "cannot lock the inbox") }
        return try processLocked(name, path: path, spool: spool, isKnownWorkflow: isKnownWorkflow, now: now)
    }

    static func processLocked(_ name: String, path: FilePath, spool: Spool, isKnownWorkflow: (String) -> Bool, now: Date) throws -> Outcome {
        let reason: String
        switch Drops.read(path, limit: sizeLimit, limitSetting: "the inbox limit of 1 MiB per submission; put larger inputs in a file the workflow reads") {
        case .absent:
            return .ignored
        case .refused(_, let r, _):
            reason = "\(name) \(r)"
        case .valid(let f):
            if let r = validate(name: name, f.json, isKnownWorkflow: isKnownWorkflow) {
                reason = r
            } else {
                let j = f.json!
                // Without an id or key, the file itself is the key (name + inode + mtime), so a
                // daemon killed between creating the run and removing the file does not create
                // a second run from it on restart.
                let implicitKey = j["id"] == nil && j["idempotency_key"] == nil ? "inbox:\(name):\(f.identity)" : nil
                let submission = Spool.Submission(
                    workflow: j["workflow"]!.stringValue!, input: j["input"] ?? .null,
                    id: j["id"]?.stringValue, idempotencyKey: j["idempotency_key"]?.stringValue ?? implicitKey,
                    submittedBy: f.owner, concurrencyKey: j["concurrency_key"]?.stringValue)
                let (run, created) = try spool.createRun(submission, now: now)
                if !created, let existing = try? spool.readRun(run), existing.submittedBy.uid != f.owner.uid {
                    // Ids and keys are one namespace for everyone: a run someone else submitted
                    // is not this submission's run. Say so, instead of "duplicate, accepted".
                    let by = existing.submittedBy.user ?? String(existing.submittedBy.uid)
                    try reject(name, reason: "\(name): the \(j["id"] != nil ? "id" : "idempotency key") is already used by run \(run), submitted by \(by), not by you; choose another", spool: spool, now: now)
                    return .rejected(reason: "id or key already used by \(by)'s run \(run)")
                }
                // (The implicit key's promise: a daemon that dies here makes no second run.)
                CrashPoints.reached("inbox.before-unlink")
                guard unlink(path.string) == 0 || errno == ENOENT else {
                    throw SpoolError(.io, path: path.string, errno: errno, "accepted as run \(run), but cannot remove it from the inbox")
                }
                try DurableFile.fsyncDirectory(spool.inboxDirectory)
                return .accepted(run: run, created: created)
            }
        }
        try reject(name, reason: reason, spool: spool, now: now)
        return .rejected(reason: reason)
    }

    static func validate(name: String, _ json: JSONValue?, isKnownWorkflow: (String) -> Bool) -> String? {
        guard name.hasSuffix(".json") else { return "\(name): inbox files must be named NAME.json" }
        guard let json, case .object(let o) = json else { return "\(name): must be a JSON object {\"workflow\": NAME, \"input\": VALUE, \"id\"?: ID, \"idempotency_key\"?: KEY}" }
        let unknown = Set(o.keys).subtracting(["workflow", "input", "id", "idempotency_key", "concurrency_key"])
        if !unknown.isEmpty { return "\(name): unknown field(s) \(unknown.sorted().joined(separator: ", "))" }
        guard let wf = o["workflow"]?.stringValue else { return "\(name): missing \"workflow\" (a string)" }
        guard Names.isValidName(wf) else { return "\(name): invalid workflow name '\(wf)'" }
        guard isKnownWorkflow(wf) else { return "\(name): no workflow '\(wf)' (not registered in this daemon, and no executable SPOOL/workflows/\(wf))" }
        if let id = o["id"] {
            guard let s = id.stringValue, Names.isValidRunID(s) else { return "\(name): \"id\" must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}" }
        }
        if let k = o["idempotency_key"], k.stringValue == nil { return "\(name): \"idempotency_key\" must be a string" }
        if let k = o["concurrency_key"], k.stringValue == nil { return "\(name): \"concurrency_key\" must be a string" }
        return nil
    }

    /// Moves the file to rejected/ beside its error file, never replacing anything there:
    /// `NAME.json` + `NAME.error.json`, else `NAME.2.json` + `NAME.2.error.json`, … The error
    /// file is written first, so a full disk leaves the submission in inbox/ (tried again
    /// later), never in rejected/ without its reason.
    static func reject(_ name: String, reason: String, spool: Spool, now: Date) throws {
        let from = spool.inboxDirectory.appending(name)
        let stem = name.hasSuffix(".json") ? String(name.dropLast(5)) : name
        let ext = name.hasSuffix(".json") ? ".json" : ""
        // A file that could not be moved was reported once already (it is still in inbox/).
        if let e = try? DurableFile.readJSON(spool.rejectedDirectory.appending(Names.fitting("", stem, ".error.json"))), e["still_in"] != nil, e["file"]?.stringValue == name {
            return
        }
        for n in 1... {
            // Names that would not fit in NAME_MAX are shortened (Names.fitting): a long
            // name must not keep a bad submission in inbox/ for ever.
            let target = n == 1 ? name : Names.fitting("", stem, ".\(n)\(ext)")
            let errorName = Names.fitting("", stem, (n == 1 ? "" : ".\(n)") + ".error.json")
            let to = spool.rejectedDirectory.appending(target)
            let errorPath = spool.rejectedDirectory.appending(errorName)
            guard errorName != target, !DurableFile.exists(to), !DurableFile.exists(errorPath) else { continue }
            let error: JSONValue = ["file": .string(target), "error": .string(reason), "at": .string(Timestamp.format(now)),
                                    "hint": "fix a copy and drop it into inbox/ (write it elsewhere, then mv)"]
            do {
                try spool.durable.write(json: error, to: errorPath, mode: .noReplace)
            } catch let e as SpoolError where e.code == .exists {
                continue
            }
            do {
                try DurableFile.rename(from, to: to, mode: .noReplace)
            } catch let e as SpoolError {
                if e.errno == EACCES || e.errno == EPERM {
                    // Another user's directory cannot change parent without write access
                    // to it: it stays in inbox/, and the error file says so (once).
                    let stuck: JSONValue = ["file": .string(name), "error": .string(reason + " — and it cannot be moved here (a directory of another user): remove it from inbox/"), "at": .string(Timestamp.format(now)), "still_in": "inbox/"]
                    try? spool.durable.write(json: stuck, to: errorPath, mode: .replace)
                    return
                }
                _ = unlink(errorPath.string)
                if e.code == .exists { continue }
                if e.errno == ENOENT { return }  // another daemon took it
                throw e
            }
            try DurableFile.fsyncDirectory(spool.rejectedDirectory)
            try DurableFile.fsyncDirectory(spool.inboxDirectory)
            return
        }
    }
}
