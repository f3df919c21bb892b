import CairnSpool
import Foundation

/// What a run asks a person to approve; written to `approvals/GATE.request.json`.
public struct ApprovalRequest: Codable, Sendable, Hashable {
    /// One or two sentences: what will happen if approved.
    public var summary: String
    /// Anything the approver should see (the draft, the tool call's arguments…).
    public var details: JSONValue?

    public init(summary: String, details: JSONValue? = nil) {
        self.summary = summary
        self.details = details
    }
}

/// A person's decision on a gate.
public struct ApprovalDecision: Sendable, Hashable {
    public var gate: String
    public var approved: Bool
    /// The approval's payload: the dropped file's `"value"` (or its whole JSON when it is
    /// not `{"comment", "value"}` shaped), e.g. an edited draft.
    public var value: JSONValue?
    public var comment: String?
    /// For rejections: the dropped `{"reason": ...}`.
    public var reason: String?
    public var decidedBy: Principal?
    public var decidedAt: Date
    /// True when the decision is the gate's declared timeout outcome.
    public var timedOut: Bool

    /// The payload decoded as `T`.
    public func value<T: Decodable>(as type: T.Type) throws -> T? {
        guard let value, !value.isNull else { return nil }
        return try value.decode(as: T.self)
    }
}

/// What happens when a gate's timeout passes with no decision.
public indirect enum ApprovalTimeout: Sendable {
    case reject
    case approve
    /// Ask another gate (with its own timeout and outcome).
    case escalate(to: String, timeout: Duration?, then: ApprovalTimeout)
}

/// A decision file as read from approvals/.
struct DroppedDecision {
    var approved: Bool
    var raw: JSONValue?
    var value: JSONValue?
    var comment: String?
    var reason: String?
    var decidedBy: Principal?
    var decidedAt: Date
    var file: String
}

extension WorkflowContext {
    /// Waits for a person to approve or reject (SPEC §3). Writes `approvals/GATE.request.json`
    /// and waits until `GATE.approved` or `GATE.rejected` is dropped (one dropped before the
    /// run got here counts too). The decision, who made it and when are journaled.
    public func approval(_ gate: String, request: ApprovalRequest, timeout: Duration? = nil, onTimeout: ApprovalTimeout = .reject) async throws -> ApprovalDecision {
        guard Names.isValidName(gate) else { throw StepError.nonRetryable("invalid gate name '\(gate)' (letters, digits, '.', '_', '-')") }
        var requested = try replayPhase("approval", gate, phase: "requested")
        if requested == nil {
            try beforeLive()
            let deadline = timeout.map { clock.now().addingTimeInterval($0.seconds) }
            try writeRequest(gate: gate, request: request, deadline: deadline)
            requested = try record("approval", gate) {
                $0.phase = "requested"
                $0.until = deadline
                $0.data = try JSONValue(encoding: request)
            }
        }
        if let e = peek() {
            let d = try replay("approval", gate)!
            let file = "journal/" + e.fileName
            if d.decision == "escalated", case .escalate(let next, let t, let then) = onTimeout {
                return try await approval(next, request: request, timeout: t, onTimeout: then)
            }
            guard let decision = d.decision, ["approved", "rejected"].contains(decision) else {
                throw NondeterminismError(info: ErrorInfo(type: "nondeterminism", message: "nondeterminism: \(file) has decision '\(d.decision ?? "none")' that this code does not expect", file: file, retryable: false))
            }
            return ApprovalDecision(gate: gate, approved: decision == "approved", value: try d.value.map { try blobs.resolve($0) }, comment: d.comment, reason: d.error?.message, decidedBy: d.decidedBy, decidedAt: d.at, timedOut: d.data?["timed_out"]?.boolValue ?? false)
        }
        try beforeLive()
        if let d = try readDecision(gate: gate) {
            let e = try record("approval", gate) {
                $0.phase = "decided"
                $0.decision = d.approved ? "approved" : "rejected"
                $0.value = try d.value.map { try blobs.externalize($0) }
                $0.comment = d.comment
                $0.error = d.reason.map { ErrorInfo(type: "rejected", message: $0) }
                $0.decidedBy = d.decidedBy
                $0.file = d.file
                $0.startedAt = d.decidedAt
            }
            return ApprovalDecision(gate: gate, approved: d.approved, value: d.value, comment: d.comment, reason: d.reason, decidedBy: d.decidedBy, decidedAt: e.at, timedOut: false)
        }
        if let deadline = requested?.until, clock.now() >= deadline {
            switch onTimeout {
            case .reject, .approve:
                let approved: Bool = { if case .approve = onTimeout { return true } else { return false } }()
                let e = try record("approval", gate) {
                    $0.phase = "decided"
                    $0.decision = approved ? "approved" : "rejected"
                    $0.comment = "timed out"
                    $0.data = ["timed_out": true]
                }
                return ApprovalDecision(gate: gate, approved: approved, value: nil, comment: "timed out", reason: approved ? nil : "timed out", decidedBy: nil, decidedAt: e.at, timedOut: true)
            case .escalate(let next, let t, let then):
                try record("approval", gate) {
                    $0.phase = "decided"
                    $0.decision = "escalated"
                    $0.data = ["timed_out": true, "escalated_to": .string(next)]
                }
                return try await approval(next, request: request, timeout: t, onTimeout: then)
            }
        }
        if !DurableFile.exists(paths.approvalsDirectory.appending("\(gate).request.json")) {
            try writeRequest(gate: gate, request: request, deadline: requested?.until)
        }
        var waiting: [String: JSONValue] = [
            "kind": "approval", "gate": .string(gate),
            "drop": .string("approvals/\(gate).approved"),
            "reject": .string("approvals/\(gate).rejected"),
        ]
        if let until = requested?.until { waiting["until"] = .string(Timestamp.format(until)) }
        throw suspend(.object(waiting))
    }

    /// Replays the next record when it is (kind, name) in `phase`; nil when live or when the
    /// next record is the same operation in another phase.
    func replayPhase(_ kind: String, _ name: String, phase: String) throws -> JournalEntry? {
        try throwIfSuspended()
        guard let e = peek() else { return nil }
        if e.kind == kind && e.name == name && e.phase != phase { return nil }
        return try replay(kind, name)
    }

    func writeRequest(gate: String, request: ApprovalRequest, deadline: Date?) throws {
        var o: [String: JSONValue] = [
            "gate": .string(gate),
            "run": .string(runID),
            "workflow": .string(workflowName),
            "summary": .string(request.summary),
            "requested_at": .string(Timestamp.format(clock.now())),
            "approve": .string("touch \(paths.approvalsDirectory.appending("\(gate).approved").string)   (or: cairn approve \(runID) \(gate))"),
            "reject": .string("touch \(paths.approvalsDirectory.appending("\(gate).rejected").string)   (or: cairn reject \(runID) \(gate))"),
        ]
        if let d = request.details { o["details"] = d }
        if let deadline { o["expires_at"] = .string(Timestamp.format(deadline)) }
        let policy = config.approvers[gate] ?? config.approvers["*"]
        if let policy { o["approvers"] = ["users": .array(policy.users.map { .string($0) }), "groups": .array(policy.groups.map { .string($0) })] }
        try spool.durable.write(json: .object(o), to: paths.approvalsDirectory.appending("\(gate).request.json"))
    }

    /// Reads `GATE.rejected` / `GATE.approved` (rejection wins when both exist). Refused
    /// drops get an error file beside them and count as no decision.
    func readDecision(gate: String) throws -> DroppedDecision? {
        let policy = config.approvers[gate] ?? config.approvers["*"]
        for (suffix, approved) in [("rejected", false), ("approved", true)] {
            let path = paths.approvalsDirectory.appending("\(gate).\(suffix)")
            switch Drops.read(path, limit: config.dropSizeLimit, policy: policy) {
            case .absent: continue
            case .refused(let p, let reason, let identity):
                try Drops.refuse(p, reason: reason, identity: identity, durable: spool.durable, now: clock.now())
                logger.warning("refused a decision file", metadata: ["run": "\(runID)", "file": "\(p)", "reason": "\(reason)"])
                continue
            case .valid(let f):
                var value: JSONValue? = nil
                var comment: String? = nil
                var reason: String? = nil
                if let j = f.json {
                    if case .object(let o) = j, Set(o.keys).isSubset(of: ["comment", "value", "reason", "action"]) {
                        value = o["value"]
                        comment = o["comment"]?.stringValue
                        reason = o["reason"]?.stringValue
                    } else {
                        value = j
                    }
                }
                if !approved && reason == nil { reason = comment ?? "rejected" }
                return DroppedDecision(approved: approved, raw: f.json, value: value, comment: comment, reason: reason, decidedBy: f.owner, decidedAt: f.modified, file: "approvals/\(gate).\(suffix)")
            }
        }
        return nil
    }

    /// Renames a consumed decision so the gate can be asked again (uncertain steps).
    func setAsideDecision(gate: String, seq: Int) throws {
        for suffix in ["approved", "rejected"] {
            let p = paths.approvalsDirectory.appending("\(gate).\(suffix)")
            if DurableFile.exists(p) {
                try DurableFile.rename(p, to: paths.approvalsDirectory.appending("\(gate).\(suffix).used-\(seq)"), mode: .replace)
            }
        }
        try DurableFile.fsyncDirectory(paths.approvalsDirectory)
    }
}
