import ArgumentParser
import CairnSpool
import Foundation

struct FsckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsck",
        abstract: "Verify every file in the spool; --repair rebuilds derived state.",
        discussion: prose("""
            Exits 1 and lists the problems when anything is wrong. --repair rebuilds state.json,
            result.json and the indexes from run.json + journal/ + blobs/, removes stale
            temporary files, and moves journal records after the longest valid prefix to
            runs/RUN/repair/ (never deleting them). Runs a daemon holds are skipped.

            Examples:
              cairn fsck
              cairn fsck --repair
            """)
    )

    @Flag(name: .long, help: "Repair what can be rebuilt.") var repair = false
    @OptionGroup var options: SpoolOptions
    @OptionGroup var output: JSONOption

    func run() throws {
        let spool = try options.open()
        let runs = Progress(total: 0, what: "runs checked")
        let report = try Repair.run(spool, repair: repair, progress: { done, total in runs.update(done, of: total) })
        runs.done()
        if output.json {
            Output.json([
                "runs_checked": .int(Int64(report.runsChecked)),
                "files_checked": .int(Int64(report.filesChecked)),
                "clean": .bool(report.clean),
                "busy": .array(report.busy.map { .string($0) }),
                "findings": .array(report.findings.map { f in
                    ["file": .string(f.file), "problem": .string(f.problem), "repaired": f.repaired.map { .string($0) } ?? .null]
                }),
            ])
        } else {
            for f in report.findings { Output.line(f.description) }
            for b in report.busy { Output.line("runs/\(b): skipped, a daemon holds it") }
            Output.line("\(report.runsChecked) runs, \(report.filesChecked) files checked; \(report.findings.count) problem(s)" + (repair ? ", \(report.findings.filter { $0.repaired != nil }.count) repaired" : ""))
        }
        if !report.clean { throw ExitCode(1) }
    }
}
