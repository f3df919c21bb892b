import CairnSpool
import Foundation

/// What a run asks a person to approve; written to `approvals/GATE.request.json`.
public struct ApprovalRequest: Codable, Sendable, Hashable {
    /// One or two sentences: what will happen if approved.
    public var summary: String
    /// Anything the approver should see (the draft, the tool call's arguments…).
    public var details: JSONValue?

    /// A request with a summary and optional details.
    public init(summary: String, details: JSONValue? = nil) {
        self.summary = summary
        self.details = details
    }
}

/// A person's decision on a gate.
public struct ApprovalDecision: Sendable, Hashable {
    /// The gate's name.
    public var gate: String
    /// Whether the gate was approved (false for a rejection).
    public var approved: Bool
    /// The approval's payload: the dropped file's `"value"` (or its whole JSON when it is
    /// not `{"comment", "value"}` shaped), e.g. an edited draft.
    public var value: JSONValue?
    /// The approver's comment, if the dropped file had one.
    public var comment: String?
    /// For rejections: the dropped `{"reason": ...}`.
    public var reason: String?
    /// Who decided: the owner of the dropped file (nil for a timeout's outcome).
    public var decidedBy: Principal?
    /// When the decision was recorded.
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
    /// The gate is rejected.
    case reject
    /// The gate is approved.
    case approve
    /// Ask another gate (with its own timeout and outcome).
    case escalate(to: String, timeout: Duration?, then: ApprovalTimeout)
}

/// A decision file as read from approvals/.
package struct DroppedDecision {
    package var approved: Bool
    package var raw: JSONValue?
    package var value: JSONValue?
    package var comment: String?
    package var reason: String?
    package var decidedBy: Principal?
    package var decidedAt: Date
    package var file: String
    package var inode: UInt64
    package var identity: String
    package var authorization: String?

    /// Who decided, as the agent layer records it: the user's name, else the uid.
    package var by: String { decidedBy.map { $0.user ?? String($0.uid) } ?? "?" }
    /// `GATE.approved` or `GATE.rejected`.
    package var fileName: String { (file as NSString).lastPathComponent }
}

extension WorkflowContext {
    /// Waits for a person to approve or reject (SPEC §3). Writes `approvals/GATE.request.json`
    /// and waits until `GATE.approved` or `GATE.rejected` is dropped (one dropped before the
    /// run got here counts too). The decision, who made it and when are journaled.
    ///
    /// `checkValue` looks at an approval's value (when it has one) before it is recorded and
    /// returns why it is refused, or nil: a refused decision is a bad drop — an error file
    /// beside it, the file set aside in `refused/`, the gate still open, the reason in
    /// `waiting_for.refused` — never a failed run. `expectedValue` is what the request file
    /// tells the person (`value_expected`). See also `approval(_:request:expecting:…)`.
    public func approval(
        _ gate: String, request: ApprovalRequest, timeout: Duration? = nil, onTimeout: ApprovalTimeout = .reject,
        expectedValue: String? = nil, checkValue: (@Sendable (JSONValue) -> String?)? = nil
    ) async throws -> ApprovalDecision {
        guard Names.isValidName(gate) else { throw StepError.nonRetryable("invalid gate name '\(gate)' (letters, digits, '.', '_', '-')") }
        return try await perform(ApprovalOperation(gate: gate, request: request, timeout: timeout, onTimeout: onTimeout, expectedValue: expectedValue, checkValue: checkValue))
    }

    /// An approval whose value, when a person gives one, must decode as `V`: one that does
    /// not is refused before anything is recorded (the gate stays open and the person is told
    /// why), so `decision.value(as: V.self)` cannot fail. Rejections are not checked.
    public func approval<V: Decodable & Sendable>(
        _ gate: String, request: ApprovalRequest, expecting: V.Type, timeout: Duration? = nil, onTimeout: ApprovalTimeout = .reject
    ) async throws -> ApprovalDecision {
        guard Names.isValidName(gate) else { throw StepError.nonRetryable("invalid gate name '\(gate)' (letters, digits, '.', '_', '-')") }
        let check: @Sendable (JSONValue) -> String? = { value in
            do {
                _ = try value.decode(as: V.self)
                return nil
            } catch {
                return "does not decode as \(V.self): \(JSONValue.describe(error))"
            }
        }
        return try await perform(ApprovalOperation(gate: gate, request: request, timeout: timeout, onTimeout: onTimeout, expectedValue: "\(V.self)", valueKinds: Self.jsonKinds(of: V.self), checkValue: check))
    }

    /// The JSON kinds (`number`, `string`, `boolean`, `array`, `object`) a value of `V` may
    /// be, by trying one of each; nil when every kind or none decodes (nothing to tell). The
    /// request file lists them (`value_kinds`), so that `cairn approve --value` refuses a
    /// value of the wrong kind before it is dropped.
    static func jsonKinds<V: Decodable>(of: V.Type) -> [String]? {
        let probes: [JSONValue] = [.int(0), .double(0.5), .string(""), .bool(true), .array([]), .object([:])]
        var kinds: [String] = []
        for p in probes where !kinds.contains(p.kindName) && (try? p.decode(as: V.self)) != nil { kinds.append(p.kindName) }
        return kinds.isEmpty || kinds.count == 5 ? nil : kinds
    }

    func writeRequest(gate: String, request: ApprovalRequest, deadline: Date?, expectedValue: String? = nil, valueKinds: [String]? = nil) throws {
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
        if let expectedValue { o["value_expected"] = .string(expectedValue) }
        if let valueKinds { o["value_kinds"] = .array(valueKinds.map { .string($0) }) }
        if let deadline { o["expires_at"] = .string(Timestamp.format(deadline)) }
        if let policy = config.approvalPolicy(gate: gate) {
            var a: [String: JSONValue] = ["users": .array(policy.users.map { .string($0) }), "groups": .array(policy.groups.map { .string($0) })]
            if let problem = policy.invalid { a["problem"] = .string(problem) }
            o["approvers"] = .object(a)
        }
        let requestFile = paths.approvalsDirectory.appending("\(gate).request.json")
        Spool.setAsideForeign(requestFile)
        try spool.durable.write(json: .object(o), to: requestFile)
    }

    /// Reads `GATE.rejected` / `GATE.approved` (rejection wins when both exist). Refused
    /// drops get an error file beside them and count as no decision.
    package func readDecision(gate: String) throws -> DroppedDecision? {
        let policy = config.approvalPolicy(gate: gate)
        for (suffix, approved) in [("rejected", false), ("approved", true)] {
            let path = paths.approvalsDirectory.appending("\(gate).\(suffix)")
            switch Drops.read(path, limit: config.dropSizeLimit, policy: policy) {
            case .absent: continue
            case .refused(let p, let reason, let identity):
                try Drops.refuse(p, reason: reason, identity: identity, durable: spool.durable, now: clock.now(), setAsideIn: paths.refusedDirectory)
                logger.warning("refused a decision file", metadata: ["run": "\(runID)", "file": "\(Names.printable(p.string))", "reason": "\(Names.printable(reason))"])
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
                let authorization = f.authorization ?? "no approvers rule for this gate: whoever may write approvals/ (Unix permissions)"
                return DroppedDecision(approved: approved, raw: f.json, value: value, comment: comment, reason: reason, decidedBy: f.owner, decidedAt: f.modified, file: "approvals/\(gate).\(suffix)", inode: f.inode, identity: f.identity, authorization: authorization)
            }
        }
        return nil
    }

    /// What a decision record keeps of the dropped file: who was allowed and why, and where
    /// the file goes once recorded (`decisions/SEQ-GATE.SUFFIX`, a directory only the
    /// runtime writes), so that it counts once and cannot be reused in another run.
    func consumption(_ d: DroppedDecision, seq: Int) -> JSONValue {
        let name = (d.file as NSString).lastPathComponent
        return [
            "authorization": .string(d.authorization ?? ""),
            "consumed": .string("decisions/" + JournalEntry.fileName(seq: seq, kind: "", name: nil).dropLast(6) + "-" + name),
            "inode": .int(Int64(bitPattern: d.inode)),
        ]
    }

    /// Moves a recorded decision's file out of approvals/ (see `consumption`). Also called
    /// on replay: a process that died between the record and the move finishes it then.
    /// Not fsync'd: the decision record is durable first, and a move a power loss undid is
    /// made again by the next replay (the record names the file by inode), so the next
    /// step does not wait for two directory fsyncs.
    func consumeDecision(_ e: JournalEntry) throws {
        guard let dest = e.data?["consumed"]?.stringValue, let file = e.file, let inode = e.data?["inode"]?.intValue else { return }
        let from = paths.directory.appending(file)
        let to = paths.directory.appending(dest)
        var st = stat()
        guard lstat(from.string, &st) == 0, Int64(bitPattern: UInt64(st.st_ino)) == inode else { return }
        guard !DurableFile.exists(to) else { return }
        try spool.ensureRuntimeDirectory(paths.decisionsDirectory)
        try DurableFile.rename(from, to: to, mode: .noReplace)
    }

    /// Moves a decision recorded by older versions (no `consumed` in its record) out of
    /// approvals/ into decisions/, so that the gate can be asked again.
    func setAsideDecision(gate: String, seq: Int) throws {
        for suffix in ["approved", "rejected"] {
            let p = paths.approvalsDirectory.appending("\(gate).\(suffix)")
            if DurableFile.exists(p) {
                try spool.ensureRuntimeDirectory(paths.decisionsDirectory)
                let dest = paths.decisionsDirectory.appending(String(JournalEntry.fileName(seq: seq, kind: "", name: nil).dropLast(6)) + "-\(gate).\(suffix)")
                try DurableFile.rename(p, to: dest, mode: .replace)
                try DurableFile.fsyncDirectory(paths.decisionsDirectory)
            }
        }
        try DurableFile.fsyncDirectory(paths.approvalsDirectory)
    }
}

/// `ctx.approval`: `approval` `requested` (the request file written, with the deadline),
/// then `approval` `decided` (the dropped file consumed, or the timeout's outcome). An
/// escalation decides `escalated` and asks the next gate, as the same operation.
struct ApprovalOperation: DurableOperation {
    var gate: String
    let request: ApprovalRequest
    var timeout: Duration?
    var onTimeout: ApprovalTimeout
    var expectedValue: String? = nil
    var valueKinds: [String]? = nil
    var checkValue: (@Sendable (JSONValue) -> String?)? = nil
    var requested: JournalEntry? = nil

    var kind: RecordKind { .approval }
    var name: String? { gate }

    /// The timeout passed and the gate escalates: ask the next one.
    mutating func escalate() -> Bool {
        guard case .escalate(let next, let t, let then) = onTimeout else { return false }
        gate = next
        timeout = t
        onTimeout = then
        requested = nil
        return true
    }

    mutating func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<ApprovalDecision> {
        if e.phase == .requested && requested == nil {
            requested = e
            return .next
        }
        let file = "journal/" + e.fileName
        if e.decision == .escalated, escalate() { return .next }
        guard let decision = e.decision, decision == .approved || decision == .rejected else {
            throw ctx.nondeterminism(ErrorInfo(type: "nondeterminism", message: "nondeterminism: \(file) has decision '\(e.decision?.rawValue ?? "none")' that this code does not expect", file: file, retryable: false))
        }
        return .done(ApprovalDecision(gate: gate, approved: decision == .approved, value: try e.value.map { try ctx.blobs.resolve($0) }, comment: e.comment, reason: e.error?.message ?? (decision == .rejected ? (e.comment ?? "rejected") : nil), decidedBy: e.decidedBy, decidedAt: e.at, timedOut: e.data?["timed_out"]?.boolValue ?? false))
    }

    mutating func execute(in ctx: WorkflowContext) async throws -> OperationStep<ApprovalDecision> {
        guard let requested else {
            let deadline = timeout.map { ctx.clock.now().addingTimeInterval($0.seconds) }
            try ctx.writeRequest(gate: gate, request: request, deadline: deadline, expectedValue: expectedValue, valueKinds: valueKinds)
            let request = self.request
            self.requested = try ctx.record(.approval, gate) {
                $0.phase = .requested
                $0.until = deadline
                $0.data = try JSONValue(encoding: request)
            }
            return .next
        }
        var refused: String? = nil
        if let d = try ctx.readDecision(gate: gate), d.approved, let checkValue, let v = d.value, !v.isNull, let problem = checkValue(v) {
            // A bad drop, not the run's failure: set aside with an error file; the gate stays open.
            let reason = "has a value that \(problem)"
            try Drops.refuse(ctx.paths.directory.appending(d.file), reason: reason, identity: d.identity, durable: ctx.spool.durable, now: ctx.clock.now(), setAsideIn: ctx.paths.refusedDirectory)
            ctx.logger.warning("refused a decision file", metadata: ["run": "\(ctx.runID)", "file": "\(d.file)", "reason": "\(Names.printable(reason))"])
            refused = "\(d.file) \(reason)"
        } else if let d = try ctx.readDecision(gate: gate) {
            let e = try ctx.record(.approval, gate) {
                $0.phase = .decided
                $0.decision = d.approved ? .approved : .rejected
                $0.value = try d.value.map { try ctx.blobs.externalize($0) }
                $0.comment = d.comment
                $0.error = d.reason.map { ErrorInfo(type: "rejected", message: $0) }
                $0.decidedBy = d.decidedBy
                $0.file = d.file
                $0.startedAt = d.decidedAt
                $0.data = ctx.consumption(d, seq: $0.seq)
            }
            try ctx.consumeDecision(e)
            return .done(ApprovalDecision(gate: gate, approved: d.approved, value: d.value, comment: d.comment, reason: d.reason, decidedBy: d.decidedBy, decidedAt: e.at, timedOut: false))
        }
        if let deadline = requested.until, ctx.clock.now() >= deadline {
            switch onTimeout {
            case .reject, .approve:
                let approved: Bool = { if case .approve = onTimeout { return true } else { return false } }()
                let e = try ctx.record(.approval, gate) {
                    $0.phase = .decided
                    $0.decision = approved ? .approved : .rejected
                    $0.comment = "timed out"
                    $0.data = ["timed_out": true]
                }
                return .done(ApprovalDecision(gate: gate, approved: approved, value: nil, comment: "timed out", reason: approved ? nil : "timed out", decidedBy: nil, decidedAt: e.at, timedOut: true))
            case .escalate(let next, _, _):
                try ctx.record(.approval, gate) {
                    $0.phase = .decided
                    $0.decision = .escalated
                    $0.data = ["timed_out": true, "escalated_to": .string(next)]
                }
                _ = escalate()
                return .next
            }
        }
        if !DurableFile.exists(ctx.paths.approvalsDirectory.appending("\(gate).request.json")) {
            try ctx.writeRequest(gate: gate, request: request, deadline: requested.until, expectedValue: expectedValue, valueKinds: valueKinds)
        }
        return .wait(.approval(gate: gate, until: requested.until, refused: refused))
    }
}
