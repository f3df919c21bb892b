import Foundation

/// Who did something: the numeric uid and, when it resolves, the user name.
public struct Principal: Codable, Sendable, Hashable {
    /// The numeric user id.
    public var uid: UInt32
    /// The user name, when the uid resolves on the machine that recorded it.
    public var user: String?

    /// A principal with a uid and maybe its name.
    public init(uid: UInt32, user: String?) {
        self.uid = uid
        self.user = user
    }

    /// The user running this process.
    public static var current: Principal { Principal(uid: getuid(), user: userName(uid: getuid())) }

    /// The user name of `uid` (`getpwuid_r`); nil when it has none.
    public static func userName(uid: UInt32) -> String? {
        var pwd = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buf = [CChar](repeating: 0, count: 4096)
        guard getpwuid_r(uid, &pwd, &buf, buf.count, &result) == 0, result != nil, let name = pwd.pw_name else { return nil }
        return String(cString: name)
    }
}

/// An error as stored in journal records and state.json.
public struct ErrorInfo: Codable, Sendable, Hashable, Error, CustomStringConvertible {
    /// What kind of error: `nondeterminism`, `step_failed`, `timeout`, `cancelled`, `io`, or the
    /// Swift type name of a workflow's own error.
    public var type: String
    /// What went wrong, for people.
    public var message: String
    /// The file at fault, relative to the run directory when it is inside it.
    public var file: String?
    /// For nondeterminism: what the journal recorded, and what the code asked for.
    public var expected: JSONValue?
    /// For nondeterminism: what the code asked for (`{kind, name}`).
    public var actual: JSONValue?
    /// False when retrying cannot help.
    public var retryable: Bool?

    /// An error of `type` with a message and the optional details above.
    public init(type: String, message: String, file: String? = nil, expected: JSONValue? = nil, actual: JSONValue? = nil, retryable: Bool? = nil) {
        self.type = type
        self.message = message
        self.file = file
        self.expected = expected
        self.actual = actual
        self.retryable = retryable
    }

    /// `TYPE: MESSAGE [FILE]`.
    public var description: String {
        var s = "\(type): \(message)"
        if let file { s += " [\(file)]" }
        return s
    }
}

/// `run.json`: written once when the run is created, never changed.
public struct RunRecord: Codable, Sendable, Hashable {
    /// The format version of `run.json` (1).
    public var format: Int = 1
    /// The run's id.
    public var id: String
    /// The workflow's name.
    public var workflow: String
    /// The workflow's declared version when known at submission (Swift workflows); the
    /// version that actually ran is in the journal's `start` record.
    public var workflowVersion: String?
    /// The input value, or a blob reference `{"$blob": ..., "bytes": N}`.
    public var input: JSONValue
    /// When the run was created.
    public var submittedAt: Date
    /// Who submitted it.
    public var submittedBy: Principal
    /// The submission's idempotency key, if it had one.
    public var idempotencyKey: String?
    /// Set on child runs: the parent run and the name of the `child` operation.
    public var parent: ParentRef?
    /// Runs sharing a concurrency key are advanced at most N at a time (cairn.json
    /// `"concurrency": {"keys": {KEY: N}, "default_key_limit": 1}`).
    public var concurrencyKey: String?
    /// Set on a run started by `ctx.continueAsNew`: the run it continues.
    public var continuedFrom: String?

    /// A child run's parent.
    public struct ParentRef: Codable, Sendable, Hashable {
        /// The parent run's id.
        public var run: String
        /// The name of the parent's `child` operation.
        public var name: String
        /// A reference to the parent run `run`'s operation `name`.
        public init(run: String, name: String) {
            self.run = run
            self.name = name
        }
    }

    enum CodingKeys: String, CodingKey {
        case format, id, workflow, input, parent
        case workflowVersion = "workflow_version"
        case submittedAt = "submitted_at"
        case submittedBy = "submitted_by"
        case idempotencyKey = "idempotency_key"
        case concurrencyKey = "concurrency_key"
        case continuedFrom = "continued_from"
    }

    /// A run record with every field.
    public init(id: String, workflow: String, workflowVersion: String? = nil, input: JSONValue, submittedAt: Date, submittedBy: Principal, idempotencyKey: String? = nil, parent: ParentRef? = nil, concurrencyKey: String? = nil, continuedFrom: String? = nil) {
        self.concurrencyKey = concurrencyKey
        self.continuedFrom = continuedFrom
        self.id = id
        self.workflow = workflow
        self.workflowVersion = workflowVersion
        self.input = input
        self.submittedAt = submittedAt
        self.submittedBy = submittedBy
        self.idempotencyKey = idempotencyKey
        self.parent = parent
    }
}

/// The statuses of SPEC §2.
public enum RunStatus: String, Codable, Sendable, CaseIterable {
    case queued, running, waiting, completed, failed, cancelled

    /// Whether the run has ended (completed, failed or cancelled).
    public var isTerminal: Bool { self == .completed || self == .failed || self == .cancelled }
}

/// `state.json`: a cache of what the journal says, rewritten on every status change.
/// `cairn fsck --repair` rebuilds it from run.json + journal/.
public struct RunState: Codable, Sendable, Hashable {
    /// The run's id.
    public var run: String
    /// The workflow's name.
    public var workflow: String
    /// The run's status.
    public var status: RunStatus
    /// While waiting: `{"kind": "approval"|"timer"|"event"|"retry"|"uncertain"|"child"|"pause", ...}`.
    public var waitingFor: WaitingFor?
    /// Counts derived from the journal.
    public var counters: Counters
    /// When this state was written.
    public var updatedAt: Date
    /// Why the run failed, when it did.
    public var error: ErrorInfo?
    /// Token accounting, filled by the agent layer: `{"input": N, "output": N, "saved": N}`.
    public var tokens: JSONValue?

    /// Counts derived from the journal.
    public struct Counters: Codable, Sendable, Hashable {
        /// Journal records (effective, after any run-level retry).
        public var journalEntries: Int
        /// Completed steps (step, llm, child).
        public var steps: Int
        /// Failed attempts that were retried.
        public var retries: Int
        /// How many times the run was (re)started from the top.
        public var executions: Int

        /// Counters, zero unless given.
        public init(journalEntries: Int = 0, steps: Int = 0, retries: Int = 0, executions: Int = 0) {
            self.journalEntries = journalEntries
            self.steps = steps
            self.retries = retries
            self.executions = executions
        }

        enum CodingKeys: String, CodingKey {
            case steps, retries, executions
            case journalEntries = "journal_entries"
        }
    }

    enum CodingKeys: String, CodingKey {
        case run, workflow, status, counters, error, tokens
        case waitingFor = "waiting_for"
        case updatedAt = "updated_at"
    }

    /// A state with every field.
    public init(run: String, workflow: String, status: RunStatus, waitingFor: WaitingFor? = nil, counters: Counters = .init(), updatedAt: Date, error: ErrorInfo? = nil, tokens: JSONValue? = nil) {
        self.run = run
        self.workflow = workflow
        self.status = status
        self.waitingFor = waitingFor
        self.counters = counters
        self.updatedAt = updatedAt
        self.error = error
        self.tokens = tokens
    }
}

/// One journal record: `journal/NNNNNN-KIND[-NAME].json`. Which fields are present depends
/// on the kind; docs/spool-format.md lists them kind by kind.
public struct JournalEntry: Codable, Sendable, Hashable {
    /// The record's position in the journal (`NNNNNN` in its file name).
    public var seq: Int
    /// The record's kind.
    public var kind: RecordKind
    /// The operation's name, when it has one.
    public var name: String?
    /// When the record was written.
    public var at: Date
    /// The operation's result (possibly a blob reference).
    public var value: JSONValue?
    /// The operation's failure (a step that failed for good, a failed run).
    public var error: ErrorInfo?
    /// step: attempts used; retry: the attempt that failed.
    public var attempt: Int?
    /// step: the idempotency key the body was given.
    public var idempotencyKey: String?
    /// step: `at_least_once` or `at_most_once`.
    public var semantics: String?
    /// step: when the attempt that produced the record started.
    public var startedAt: Date?
    /// step: how long that attempt took, in milliseconds.
    public var durationMs: Int?
    /// sleep/retry: when the wait ends; approval/event: the deadline.
    public var until: Date?
    /// approval/event: `requested` or `decided`/`received`.
    public var phase: RecordPhase?
    /// parallel steps: the group name and the branch's index in it.
    public var group: String?
    /// parallel steps: the branch's index in its group.
    public var index: Int?
    /// approval: `approved`, `rejected`, `escalated`, `rerun`, `done`; event: `received`, `timed_out`.
    public var decision: Decision?
    /// approval: who decided (the owner of the dropped file).
    public var decidedBy: Principal?
    /// The spool file the record consumed (approval drop, event file), relative to the run.
    public var file: String?
    /// approval: the approver's comment.
    public var comment: String?
    /// complete/fail/cancel: the final status.
    public var status: RunStatus?
    /// Run-level retry (`retry` with name `run`): records from this position on are superseded.
    public var resumeFrom: Int?
    /// Kind-specific extras (child run id, send target, LLM usage…).
    public var data: JSONValue?

    enum CodingKeys: String, CodingKey {
        case seq, kind, name, at, value, error, attempt, semantics, until, phase, group, index, decision, file, comment, status, data
        case idempotencyKey = "idempotency_key"
        case startedAt = "started_at"
        case durationMs = "duration_ms"
        case decidedBy = "decided_by"
        case resumeFrom = "resume_from"
    }

    /// A record with its position, kind, name and time; the other fields are set after.
    public init(seq: Int, kind: RecordKind, name: String? = nil, at: Date) {
        self.seq = seq
        self.kind = kind
        self.name = name
        self.at = at
    }

    /// A record from its JSON text (a record file, or a segment's line): decoded in one pass.
    public static func decode(_ data: Data, file: String?) throws -> JournalEntry {
        // The runtime's own JSON, read fast (RecordDecoding.swift); anything else below.
        if let e = RecordJSON.record(data) { return e }
        return try decodeWithFoundation(data, file: file)
    }

    /// The same with JSONDecoder alone (what `decode` falls back to; tests compare the two).
    package static func decodeWithFoundation(_ data: Data, file: String?) throws -> JournalEntry {
        // JSONDecoder stops at a NUL byte and ignores what follows; a NUL is never JSON.
        if data.contains(0) { throw SpoolError(.malformed, path: file, "not valid JSON: a NUL byte") }
        // Parsers disagree on duplicate keys (`cairn show` read one "seq", jq the other): a
        // record with one is damaged, as a cairn.json or a drop with one is refused.
        if let problem = JSONValue.duplicateKeyProblem(in: data) { throw SpoolError(.malformed, path: file, problem) }
        do {
            return try JSONCoding.decoder.decode(JournalEntry.self, from: data)
        } catch {
            throw SpoolError(.malformed, path: file, JSONValue.describe(error))
        }
    }

    /// The file name this record lives under.
    public var fileName: String { JournalEntry.fileName(seq: seq, kind: kind, name: name) }

    /// `NNNNNN-KIND[-NAME].json`: the position padded to six digits, the name made file-safe.
    public static func fileName(seq: Int, kind: RecordKind, name: String?) -> String {
        let pos = String(seq)
        var s = String(repeating: "0", count: max(0, 6 - pos.count)) + pos + "-" + kind.rawValue
        if let name, !name.isEmpty { s += "-" + Names.fileSafe(name) }
        return s + ".json"
    }

    /// Parses `NNNNNN-KIND[-NAME].json` into (seq, kind); nil for other names.
    public static func parseFileName(_ file: String) -> (seq: Int, kind: String)? {
        guard file.hasSuffix(".json") else { return nil }
        let base = file.dropLast(5)
        guard let dash = base.firstIndex(of: "-") else { return nil }
        let digits = base[..<dash]
        guard digits.count >= 6, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let seq = Int(digits) else { return nil }
        let rest = base[base.index(after: dash)...]
        let kind = rest.split(separator: "-", maxSplits: 1).first.map(String.init) ?? ""
        guard !kind.isEmpty else { return nil }
        return (seq, kind)
    }
}

/// Names and ids: validation and the file-safe form used in file names.
public enum Names {
    /// `[A-Za-z0-9][A-Za-z0-9._-]{0,127}` (SPEC §2).
    public static func isValidRunID(_ id: String) -> Bool {
        guard let first = id.unicodeScalars.first, id.unicodeScalars.count <= 128, isAlnum(first) else { return false }
        return id.unicodeScalars.allSatisfy { isAlnum($0) || $0 == "." || $0 == "_" || $0 == "-" }
    }

    /// Gate, event and workflow names: the same alphabet as run ids.
    public static func isValidName(_ name: String) -> Bool { isValidRunID(name) }

    /// Maps any operation name to a file-name-safe form: `[A-Za-z0-9._-]`, other
    /// characters become `_`, at most 80 characters. The full name is inside the record.
    public static func fileSafe(_ name: String) -> String {
        var out = ""
        for u in name.unicodeScalars.prefix(80) {
            out.unicodeScalars.append(isAlnum(u) || u == "." || u == "_" || u == "-" ? u : "_")
        }
        return out
    }

    /// A name from the spool (a dropped file's) made safe for a log line or a terminal:
    /// control characters escaped, so a file name cannot forge log lines — and the
    /// bidirectional overrides and isolates (U+202A–U+202E, U+2066–U+2069), which reorder
    /// what is displayed after them (a "Trojan Source" name).
    public static func isControlOrBidi(_ u: Unicode.Scalar) -> Bool {
        u.value < 0x20 || u.value == 0x7F || (u.value >= 0x80 && u.value < 0xA0) || (0x202A...0x202E).contains(u.value) || (0x2066...0x2069).contains(u.value)
    }

    public static func printable(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars {
            if isControlOrBidi(u) {
                out += "\\u{" + String(u.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }

    /// The longest file name a directory entry may have (NAME_MAX on Linux), in bytes.
    public static let nameMax = 255

    /// `prefix + name + suffix`, where `name` (a dropped file's, chosen by someone else) is
    /// shortened when the whole would not fit in NAME_MAX: its first bytes (whole characters),
    /// `~`, and 16 hex digits of its SHA-256, so two long names stay two names. Error files,
    /// set-aside and refused names derived from a drop's name always fit.
    public static func fitting(_ prefix: String, _ name: String, _ suffix: String) -> String {
        let fixed = prefix.utf8.count + suffix.utf8.count
        if fixed + name.utf8.count <= nameMax { return prefix + name + suffix }
        let tag = "~" + String(ContentHash.sha256Hex(Array(name.utf8)).prefix(16))
        let room = max(0, nameMax - fixed - tag.utf8.count)
        var kept = ""
        var used = 0
        for c in name.unicodeScalars {
            let n = String(c).utf8.count
            if used + n > room { break }
            kept.unicodeScalars.append(c)
            used += n
        }
        return prefix + kept + tag + suffix
    }

    static func isAlnum(_ u: Unicode.Scalar) -> Bool {
        (u >= "a" && u <= "z") || (u >= "A" && u <= "Z") || (u >= "0" && u <= "9")
    }
}

extension Encodable {
    /// This record as canonical JSON.
    public func canonicalJSON() throws -> JSONValue { try JSONValue(encoding: self) }
}
