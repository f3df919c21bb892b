// `import Cairn` is enough to write a workflow: JSONValue, Principal, RunStatus and the
// spool's other types come with it (docs/workflows.md promises that).
@_exported import CairnSpool
import Foundation

/// A workflow type: typed, Codable input and output, and a `run` whose durable
/// operations go through the context and are journaled.
///
/// `run` must be deterministic apart from what it asks the context for: the same input
/// and the same recorded results must lead to the same sequence of operations. Read the
/// time, random numbers and UUIDs through `ctx.now()`, `ctx.random()`, `ctx.uuid()`.
public protocol Workflow: Sendable {
    /// The run's input, decoded from the submission's JSON.
    associatedtype Input: Codable & Sendable
    /// The run's output, encoded to `result.json` and the `complete` record.
    associatedtype Output: Codable & Sendable

    /// The workflow type's name: what submissions name (`[A-Za-z0-9][A-Za-z0-9._-]*`).
    static var name: String { get }
    /// Recorded in each run's `start` record. Change it when the code changes in a way
    /// that alters the sequence of operations; guard new operations with `ctx.patched`.
    static var version: String { get }

    /// Does the run's work through `ctx`; runs again from the top on every execution of the run.
    func run(_ ctx: WorkflowContext, input: Input) async throws -> Output
}

extension Workflow {
    /// "1" unless the workflow declares its own.
    public static var version: String { "1" }
}

/// A workflow with its types erased to JSON, as the engine runs it.
public struct AnyWorkflow: Sendable {
    /// The workflow's name, as submissions name it.
    public let name: String
    /// The workflow's version, recorded in each run's `start` record.
    public let version: String
    let body: @Sendable (WorkflowContext, JSONValue) async throws -> JSONValue
    /// Whether waking a run that waits on something that has not happened replays it anyway
    /// (true: cheap, and a deploy that changed the code under waiting runs shows up at once
    /// as a nondeterminism stop). Script workflows set it false: replaying one means running
    /// the script from the top, outside helpers included.
    public var replaysOnEveryWake = true
    /// What this workflow's own layer counts as a failed operation though the record carries
    /// no error — a script's `cairn step` recorded with a non-zero exit code. A run-level
    /// retry resumes from the last failed operation (`Engine.retryPoint`).
    public var failedWithoutError: @Sendable (JournalEntry) -> Bool = { _ in false }
    /// Whether other processes append to the run's journal while this workflow's code runs
    /// (a script's helpers). Then the journal's tail is moved into segments only between
    /// executions, never in the middle of one.
    public var recordsFromOtherProcesses = false

    /// Erases a typed workflow: its input is decoded from JSON (a failure is a
    /// `WorkflowInputError`) and its output encoded to JSON.
    public init<W: Workflow>(_ workflow: W) {
        name = W.name
        version = W.version
        body = { ctx, input in
            let typed: W.Input
            do {
                typed = try input.decode(as: W.Input.self)
            } catch {
                throw WorkflowInputError(workflow: W.name, message: JSONValue.describe(error))
            }
            let out = try await workflow.run(ctx, input: typed)
            return try JSONValue(encoding: out)
        }
    }

    /// A workflow written directly against JSON values.
    public init(name: String, version: String = "1", _ body: @escaping @Sendable (WorkflowContext, JSONValue) async throws -> JSONValue) {
        self.name = name
        self.version = version
        self.body = body
    }
}

/// The input did not decode as the workflow's Input type.
public struct WorkflowInputError: Error, CustomStringConvertible {
    /// The workflow's name.
    public var workflow: String
    /// What the decoder said.
    public var message: String
    /// The workflow and the decoder's complaint, in a sentence.
    public var description: String { "input does not match \(workflow)'s Input: \(message)" }
}

/// Why a workflow could not be registered.
public enum WorkflowRegistryError: Error, Equatable, CustomStringConvertible {
    /// The name is not `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
    case invalidName(String)
    /// A workflow of this name is already registered.
    case duplicate(String)

    /// What is wrong with the name, in a sentence.
    public var description: String {
        switch self {
        case .invalidName(let n): return "invalid workflow name '\(n)': letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128"
        case .duplicate(let n): return "a workflow named '\(n)' is already registered"
        }
    }
}

/// The workflow types a process can run, by name.
public struct WorkflowRegistry: Sendable {
    private var entries: [String: AnyWorkflow] = [:]
    /// Consulted for names not registered (script workflows in SPOOL/workflows/).
    public var fallback: (@Sendable (String) -> AnyWorkflow?)?

    /// An empty registry.
    public init() {}

    /// A registry of `workflows` (a later one of the same name replaces an earlier one).
    public init(_ workflows: [AnyWorkflow]) {
        for w in workflows { entries[w.name] = w }
    }

    /// Adds a workflow. Throws for a name that is not `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`
    /// and for a name already registered (two workflows cannot share one).
    public mutating func register<W: Workflow>(_ workflow: W) throws(WorkflowRegistryError) {
        try register(AnyWorkflow(workflow))
    }

    /// Adds a type-erased workflow, with the same checks as `register(_:)` for a typed one.
    public mutating func register(_ workflow: AnyWorkflow) throws(WorkflowRegistryError) {
        guard Names.isValidName(workflow.name) else { throw .invalidName(workflow.name) }
        guard entries[workflow.name] == nil else { throw .duplicate(workflow.name) }
        entries[workflow.name] = workflow
    }

    /// The workflow of this name: registered, or else from `fallback`.
    public subscript(name: String) -> AnyWorkflow? { entries[name] ?? fallback?(name) }

    /// Whether a Swift workflow of this name is registered (scripts not counted).
    public func isRegistered(_ name: String) -> Bool { entries[name] != nil }
    /// The registered names, sorted (scripts not counted).
    public var names: [String] { entries.keys.sorted() }
}
