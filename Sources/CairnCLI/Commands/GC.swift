import ArgumentParser
import Cairn
import CairnSpool
import Foundation

struct GCCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Remove finished runs (completed, failed, cancelled) older than a duration.",
        discussion: prose("""
            A run is removed by renaming it into tmp/ first (so it disappears from runs/ at once
            and whole), then deleting it. Runs some process holds are skipped.

            Examples:
              cairn gc --older-than 30d
              cairn gc --older-than 7d --dry-run
              cairn gc --older-than 7d --json | jq -r '.runs[]'
            """)
    )

    @Option(name: .customLong("older-than"), help: "e.g. 90s, 15m, 2h, 7d (by the run's last update).") var olderThan: DurationArgument
    @Flag(name: .customLong("dry-run"), help: "List what would be removed.") var dryRun = false
    @OptionGroup var options: SpoolOptions
    @OptionGroup var output: JSONOption

    func run() throws {
        let spool = try options.open()
        let cutoff = Date().addingTimeInterval(-olderThan.duration.seconds)
        var removed: [String] = []
        var skipped: [String] = []
        var leftBehind: [JSONValue] = []
        defer {
            if output.json {
                Output.json(["dry_run": .bool(dryRun), "runs": .array(removed.map { .string($0) }), "skipped": .array(skipped.map { .string($0) }), "left_behind": .array(leftBehind)])
            } else {
                if !skipped.isEmpty { Output.warn("skipped \(Output.count(skipped.count, "run")) a process holds: \(skipped.joined(separator: " "))") }
                Output.warn(dryRun ? "would remove \(Output.count(removed.count, "run"))" : "removed \(Output.count(removed.count, "run"))")
            }
        }
        let candidates = try [RunStatus.completed, .failed, .cancelled].flatMap { st in try spool.indexedRuns(st).map { (st, $0) } }
        let progress = Progress(total: candidates.count, what: "finished runs looked at")
        defer { progress.done() }
        for status in [RunStatus.completed, .failed, .cancelled] {
            for id in try spool.runs(withStatus: status) {
                progress.step()
                guard let state = try spool.readState(id), state.updatedAt < cutoff else { continue }
                if dryRun {
                    // What gc would do now: a run a process holds is skipped, as it would be.
                    guard let lock = try RunLock.tryAcquire(spool.runDirectory(id)) else {
                        skipped.append(id)
                        continue
                    }
                    withExtendedLifetime(lock) {}
                    removed.append(id)
                    if !output.json { Output.line(id) }
                    continue
                }
                guard let lock = try RunLock.tryAcquire(spool.runDirectory(id)) else {
                    skipped.append(id)
                    continue
                }
                let grave = spool.durable.tempPath(hint: "gc-\(id)")
                try DurableFile.rename(spool.runDirectory(id), to: grave, mode: .noReplace)
                withExtendedLifetime(lock) {}
                try DurableFile.fsyncDirectory(spool.runsDirectory)
                _ = unlink(spool.indexDirectory.appending(status.rawValue).appending(id).string)
                removed.append(id)
                if !output.json { Output.line(id) }
                do {
                    try FileManager.default.removeItem(atPath: grave.string)
                } catch {
                    // Files of another user inside it (a group member's directory): only
                    // root can remove those. The run is gone from runs/; say what is left.
                    _ = chmod(grave.string, 0o700)
                    leftBehind.append(["run": .string(id), "path": .string(grave.string), "error": .string(error.localizedDescription)])
                    if !output.json { Output.warn("\(id): left \(grave.string) behind: \(error.localizedDescription) (files of another user; remove it as root)") }
                }
            }
        }
    }
}
