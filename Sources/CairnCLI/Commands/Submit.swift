import ArgumentParser
import CairnDaemon
import CairnSpool
import Foundation

struct SubmitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Create a run; prints its id. Needs no daemon.",
        discussion: prose("""
            The run directory appears whole (built in tmp/, then renamed). The same --id
            or the same --idempotency-key submitted twice yields one run: the second prints
            the first's id.

            Examples:
              cairn submit triage-ticket --input ticket.json
              echo '{"n": 3}' | cairn submit count --input -
              cairn submit order --input o.json --idempotency-key order-4711
            """)
    )

    @Argument(help: "The workflow type (a Swift workflow, or an executable in SPOOL/workflows/).", completion: Completions.workflows)
    var workflow: String

    @Option(name: .long, help: ArgumentHelp("The input as a JSON file, or - for stdin (default: null).", valueName: "file|-"))
    var input: String?

    @Option(name: .long, help: "The run id (default: generated, sorting by time).")
    var id: String?

    @Option(name: .customLong("idempotency-key"), help: "Submissions with the same key yield one run.")
    var idempotencyKey: String?

    @Option(name: .customLong("concurrency-key"), help: "Runs sharing a key are advanced at most N at a time (cairn.json concurrency.keys; default 1).")
    var concurrencyKey: String?

    @OptionGroup var options: SpoolOptions

    func validate() throws {
        guard Names.isValidName(workflow) else { throw ValidationError("invalid workflow name '\(workflow)' (letters, digits, '.', '_', '-')") }
        if let id, !Names.isValidRunID(id) { throw ValidationError("invalid run id '\(id)' (must match [A-Za-z0-9][A-Za-z0-9._-]{0,127})") }
    }

    func run() throws {
        let spool = try options.open()
        let value = try input.map { try Output.readJSONArgument($0, what: "input") } ?? .null
        let version = CLIEnvironment.workflows[workflow]?.version
        if CLIEnvironment.workflows(for: spool)[workflow] == nil {
            Output.warn(spool.isServiceUser
                ? "no workflow '\(workflow)' in this binary or in \(spool.workflowsDirectory.string)/; the run waits until a daemon that has it picks it up"
                : "no workflow '\(workflow)' in this binary or in \(spool.workflowsDirectory.string)/; unless the daemon's binary has it, the daemon rejects the submission (see rejected/)")
        }
        guard spool.isServiceUser else {
            // Only the service user writes runs/ (SPEC §3): anyone else submits through the
            // inbox, as a file of their own, and the daemon creates the run.
            let runID = id ?? RunID.generate()
            var o: [String: JSONValue] = ["workflow": .string(workflow), "input": value, "id": .string(runID)]
            if let idempotencyKey { o["idempotency_key"] = .string(idempotencyKey) }
            if let concurrencyKey { o["concurrency_key"] = .string(concurrencyKey) }
            // What the daemon would refuse is refused here, before an id is printed: an id
            // printed for a submission the daemon then rejects names a run that never exists.
            let data = JSONValue.object(o).canonicalData()
            guard data.count <= Inbox.sizeLimit else {
                throw CLIError(.failure, "the submission is \(data.count) bytes, over the inbox limit of \(Inbox.sizeLimit) (1 MiB) for anyone but the service user; put larger inputs in a file the workflow reads")
            }
            if let id, let existing = try? spool.readRun(id), existing.submittedBy.uid != geteuid() {
                throw CLIError(.failure, "the id \(id) is already used by a run submitted by \(existing.submittedBy.user ?? String(existing.submittedBy.uid)), not by you; choose another")
            }
            if let idempotencyKey, let bound = spool.runForKey(idempotencyKey), let existing = try? spool.readRun(bound), existing.submittedBy.uid != geteuid() {
                throw CLIError(.failure, "the idempotency key is already used by run \(bound), submitted by \(existing.submittedBy.user ?? String(existing.submittedBy.uid)), not by you; choose another")
            }
            do {
                try DurableFile.drop(data, to: spool.inboxDirectory.appending("\(runID).json"))
            } catch let e as SpoolError where e.code == .exists {
                throw CLIError(.failure, "\(spool.inboxDirectory.appending("\(runID).json").string) already exists: that submission is waiting for a daemon")
            }
            if idempotencyKey != nil { Output.warn("submitted through inbox/ (you are not the spool's service user); with an idempotency key the run id may be an earlier run's: check with cairn ls") }
            Output.line(runID)
            return
        }
        let (runID, created) = try spool.createRun(.init(workflow: workflow, input: value, id: id, idempotencyKey: idempotencyKey, workflowVersion: version, concurrencyKey: concurrencyKey))
        if !created { Output.warn("run \(runID) already exists (same id or idempotency key); not submitted again") }
        Output.line(runID)
    }
}
