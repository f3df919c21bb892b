import ArgumentParser
import CairnSpool
import Foundation
import SystemPackage

/// Writes a decision file atomically, Maildir-style (a dot-file in approvals/, then a
/// rename): it appears whole, owned by whoever runs the command, who needs no access to the
/// runtime's own directories.
func dropDecision(spool: Spool, run runID: String, gate: String, suffix: String, content: JSONValue?, early: Bool) throws {
    _ = try requireRun(spool, runID)
    guard Names.isValidName(gate) else { throw CLIError(.usage, "invalid gate name '\(gate)'") }
    if let state = try? spool.readState(runID) {
        if state.status == .completed || state.status == .cancelled {
            throw CLIError(.failure, "run \(runID) is \(state.status.rawValue): nothing will read a decision on gate '\(gate)'")
        }
        if state.status == .failed && !early {
            throw CLIError(.failure, "run \(runID) is failed: nothing reads a decision until it is retried (cairn retry \(runID)); pass --early to leave one for when it gets there")
        }
    }
    let dir = spool.run(runID).approvalsDirectory
    let request = dir.appending("\(gate).request.json")
    if !early {
        guard DurableFile.exists(request) else {
            throw CLIError(.notFound, "run \(runID) has not requested gate '\(gate)' (no \(request.string)); pass --early to decide before it does")
        }
        // A request file the runtime did not write is someone's forgery: do not decide on it.
        if let owner = spool.serviceUID, let problem = Spool.runtimeFileProblem(request.string, owner: owner) {
            throw CLIError(.notFound, "\(request.string) \(problem): it is not the run's request, so run \(runID) has not asked yet; pass --early to decide anyway")
        }
    }
    // A value of a kind the run refuses is refused here, not reported as "approved".
    if suffix == "approved", let value = content?["value"], !value.isNull,
       let req = try? DurableFile.readJSON(request), let kinds = req["value_kinds"]?.arrayValue?.compactMap(\.stringValue), !kinds.isEmpty {
        let kind = value.kindName
        guard kinds.contains(kind) else {
            let wants = req["value_expected"]?.stringValue.map { " (\($0))" } ?? ""
            throw CLIError(.failure, "gate '\(gate)' takes a value that is \(kinds.map { "a \($0)" }.joined(separator: " or "))\(wants), not \(kind == "array" || kind == "object" ? "an" : "a") \(kind): the run would refuse it; nothing was written")
        }
    }
    let target = dir.appending("\(gate).\(suffix)")
    let other = dir.appending("\(gate).\(suffix == "approved" ? "rejected" : "approved")")
    if DurableFile.exists(other) { throw CLIError(.failure, "\(other.string) already exists: the gate has another decision") }
    let data = content.map { $0.canonicalData() } ?? Data()
    // What the daemon would refuse is refused here, instead of printing "approved".
    let config = try spool.config()
    guard data.count <= config.dropSizeLimit else {
        throw CLIError(.failure, "the decision is \(data.count) bytes, over the limit of \(config.dropSizeLimit) (drop_size_limit in cairn.json): the daemon would refuse it")
    }
    if let policy = config.approvalPolicy(gate: gate) {
        if let problem = policy.invalid { throw CLIError(.failure, "gate '\(gate)' refuses every decision: \(problem)") }
        let me = Principal(uid: geteuid(), user: Principal.userName(uid: geteuid()))
        guard Drops.allowed(me, policy) != nil else {
            throw CLIError(.failure, "\(me.user ?? String(me.uid)) may not decide gate '\(gate)' (approvers in cairn.json: users \(policy.users), groups \(policy.groups)): the daemon would refuse the decision")
        }
    }
    do {
        try DurableFile.drop(data, to: target)
    } catch let e as SpoolError where e.code == .exists {
        throw CLIError(.failure, "\(target.string) already exists: the gate has a decision waiting to be recorded")
    }
    if DaemonPresence.served(spool) == false {
        Output.warn("note: no daemon serves \(spool.root.string) now (cairn status): the decision is taken when one starts, or with cairn advance \(runID) --spool \(Describe.shellQuoted(spool.root.string))")
    }
}

struct ApproveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "approve",
        abstract: "Approve a gate (writes approvals/GATE.approved atomically).",
        discussion: prose("""
            The same as `touch runs/RUN/approvals/GATE.approved`, with an optional comment and
            JSON value (an edited draft, new tool arguments) that the run receives.

            Examples:
              cairn approve RUN send-reply
              cairn approve RUN send-reply --comment "shorter" --value edited.json
            """)
    )

    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.gateRuns) var runID: String
    @Argument(help: "The gate name.", completion: Completions.gates) var gate: String
    @Option(name: .long, help: "A comment, recorded with the decision.") var comment: String?
    @Option(name: .long, help: ArgumentHelp("A JSON file whose value the run receives (- for stdin).", valueName: "file|-")) var value: String?
    @Flag(name: .long, help: "Decide before the run has asked (it counts when the run gets there).") var early = false
    @OptionGroup var options: SpoolOptions

    func run() throws {
        let spool = try options.open()
        var o: [String: JSONValue] = [:]
        if let comment { o["comment"] = .string(comment) }
        if let value { o["value"] = try Output.readJSONArgument(value, what: "value") }
        try dropDecision(spool: spool, run: runID, gate: gate, suffix: "approved", content: o.isEmpty ? nil : .object(o), early: early)
        Output.line("approved \(runID) \(gate)")
    }
}

struct RejectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reject",
        abstract: "Reject a gate (writes approvals/GATE.rejected atomically).",
        discussion: prose("""
            Examples:
              cairn reject RUN send-reply --reason "wrong customer"
            """)
    )

    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.gateRuns) var runID: String
    @Argument(help: "The gate name.", completion: Completions.gates) var gate: String
    @Option(name: .long, help: "Why; the run receives it.") var reason: String?
    @Flag(name: .long, help: "Decide before the run has asked.") var early = false
    @OptionGroup var options: SpoolOptions

    func run() throws {
        let spool = try options.open()
        try dropDecision(spool: spool, run: runID, gate: gate, suffix: "rejected", content: reason.map { ["reason": .string($0)] }, early: early)
        Output.line("rejected \(runID) \(gate)")
    }
}
