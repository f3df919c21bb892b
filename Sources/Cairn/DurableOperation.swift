import CairnSpool
import Foundation

/// What a durable operation says after folding in one of its recorded entries, or after
/// acting live.
public enum OperationStep<Output> {
    /// The operation's result: the workflow code gets it.
    case done(Output)
    /// Not finished: the next recorded entry (replay) or another live turn follows. An
    /// operation that just recorded an entry of its own (an intent, a retry, a `requested`
    /// phase) returns this and is asked again.
    case next
    /// The run waits on this; the engine suspends it (whatever the workflow code does with
    /// the error that carries it).
    case wait(WaitingFor)
}

/// One durable operation (a step, a timer, an approval, an LLM call…), as a small type.
///
/// `WorkflowContext.perform` is the one place that runs the replay protocol for all of
/// them: it refuses nesting in a step body, stops on an earlier wait, cancel or
/// nondeterminism, consumes a recorded `cancel` at this position, matches the next record
/// to the operation (a mismatch is a `NondeterminismError` naming the file), makes the live
/// checks (`cancel` and `pause` files) before every live turn, and turns `.wait` into the
/// run's wait. An operation only says what its records mean (`replay`) and what it does
/// when there are none left (`execute`), recording through `WorkflowContext.record`.
public protocol DurableOperation {
    associatedtype Output
    /// The record kind, as in `journal/NNNNNN-KIND-NAME.json`, and the operation's name:
    /// what a nondeterminism error says the code asked for.
    var kind: RecordKind { get }
    var name: String? { get }
    /// Whether a recorded entry is this operation's (by default: same kind and name).
    func owns(_ record: JournalEntry) -> Bool
    /// An answer when the next record is another operation's, instead of a
    /// nondeterminism error (`ctx.patched` answers false for code older than the patch).
    func answer(before record: JournalEntry) -> Output?
    /// Whether live turns first check the `cancel` and `pause` files (compensations, which
    /// run after a failure or a cancel, do not).
    var checksControlFiles: Bool { get }
    /// Folds in one of its recorded entries (already consumed).
    mutating func replay(_ record: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<Output>
    /// Acts, when no recorded entry is left: the live checks were made.
    mutating func execute(in ctx: WorkflowContext) async throws -> OperationStep<Output>
}

/// A durable operation that never suspends the caller's task (`now`, `uuid`, `random`,
/// `patched`, a recorded value): the same protocol, run synchronously.
public protocol InstantOperation {
    associatedtype Output
    var kind: RecordKind { get }
    var name: String? { get }
    func answer(before record: JournalEntry) -> Output?
    func replay(_ record: JournalEntry, in ctx: WorkflowContext) throws -> Output
    func execute(in ctx: WorkflowContext) throws -> Output
}

extension DurableOperation {
    public func owns(_ record: JournalEntry) -> Bool { record.kind == kind && record.name == name }
    public func answer(before record: JournalEntry) -> Output? { nil }
    public var checksControlFiles: Bool { true }
}

extension InstantOperation {
    public func answer(before record: JournalEntry) -> Output? { nil }
}

/// Where the replay protocol stands for the operation about to take a turn.
enum Turn<Output> {
    /// This recorded entry is the operation's (consumed).
    case replayed(JournalEntry)
    /// No record left: act (the live checks were made).
    case live
    /// The operation answered without a record of its own.
    case answered(Output)
}

extension WorkflowContext {
    /// Runs a durable operation: replays its records, acts when none are left, records what
    /// it did. Every operation of the engine and of the agent layer goes through here.
    public func perform<Op: DurableOperation>(_ op: Op) async throws -> Op.Output {
        var op = op
        try refuseNesting(op.kind, op.name)
        var traced = OperationTrace(op.kind, op.name, in: self)
        defer { traced.end(in: self) }
        do {
            while true {
                let step: OperationStep<Op.Output>
                switch try turn(kind: op.kind, name: op.name, checks: op.checksControlFiles, owns: op.owns, answer: op.answer) {
                case .answered(let v): return v
                case .replayed(let e):
                    traced.replayed(e)
                    step = try await op.replay(e, in: self)
                case .live: step = try await op.execute(in: self)
                }
                switch step {
                case .done(let v): return v
                case .next: continue
                case .wait(let w):
                    traced.waiting = true
                    throw suspend(w)
                }
            }
        } catch {
            traced.failed(error)
            throw error
        }
    }

    /// The same for an operation that never waits.
    public func perform<Op: InstantOperation>(_ op: Op) throws -> Op.Output {
        try refuseNesting(op.kind, op.name)
        var traced = OperationTrace(op.kind, op.name, in: self)
        defer { traced.end(in: self) }
        do {
            switch try turn(kind: op.kind, name: op.name, checks: true, owns: { $0.kind == op.kind && $0.name == op.name }, answer: op.answer) {
            case .answered(let v): return v
            case .replayed(let e):
                traced.replayed(e)
                return try op.replay(e, in: self)
            case .live: return try op.execute(in: self)
            }
        } catch {
            traced.failed(error)
            throw error
        }
    }

    /// The protocol every turn of every operation goes through.
    func turn<Output>(kind: RecordKind, name: String?, checks: Bool, owns: (JournalEntry) -> Bool, answer: (JournalEntry) -> Output?) throws -> Turn<Output> {
        if checks { try throwIfSuspended() }
        guard let e = peek() else {
            if checks { try beforeLive() }
            return .live
        }
        if checks, e.kind == .cancel, e.name == "requested" {
            // The run was cancelled at this position: it is cancelled here again.
            consume()
            throw cancelled()
        }
        guard owns(e) else {
            if let v = answer(e) { return .answered(v) }
            throw mismatch(e, kind: kind, name: name)
        }
        consume()
        return .replayed(e)
    }
}

/// A value recorded once (`now`, `uuid`, `random`, a script's `cairn now`, the agent
/// layer's own records): computed and journaled as KIND[-NAME] on first execution, read
/// back on replay (a recorded value that does not decode as `Value` is a nondeterminism).
public struct RecordedValue<Value: Decodable & Sendable>: InstantOperation {
    public var kind: RecordKind
    public var name: String?
    var compute: () throws -> Value
    var encode: (Value) throws -> JSONValue

    /// `encode` gives the JSON recorded for a computed value.
    public init(kind: RecordKind, name: String?, compute: @escaping () throws -> Value, encode: @escaping (Value) throws -> JSONValue) {
        self.kind = kind
        self.name = name
        self.compute = compute
        self.encode = encode
    }

    public func replay(_ record: JournalEntry, in ctx: WorkflowContext) throws -> Value {
        try ctx.load(record.value, as: Value.self, file: "journal/" + record.fileName)
    }

    public func execute(in ctx: WorkflowContext) throws -> Value {
        let v = try compute()
        let stored = try encode(v)
        try ctx.record(kind, name) { $0.value = try ctx.blobs.externalize(stored) }
        return v
    }
}

extension RecordedValue where Value == JSONValue {
    /// Any JSON value, recorded as it is.
    public init(_ kind: RecordKind, _ name: String?, _ compute: @escaping () throws -> JSONValue) {
        self.init(kind: kind, name: name, compute: compute, encode: { $0 })
    }
}
