import ArgumentParser
import CairnSpool
import Foundation
import SystemPackage

/// Drops a control file (`cancel`, `pause`, `retry`) in a run directory.
func dropControl(_ options: SpoolOptions, run runID: String, file: String, allowed: (RunStatus?) -> String?) throws {
    let spool = try options.open()
    _ = try requireRun(spool, runID)
    if let refusal = allowed(try spool.readState(runID)?.status) { throw CLIError(.failure, "\(runID): \(refusal)") }
    let path = spool.run(runID).directory.appending(file)
    do {
        try DurableFile.drop(Data(), to: path)
    } catch let e as SpoolError where e.code == .exists {}
}

struct CancelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel",
        abstract: "Cancel a run: its compensations run, then it ends as cancelled (drops runs/RUN/cancel).",
        discussion: "Example:\n  cairn cancel RUN"
    )
    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.runs) var runID: String
    @OptionGroup var options: SpoolOptions

    func run() throws {
        try dropControl(options, run: runID, file: "cancel") { $0?.isTerminal == true ? "already \($0!.rawValue)" : nil }
        Output.line("cancel requested for \(runID)")
    }
}

struct PauseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pause",
        abstract: "Hold a run before its next operation while runs/RUN/pause exists.",
        discussion: "Example:\n  cairn pause RUN && cairn resume RUN"
    )
    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.runs) var runID: String
    @OptionGroup var options: SpoolOptions

    func run() throws {
        try dropControl(options, run: runID, file: "pause") { $0?.isTerminal == true ? "already \($0!.rawValue)" : nil }
        Output.line("paused \(runID)")
    }
}

struct ResumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume",
        abstract: "Resume a paused run (removes runs/RUN/pause).",
        discussion: "Example:\n  cairn resume RUN"
    )
    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.runs) var runID: String
    @OptionGroup var options: SpoolOptions

    func run() throws {
        let spool = try options.open()
        _ = try requireRun(spool, runID)
        let p = spool.run(runID).pauseFile
        guard DurableFile.exists(p) else { throw CLIError(.failure, "\(runID) is not paused (no \(p.string))") }
        guard unlink(p.string) == 0 else {
            let e = errno
            throw CLIError(.failure, "\(p.string): cannot remove: \(String(cString: strerror(e)))" + (e == EPERM || e == EACCES ? " (only whoever paused the run, or the spool's service user, can resume it)" : ""))
        }
        try DurableFile.fsyncDirectory(p.removingLastComponent())
        Output.line("resumed \(runID)")
    }
}

struct RetryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retry",
        abstract: "Retry a failed run from its failed step (drops runs/RUN/retry).",
        discussion: "Example:\n  cairn retry RUN"
    )
    @Argument(help: ArgumentHelp("The run id.", valueName: "run"), completion: Completions.runs) var runID: String
    @OptionGroup var options: SpoolOptions

    func run() throws {
        try dropControl(options, run: runID, file: "retry") { $0 == .failed ? nil : "only a failed run can be retried (it is \($0?.rawValue ?? "unknown"))" }
        Output.line("retry requested for \(runID)")
    }
}
