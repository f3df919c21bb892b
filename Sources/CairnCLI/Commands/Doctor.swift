import ArgumentParser
import CairnSpool
import CairnWatch
import Foundation
import SystemPackage

struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check that a filesystem has what a spool needs, and say how Cairn will run there.",
        discussion: prose("""
            Tries each primitive for real in a scratch directory (removed afterwards): a
            durable write, an atomic replacing rename, first-writer-wins (RENAME_NOREPLACE, or
            the link+unlink fallback), fsync of a directory, flock on a regular file, long
            names, and inotify. Run it on each host of a shared filesystem before `cairn init`
            (on the directory the spool will live in) or on an existing spool. What needs two
            hosts (a lock or a rename seen through another client) cannot be checked from one;
            see docs/operations.md, "Shared filesystems".

            Exit 0 when a spool can live here, 1 when a required primitive is missing.

            Examples:
              cairn doctor                 # the spool (--spool, $CAIRN_SPOOL, ./spool)
              cairn doctor /mnt/gluster/cairn    # a directory before `cairn init`
            """)
    )

    @Argument(help: "The directory to check (default: the spool; a missing one: its nearest existing parent).")
    var directory: String?
    @OptionGroup var options: SpoolOptions
    @OptionGroup var output: JSONOption

    func run() async throws {
        let asked = directory.map { FilePath($0) } ?? Spool.resolveRoot(options.spool)
        var dir = asked
        // In a spool, the scratch goes where the runtime stages its own writes.
        if DurableFile.exists(dir.appending("cairn.json")), DurableFile.exists(dir.appending("tmp")) {
            dir = dir.appending("tmp")
        }
        while !DurableFile.exists(dir), !dir.removingLastComponent().isEmpty, dir != dir.removingLastComponent() {
            dir = dir.removingLastComponent()
        }
        var report = try FilesystemCheck.run(in: dir)
        report.items.append(await Self.inotify(in: dir))

        let firstWriter = report.items.first { $0.name == "first writer wins" }
        let rename = firstWriter?.verdict == .fallback ? "link" : "renameat2"
        let inotifyOK = report.items.last?.verdict == .ok
        let wake = !inotifyOK ? "rescan" : report.shared ? "inotify+rescan" : "inotify"
        if output.json {
            Output.json([
                "directory": .string(report.directory),
                "filesystem": .string(report.filesystem),
                "shared": .bool(report.shared),
                "usable": .bool(report.usable),
                "first_writer_wins": .string(rename),
                "wake": .string(wake),
                "checks": .array(report.items.map { i in
                    ["name": .string(i.name), "verdict": .string(i.verdict.rawValue), "detail": .string(i.detail), "required": .bool(i.required)]
                }),
            ])
        } else {
            if !DurableFile.exists(asked) {
                Output.line("\(Names.printable(asked.string)) does not exist yet: checking \(Names.printable(dir.string))")
            }
            Output.line("\(Names.printable(report.directory)): \(report.filesystem)" + (report.shared ? " (shared or network: other hosts' writes are not seen by inotify)" : ""))
            for i in report.items {
                let mark: String
                switch i.verdict {
                case .ok: mark = Output.green("ok      ")
                case .fallback: mark = Output.yellow("fallback")
                case .warning: mark = Output.yellow("warning ")
                case .failed: mark = Output.red("FAILED  ")
                }
                Output.line("  \(mark) \(i.name)" + (i.detail.isEmpty ? "" : " — \(i.detail)"))
            }
            if !report.usable {
                Output.line("A spool cannot live here: " + report.items.filter { $0.required && $0.verdict == .failed }.map(\.name).joined(separator: ", ") + ".")
            } else {
                Output.line("Mode: first writer wins by \(rename == "link" ? "link+unlink" : "renameat2(RENAME_NOREPLACE)"); " + (
                    wake == "inotify" ? "runs wake by inotify."
                        : wake == "rescan" ? "no inotify here: run `cairn daemon --rescan-interval 2s`."
                        : "on several hosts, run every daemon with `--rescan-interval 2s` (inotify sees only this host's writes)."))
            }
        }
        if !report.usable { throw ExitCode(1) }
    }

    /// Whether inotify reports a file created in a scratch directory, within 2 s.
    static func inotify(in dir: FilePath) async -> FilesystemCheck.Item {
        let name = "inotify"
        guard let scratch = try? FilesystemCheck.makeScratch(in: dir) else {
            return .init(name: name, verdict: .warning, detail: "no scratch directory", required: false)
        }
        defer { FilesystemCheck.removeTree(scratch) }
        let watcher: Watcher
        do { watcher = try Watcher.start() } catch {
            return .init(name: name, verdict: .warning, detail: "\(error); the daemon needs --rescan-interval", required: false)
        }
        defer { watcher.stop() }
        do { try await watcher.watch(scratch.path.string) } catch {
            return .init(name: name, verdict: .warning, detail: "\(error); the daemon needs --rescan-interval", required: false)
        }
        let seen = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await e in watcher.events where e.name == "probe" { return true }
                return false
            }
            group.addTask {
                try? DurableFile.writeStaged(Data("probe".utf8), to: scratch.path.appending("probe"))
                try? await Task.sleep(for: .seconds(2))
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        return seen
            ? .init(name: name, verdict: .ok, detail: "sees this host's writes", required: false)
            : .init(name: name, verdict: .warning, detail: "no event within 2 s; the daemon needs --rescan-interval", required: false)
    }
}
