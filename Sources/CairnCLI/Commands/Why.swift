import ArgumentParser
import CairnSpool
import Foundation

struct WhyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "why",
        abstract: "What the run is waiting for, and the exact command or file drop that unblocks it.",
        discussion: prose("""
            Examples:
              cairn why RUN
              cairn why RUN --json | jq -r .unblock[]
            """)
    )

    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.runs)
    var runID: String

    @OptionGroup var options: SpoolOptions
    @OptionGroup var output: JSONOption

    func run() throws {
        let spool = try options.open()
        _ = try requireRun(spool, runID)
        guard let state = try spool.readState(runID) else { throw CLIError(.failure, "\(spool.run(runID).stateFile.string): missing; run `cairn fsck --repair`") }
        var lines: [String]
        switch state.status {
        case .waiting:
            lines = state.waitingFor.map { Describe.unblock($0, run: runID, spool: spool) } ?? ["waiting (state.json does not say on what; cairn fsck)"]
            if DaemonPresence.served(spool) == false {
                // A drop counts only when a daemon (or cairn advance) looks at the run.
                lines.append("  no daemon serves \(spool.root.string) now (cairn status): what you drop is taken when one starts (cairn daemon --spool \(Describe.shellQuoted(spool.root.string))) or with cairn advance \(runID) --spool \(Describe.shellQuoted(spool.root.string))")
            }
        case .queued, .running:
            let probe = RunLock.isHeld(spool.runDirectory(runID))
            let held = probe == true
            if probe == nil {
                lines = ["\(state.status.rawValue): only the spool's service user can tell whether a daemon is advancing it (run `cairn why` as that user)"]
            } else if let e = state.error, !held {
                // A daemon looked at it and could not start it (no such workflow, …).
                lines = ["\(state.status.rawValue): a daemon could not start it: \(Output.printable(e.message))"]
            } else {
                lines = [held ? "\(state.status.rawValue): a process is advancing it now" : "\(state.status.rawValue): no process holds it; start one with `cairn daemon --spool \(spool.root.string)` (or `cairn advance \(runID) --spool \(spool.root.string)`)"]
            }
        case .failed:
            let e = state.error
            lines = ["failed: \(Output.printable(e?.message ?? "unknown error"))" + (e?.file.map { " [\(Output.printable($0))]" } ?? "")]
            if e?.type == "nondeterminism" {
                lines.append("  the workflow's code no longer matches the journal; fix the code (or guard the change with ctx.patched), then: cairn retry \(runID) --spool \(Describe.shellQuoted(spool.root.string))")
            } else {
                if DurableFile.exists(spool.run(runID).retryFile) {
                    lines.append("  a retry is pending (\(spool.run(runID).retryFile.string)): a daemon serving \(spool.root.string) takes it (cairn daemon --spool \(Describe.shellQuoted(spool.root.string)))")
                } else {
                    lines.append("  retry from the failed step: cairn retry \(runID) --spool \(Describe.shellQuoted(spool.root.string))   (or: touch \(spool.run(runID).retryFile.string))")
                }
            }
        case .completed:
            let short = ShowCommand.shortResult(spool, runID)
            lines = ["completed at \(Timestamp.format(state.updatedAt)); result: \(short)"] + (short.hasSuffix("…") ? ["  (whole: \(spool.run(runID).resultFile.string))"] : [])
        case .cancelled:
            lines = ["cancelled at \(Timestamp.format(state.updatedAt))"]
        }
        if !state.status.isTerminal {
            if state.status == .waiting, let e = state.error, e.type == "unknown_workflow" {
                lines.append("  but: \(Output.printable(e.message))")
                lines.append("  cancel it: cairn cancel \(runID) --spool \(Describe.shellQuoted(spool.root.string))")
            } else if let problem = Self.workflowProblem(spool, state.workflow) {
                lines.append("  but: \(problem)")
            }
        }
        if output.json {
            var o: [String: JSONValue] = ["run": .string(runID), "status": .string(state.status.rawValue), "unblock": .array(lines.map { .string($0.trimmingCharacters(in: .whitespaces)) })]
            if let w = state.waitingFor { o["waiting_for"] = w.json }
            if let e = state.error { o["error"] = try JSONValue(encoding: e) }
            Output.json(.object(o))
        } else {
            Output.line("\(runID): " + lines[0])
            for l in lines.dropFirst() { Output.line(l) }
        }
    }

    /// Why the run's script workflow cannot run, if it is there but cannot (not executable,
    /// not a regular file, not trusted). A workflow this binary lacks may be in the binary
    /// that runs the daemon: that the daemon reports itself (state.json's error).
    static func workflowProblem(_ spool: Spool, _ workflow: String) -> String? {
        if CLIEnvironment.workflows[workflow] != nil { return nil }
        let path = spool.workflowsDirectory.appending(workflow).string
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        if (st.st_mode & S_IFMT) != S_IFREG { return "\(path) is not a regular file" }
        if access(path, X_OK) != 0 { return "\(path) is not executable (chmod +x it; a running daemon notices)" }
        if let problem = Spool.trustedFileProblem(path, serviceUser: spool.serviceUID ?? geteuid()) { return "\(path) \(problem): the daemon will not execute it" }
        return nil
    }
}
