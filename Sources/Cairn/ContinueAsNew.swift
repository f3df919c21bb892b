import CairnSpool
import Foundation

extension WorkflowContext {
    /// Ends this run and starts a new run of the same workflow with `input` — for a loop that
    /// should not keep its whole history (a long-lived agent, a poller). This run completes
    /// with the value `{"continued_as": NEW_RUN}`; the new run's `run.json` says
    /// `"continued_from": THIS_RUN`, and `cairn show` links them both ways.
    ///
    /// Recorded first (`NNNNNN-continue.json`, the new run's id and input), then the run is
    /// created: a crash in between creates it on replay, with the same id and input; it is
    /// created once. Never returns: code after it does not run, and an operation it reaches
    /// anyway (the signal caught) is refused.
    public func continueAsNew<I: Encodable & Sendable>(_ input: I) async throws -> Never {
        let id = try await perform(ContinueAsNewOperation(input: try JSONValue(encoding: input)))
        throw continued(as: id)
    }

    /// For a script's `cairn continue-as-new`: records the continuation and creates the new
    /// run (once), returning its id; the daemon ends the run when the script exits.
    public func continueAsNewRecording(_ input: JSONValue) async throws -> String {
        try await perform(ContinueAsNewOperation(input: input))
    }

    /// Ends the run as continued by run `id` (whose `continue` record is written): what the
    /// engine concludes, whatever the workflow code does with the error returned. For
    /// executors that learn of it from outside (a script's `cairn continue-as-new`).
    public func continued(as id: String) -> any Error {
        state.withLock { if $0.continuedAs == nil { $0.continuedAs = id } }
        return ContinuedAsNewSignal(run: id)
    }
}

/// What `continueAsNew` throws: the run ends there (the engine completes it).
public struct ContinuedAsNewSignal: Error, Sendable, CustomStringConvertible {
    /// The new run.
    public var run: String
    public var description: String { "the run continued as run \(run); nothing after continueAsNew runs" }
}

/// `ctx.continueAsNew`: one `continue` record with the new run's id (`data.run`) and input
/// (`value`), then the new run.
struct ContinueAsNewOperation: DurableOperation {
    let input: JSONValue

    var kind: RecordKind { .continueAsNew }
    var name: String? { nil }

    func replay(_ e: JournalEntry, in ctx: WorkflowContext) async throws -> OperationStep<String> {
        guard let id = e.data?["run"]?.stringValue else {
            throw SpoolError(.malformed, path: ctx.paths.journalDirectory.appending(e.fileName).string, "a continue record without data.run")
        }
        // Recorded, then the process died before the run was made (or a restored copy lost it).
        try create(id, input: try ctx.blobs.resolve(e.value ?? .null), in: ctx)
        return .done(id)
    }

    func execute(in ctx: WorkflowContext) async throws -> OperationStep<String> {
        let id = RunID.generate(now: ctx.clock.now())
        let input = self.input
        try ctx.record(.continueAsNew, nil) {
            $0.value = try ctx.blobs.externalize(input)
            $0.data = ["run": .string(id), "workflow": .string(ctx.workflowName)]
        }
        CrashPoints.reached("continue.after-record")
        try create(id, input: input, in: ctx)
        return .done(id)
    }

    func create(_ id: String, input: JSONValue, in ctx: WorkflowContext) throws {
        guard !ctx.spool.runExists(id) else { return }
        let record = try ctx.spool.readRun(ctx.runID)
        _ = try ctx.spool.createRun(.init(workflow: ctx.workflowName, input: input, id: id, concurrencyKey: record.concurrencyKey, continuedFrom: ctx.runID), now: ctx.clock.now())
    }
}
