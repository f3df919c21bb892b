import ArgumentParser
import CSystemShims
import Cairn
import CairnSpool
import Foundation
import Logging
import Synchronization
import CairnDaemon

/// The whole `cairn` CLI and daemon as a library. A user's own executable hosts its Swift
/// workflows with one call:
///
/// ```swift
/// @main struct MyCairn {
///     static func main() async {
///         var workflows = WorkflowRegistry()
///         try workflows.register(TriageTicket())
///         await CairnCLI.main(workflows: workflows)
///     }
/// }
/// ```
/// The process's arguments after its name: the C runtime's argv (CSystemShims), which needs no
/// /proc; Swift's CommandLine.arguments as the fallback. A process whose arguments cannot be
/// read exits 2 saying so, rather than acting as if it had none.
func processArguments() -> [String] {
    let argc = Int(cairn_argc())
    if argc > 0, let argv = cairn_argv() {
        return (1..<argc).map { argv[$0].map { String(cString: $0) } ?? "" }
    }
    if CommandLine.arguments.isEmpty {
        FileHandle.standardError.write(Data("cairn: cannot read this process's arguments (is /proc mounted?)\n".utf8))
        exit(CLIError.Code.usage.rawValue)
    }
    return Array(CommandLine.arguments.dropFirst())
}

public enum CairnCLI {
    /// Runs the CLI with `arguments` (default: the process's), then exits with SPEC §5's codes.
    public static func main(workflows: WorkflowRegistry = WorkflowRegistry(), arguments: [String]? = nil) async -> Never {
        CLIEnvironment.set(workflows: workflows)
        let args = arguments ?? processArguments()
        // A command that does not exist (also after `help`): one line, with the nearest name.
        let named = args.first == "help" ? args.dropFirst().first : args.first
        if let name = named, !name.hasPrefix("-"), !CairnCommand.commandNames.contains(name) {
            let hint = CairnCommand.nearest(name).map { "; did you mean '\($0)'?" } ?? ""
            FileHandle.standardError.write(Data("cairn: unknown command '\(Names.printable(name))'\(hint) (cairn --help lists them)\n".utf8))
            exit(CLIError.Code.usage.rawValue)
        }
        do {
            var command = try CairnCommand.parseAsRoot(args)
            if var async = command as? AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
            exit(0)
        } catch let e as CLIError {
            FileHandle.standardError.write(Data("cairn: \(Names.printable(e.message))\n".utf8))
            exit(e.code.rawValue)
        } catch let e as SpoolError {
            FileHandle.standardError.write(Data("cairn: \(Names.printable(e.description))\n".utf8))
            exit(e.code == .notFound ? CLIError.Code.notFound.rawValue : CLIError.Code.failure.rawValue)
        } catch let e as ExitCode {
            exit(e.rawValue)
        } catch {
            let code = CairnCommand.exitCode(for: error)
            if code == .success {
                print(CairnCommand.fullMessage(for: error))
                exit(0)
            }
            let message = CairnCommand.fullMessage(for: error)
            if code == .validationFailure {
                // One line (docs/cli.md): the parser's message and where the usage is.
                let short = CairnCommand.message(for: error).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.joined(separator: " ")
                let command = args.first.map { CairnCommand.commandNames.contains($0) ? "cairn \($0) --help" : "cairn --help" } ?? "cairn --help"
                FileHandle.standardError.write(Data("cairn: \(Names.printable(short.trimmingCharacters(in: .whitespaces))) (see \(command))\n".utf8))
                exit(CLIError.Code.usage.rawValue)
            }
            FileHandle.standardError.write(Data("cairn: \(Names.printable(message))\n".utf8))
            exit(CLIError.Code.failure.rawValue)
        }
    }
}

extension CairnCommand {
    /// Every command's name (the hidden ones too), and `help`.
    static var commandNames: Set<String> {
        let all = configuration.subcommands + configuration.groupedSubcommands.flatMap(\.subcommands)
        return Set(all.map { $0._commandName } + ["help"])
    }

    /// The command nearest to a mistyped `name` (at most two edits away), if any.
    static func nearest(_ name: String) -> String? {
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            var row = Array(0...b.count)
            for i in 1...max(a.count, 1) where !a.isEmpty {
                var prev = row[0]
                row[0] = i
                for j in 1...max(b.count, 1) where !b.isEmpty {
                    let cur = row[j]
                    row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
                    prev = cur
                }
            }
            return row[b.count]
        }
        let visible = commandNames.filter { !$0.hasPrefix("_") }
        return visible.map { ($0, distance(Array(name), Array($0))) }.filter { $0.1 <= 2 }.min { ($0.1, $0.0) < ($1.1, $1.0) }?.0
    }
}

/// The workflows and settings the hosting executable gave the CLI.
public enum CLIEnvironment {
    private static let state = Mutex<WorkflowRegistry>(WorkflowRegistry())

    public static func set(workflows: WorkflowRegistry) { state.withLock { $0 = workflows } }
    public static var workflows: WorkflowRegistry { state.withLock { $0 } }

    /// The registered Swift workflows plus the spool's script workflows (whose helpers
    /// `helpers` serves, when given).
    static func workflows(for spool: Spool, helpers: HelperService? = nil) -> WorkflowRegistry {
        var r = workflows
        r.fallback = ScriptWorkflow.resolver(spool: spool, helpers: helpers)
        return r
    }
}

/// An error the CLI reports as one line on stderr, with SPEC §5's exit code.
public struct CLIError: Error, CustomStringConvertible {
    public struct Code: Hashable, Sendable {
        public let rawValue: Int32
        public static let failure = Code(rawValue: 1)
        public static let usage = Code(rawValue: 2)
        public static let notFound = Code(rawValue: 3)
        public static let timedOut = Code(rawValue: 4)
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// `cairn`: the root command.
struct CairnCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cairn",
        abstract: "Durable execution for AI agents on a plain directory.",
        discussion: prose("""
            Every run is a directory in the spool (--spool DIR, else $CAIRN_SPOOL, else ./spool);
            every completed step is a JSON file in its journal. Approve by dropping a file.

            Exit codes: 0 success, 1 failure, 2 usage, 3 no such run or gate, 4 timed out.
            """),
        version: "0.1.0",
        // Internal: the supervisor of a script workflow (hidden from help).
        subcommands: [SuperviseCommand.self, BenchDaemonCommand.self],
        // `cairn --help` lists the commands in these groups ("RUN SUBCOMMANDS:" …), in this order; every name works as before.
        groupedSubcommands: [
            CommandGroup(name: "Run", subcommands: [
                SubmitCommand.self, ListCommand.self, ShowCommand.self, LogsCommand.self, WhyCommand.self, WaitCommand.self, StatusCommand.self,
            ]),
            CommandGroup(name: "Decision and event", subcommands: [
                ApproveCommand.self, RejectCommand.self, SignalCommand.self,
            ]),
            CommandGroup(name: "Control", subcommands: [
                CancelCommand.self, PauseCommand.self, ResumeCommand.self, RetryCommand.self,
            ]),
            CommandGroup(name: "Spool", subcommands: [
                InitCommand.self, DaemonCommand.self, AdvanceCommand.self, FsckCommand.self,
                GCCommand.self, DoctorCommand.self, DemoCommand.self, BenchCommand.self, MCPCommand.self, ReportCommand.self,
            ]),
            CommandGroup(name: "Script helper", subcommands: [
                StepHelper.self, ApprovalHelper.self, EventHelper.self, SleepHelper.self, NowHelper.self,
                UUIDHelper.self, ResultHelper.self, ContinueAsNewHelper.self, LLMHelper.self, MCPCallHelper.self,
            ]),
        ]
    )
}

/// `--spool DIR`, on every command.
struct SpoolOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The spool directory (default: $CAIRN_SPOOL, else ./spool).", valueName: "dir"), completion: .directory)
    var spool: String?

    var root: String { Spool.resolveRoot(spool).string }

    func open() throws -> Spool {
        do {
            return try Spool.open(at: Spool.resolveRoot(spool))
        } catch let e as SpoolError where e.code == .notASpool {
            // Say where it looked and how it chose: a forgotten --spool must not read as
            // "make a spool here".
            let root = Spool.resolveRoot(spool).string
            let absolute = Spool.absolute(root)
            let how = spool != nil ? "--spool" : ProcessInfo.processInfo.environment["CAIRN_SPOOL"].map { _ in "$CAIRN_SPOOL" } ?? "the default ./spool (no --spool, no $CAIRN_SPOOL)"
            throw CLIError(.failure, "\(absolute) (from \(how)) is not a Cairn spool (no cairn.json): pass --spool DIR or set CAIRN_SPOOL; `cairn init DIR` makes a new one")
        }
    }
}

/// `--json`, on every reading command.
struct JSONOption: ParsableArguments {
    @Flag(name: .long, help: "Print JSON (stable field names; see docs/cli.md).")
    var json = false
}
