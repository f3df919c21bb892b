import ArgumentParser
import CairnDaemon
import CairnMCP
import CairnSpool
import CairnWatch
import Foundation
import Logging
import MCP
import Subprocess
import Synchronization
import SystemPackage

/// `cairn mcp`: the spool as an MCP server over stdio, for assistants and IDEs that speak the
/// Model Context Protocol. It acts as the Unix user who runs it: each tool runs this same
/// executable's command (`cairn approve …`) as a child process, so the spool's permissions,
/// `approvers`, the checks, the files written (owned by you) and the messages are exactly the
/// CLI's. Run state and journals are resources; a subscription is kept with inotify.
struct MCPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mcp",
        abstract: "Serve the spool over the Model Context Protocol (stdio), as you.",
        discussion: prose("""
            An MCP client (a desktop or IDE assistant) starts it and speaks JSON-RPC on its stdin
            and stdout; nothing else is printed there (diagnostics go to stderr). Tools: list_runs,
            show_run, why, submit, approve, reject, signal, cancel, pause, resume, retry. Resources:
            cairn://runs/RUN/state and cairn://runs/RUN/journal, with subscriptions that fire
            when the run changes. See docs/mcp.md for a client's configuration.

            Examples:
              cairn mcp --spool /srv/cairn/spool
            """)
    )

    @Option(name: .customLong("rescan-interval"), help: "Also look at subscribed runs this often (a spool on a shared filesystem: other hosts' writes make no inotify event here; at least 100ms).") var rescanInterval: DurationArgument?
    @OptionGroup var options: SpoolOptions

    func validate() throws {
        if let r = rescanInterval, r.duration < .milliseconds(100) { throw ValidationError("--rescan-interval must be at least 100ms, not \(r.text)") }
    }

    func run() async throws {
        // Fail closed before speaking: a spool that does not open is an error on stderr.
        let spool = try options.open()
        // A client that closed its end: write(2) fails (EPIPE) and the server ends, instead
        // of being killed by the signal mid-reply.
        signal(SIGPIPE, SIG_IGN)
        var logger = Logger(label: "cairn-mcp", factory: { HumanLogHandler(label: $0) })
        logger.logLevel = .warning
        let service = try MCPService(spool: spool, logger: logger, rescan: rescanInterval?.duration)
        try await service.run()
    }
}

/// One tool of `cairn mcp`: its schema, and the CLI command it runs.
struct MCPTool: Sendable {
    var name: String
    var description: String
    /// Properties: name → (JSON Schema, required).
    var properties: [(String, JSONValue, Bool)]
    var readOnly: Bool
    var destructive: Bool = false
    /// The command line for valid arguments, and what goes to its stdin.
    var command: @Sendable ([String: JSONValue]) -> (args: [String], stdin: String?)

    var schema: JSONValue {
        var props: [String: JSONValue] = [:]
        for (n, s, _) in properties { props[n] = s }
        return ["type": "object", "properties": .object(props), "required": .array(properties.filter(\.2).map { .string($0.0) }), "additionalProperties": false]
    }

    /// The arguments checked against the schema: one line naming what is wrong, or nil.
    func problem(_ args: [String: JSONValue]) -> String? {
        for key in args.keys.sorted() where !properties.contains(where: { $0.0 == key }) {
            return "\(name): unknown argument '\(key)' (it takes \(properties.map(\.0).joined(separator: ", ")))"
        }
        for (n, s, required) in properties {
            guard let v = args[n], v != .null else {
                if required { return "\(name): '\(n)' is required" }
                continue
            }
            let type = s["type"]?.stringValue
            let ok: Bool = switch type {
            case "string": v.stringValue != nil
            case "boolean": v.boolValue != nil
            case "integer": v.intValue != nil && v.doubleValue.map { $0 == $0.rounded() } ?? true
            case "array": v.arrayValue != nil && (v.arrayValue ?? []).allSatisfy { $0.stringValue != nil }
            default: true  // any JSON value (an input, a decision value, event data)
            }
            if !ok {
                let what = type == "array" ? "an array of strings" : type == "integer" ? "an integer" : "a \(type ?? "value")"
                return "\(name): '\(n)' must be \(what), not \(v.kindName)"
            }
            if let min = s["minimum"]?.intValue, let i = v.intValue, i < min { return "\(name): '\(n)' must be at least \(min), not \(i)" }
            for text in [v.stringValue].compactMap({ $0 }) + (v.arrayValue ?? []).compactMap(\.stringValue) {
                // Command-line arguments: a NUL would cut the value short; a value over the
                // kernel's limit for one argument would fail the command before it ran.
                if text.contains("\u{0}") { return "\(name): '\(n)' must not contain a NUL character" }
                if text.utf8.count > 65536 { return "\(name): '\(n)' is \(text.utf8.count) bytes; at most 65536" }
            }
            if let allowed = s["enum"]?.arrayValue, !allowed.contains(v) {
                return "\(name): '\(n)' must be one of \(allowed.compactMap(\.stringValue).joined(separator: ", "))"
            }
            if type == "string", let text = v.stringValue, text.hasPrefix("-") {
                // Never an option smuggled into the command line.
                return "\(name): '\(n)' must not start with '-'"
            }
        }
        if let st = args["status"]?.arrayValue {
            for s in st where RunStatus(rawValue: s.stringValue ?? "") == nil { return "\(name): unknown status '\(s.stringValue ?? "")' (\(RunStatus.allCases.map(\.rawValue).joined(separator: ", ")))" }
        }
        return nil
    }

    static let run: (String, JSONValue, Bool) = ("run", ["type": "string", "description": "The run id."], true)

    static func all(spool: String) -> [MCPTool] {
        let sp = ["--spool", spool]
        @Sendable func s(_ a: [String: JSONValue], _ k: String) -> String { a[k]?.stringValue ?? "" }
        func control(_ name: String, _ what: String, destructive: Bool = false) -> MCPTool {
            MCPTool(name: name, description: what, properties: [run], readOnly: false, destructive: destructive) { a in ([name, s(a, "run")] + sp, nil) }
        }
        return [
            MCPTool(name: "list_runs", description: "The spool's runs, newest first: id, status, workflow, last change, what each waits for (as `cairn ls --json`).",
                    properties: [("status", ["type": "array", "items": ["type": "string", "enum": .array(RunStatus.allCases.map { .string($0.rawValue) })], "description": "Only runs in these statuses."], false),
                                 ("workflow", ["type": "string", "description": "Only runs of this workflow."], false),
                                 ("limit", ["type": "integer", "minimum": 1, "description": "At most this many (the newest)."], false)],
                    readOnly: true) { a in
                var args = ["ls", "--json"] + sp
                for st in a["status"]?.arrayValue ?? [] { args += ["--status", st.stringValue ?? ""] }
                if let w = a["workflow"]?.stringValue { args += ["--workflow", w] }
                args += ["--limit", String(a["limit"]?.intValue ?? 50)]
                return (args, nil)
            },
            MCPTool(name: "show_run", description: "A run's record, state (status, waiting_for, tokens, error) and journal (every durable operation), as `cairn show --json`.", properties: [run, ("tail", ["type": "integer", "minimum": 0, "description": "Only the last N journal records (default 200)."], false)], readOnly: true) { a in
                (["show", s(a, "run"), "--json", "--tail", String(a["tail"]?.intValue ?? 200)] + sp, nil)
            },
            MCPTool(name: "why", description: "What a run waits for and the exact command or file drop that unblocks it (as `cairn why --json`).", properties: [run], readOnly: true) { a in
                (["why", s(a, "run"), "--json"] + sp, nil)
            },
            MCPTool(name: "submit", description: "Start a run of a workflow with a JSON input; returns its id. The same id or idempotency key twice yields one run.",
                    properties: [("workflow", ["type": "string", "description": "The workflow type."], true),
                                 ("input", ["description": "The run's input (any JSON value; default null)."], false),
                                 ("id", ["type": "string", "description": "The run id to use."], false),
                                 ("idempotency_key", ["type": "string", "description": "A key: a second submission with it returns the first run."], false)],
                    readOnly: false) { a in
                var args = ["submit", s(a, "workflow"), "--input", "-"] + sp
                if let id = a["id"]?.stringValue { args += ["--id", id] }
                if let k = a["idempotency_key"]?.stringValue { args += ["--idempotency-key", k] }
                return (args, (a["input"] ?? .null).compactText())
            },
            MCPTool(name: "approve", description: "Approve a gate a run waits at, as you (recorded with your user, exactly as `cairn approve` or a dropped file). A value, when given, is what the run receives (an edited draft, an amount).",
                    properties: [run, ("gate", ["type": "string", "description": "The gate's name."], true),
                                 ("value", ["description": "The value the run receives (any JSON value)."], false),
                                 ("comment", ["type": "string", "description": "Recorded with the decision."], false),
                                 ("early", ["type": "boolean", "description": "Decide before the run has asked."], false)],
                    readOnly: false) { a in
                var args = ["approve", s(a, "run"), s(a, "gate")] + sp
                if let c = a["comment"]?.stringValue { args += ["--comment", c] }
                if a["early"]?.boolValue == true { args.append("--early") }
                if let v = a["value"], v != .null { args += ["--value", "-"]; return (args, v.compactText()) }
                return (args, nil)
            },
            MCPTool(name: "reject", description: "Reject a gate a run waits at, as you.",
                    properties: [run, ("gate", ["type": "string", "description": "The gate's name."], true),
                                 ("reason", ["type": "string", "description": "Why; the run receives it."], false),
                                 ("early", ["type": "boolean", "description": "Decide before the run has asked."], false)],
                    readOnly: false, destructive: true) { a in
                var args = ["reject", s(a, "run"), s(a, "gate")] + sp
                if let r = a["reason"]?.stringValue { args += ["--reason", r] }
                if a["early"]?.boolValue == true { args.append("--early") }
                return (args, nil)
            },
            MCPTool(name: "signal", description: "Send an event (with JSON data) to a run; it receives it when it waits for that event.",
                    properties: [run, ("event", ["type": "string", "description": "The event's name."], true),
                                 ("data", ["description": "The event's data (any JSON value; default null)."], false)],
                    readOnly: false) { a in
                (["signal", s(a, "run"), s(a, "event"), "--data", "-"] + sp, (a["data"] ?? .null).compactText())
            },
            control("cancel", "Cancel a run: its compensations run, then it ends cancelled.", destructive: true),
            control("pause", "Pause a run before its next operation."),
            control("resume", "Resume a paused run."),
            control("retry", "Retry a failed run from its failed step."),
        ]
    }
}

/// The server: the SDK's Server on stdio, the tools above, runs as resources.
final class MCPService: Sendable {
    let spool: Spool
    let logger: Logger
    let tools: [MCPTool]
    let exe: String
    /// Subscribed resource URIs, by run id.
    private let subscriptions = Mutex<[String: Set<String>]>([:])
    /// Each subscribed run's state.json as last seen (its modification time and size), so
    /// that the look every few seconds notifies only of a change.
    private let lastSeen = Mutex<[String: String]>([:])
    /// Run directories watched.
    private let watched = Mutex(Set<String>())

    let watcher: Watcher
    /// Also look at every subscribed run this often (nil: inotify alone).
    let rescan: Duration?

    init(spool: Spool, logger: Logger, rescan: Duration? = nil) throws {
        self.spool = spool
        self.logger = logger
        self.rescan = rescan
        // Started before the server speaks (the watcher thread must own its fd first).
        watcher = try Watcher.start()
        tools = MCPTool.all(spool: spool.root.string)
        // This executable (a host executable has the same commands and its own workflows).
        exe = ScriptWorkflow.executablePath()
    }

    func run() async throws {
        let server = Server(name: "cairn", version: "0.1.0", capabilities: .init(resources: .init(subscribe: true, listChanged: false), tools: .init(listChanged: false)))
        await server.withMethodHandler(ListTools.self) { [tools] _ in
            .init(tools: tools.map { t in
                Tool(name: t.name, description: t.description, inputSchema: (try? MCPValues.value(t.schema)) ?? .object([:]),
                     annotations: .init(readOnlyHint: t.readOnly, destructiveHint: t.destructive, idempotentHint: t.readOnly, openWorldHint: false))
            })
        }
        await server.withMethodHandler(CallTool.self) { [self] params in
            try await call(params.name, params.arguments ?? [:])
        }
        await server.withMethodHandler(ListResources.self) { [self] _ in
            let ids = ((try? spool.runIDs()) ?? []).sorted(by: >).prefix(200)
            return .init(resources: ids.flatMap { id in [
                Resource(name: "\(id) state", uri: "cairn://runs/\(id)/state", description: "The run's state.json: status, waiting_for, counters, tokens, error.", mimeType: "application/json"),
                Resource(name: "\(id) journal", uri: "cairn://runs/\(id)/journal", description: "The run's journal: every durable operation, in order.", mimeType: "application/json"),
            ] }, nextCursor: nil)
        }
        await server.withMethodHandler(ListResourceTemplates.self) { _ in
            .init(templates: [
                Resource.Template(uriTemplate: "cairn://runs/{run}/state", name: "A run's state", mimeType: "application/json"),
                Resource.Template(uriTemplate: "cairn://runs/{run}/journal", name: "A run's journal", mimeType: "application/json"),
            ])
        }
        await server.withMethodHandler(ReadResource.self) { [self] params in
            let (id, part) = try parse(params.uri)
            return .init(contents: [.text(try read(id, part), uri: params.uri, mimeType: "application/json")])
        }
        await server.withMethodHandler(ResourceSubscribe.self) { [self] params in
            let (id, _) = try parse(params.uri)
            // The watch first, then the stamp: a change in between is seen as a change.
            await watchSubscribed(id)
            let seen = stamp(id)
            lastSeen.withLock { if $0[id] == nil { $0[id] = seen } }
            subscriptions.withLock { _ = $0[id, default: []].insert(params.uri) }
            return .init()
        }
        await server.withMethodHandler(ResourceUnsubscribe.self) { [self] params in
            let (id, _) = try parse(params.uri)
            subscriptions.withLock { s in
                s[id]?.remove(params.uri)
                if s[id]?.isEmpty == true { s[id] = nil }
            }
            return .init()
        }
        let transport = PipeTransport(logger: logger, screen: Self.screen)
        try await server.start(transport: transport)
        // Changes: inotify on runs/ and on every run directory (state.json is replaced by a
        // rename on each change), and a look every 2 s (other hosts of a shared filesystem).
        defer { watcher.stop() }
        // Changes: inotify on each subscribed run's directory (state.json is replaced by a
        // rename on each change of the run). No polling, unless --rescan-interval asks for it
        // (other hosts of a shared filesystem, whose writes inotify does not see).
        let watching = Task { [self, watcher, rescan] in
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await e in watcher.events {
                        if e.kind == .overflow { await self.notifyChanged(server, only: nil); continue }
                        guard e.name == "state.json" || e.name.isEmpty else { continue }
                        let id = FilePath(e.directory).lastComponent?.string ?? ""
                        await self.notifyChanged(server, only: id)
                    }
                }
                if let rescan {
                    group.addTask {
                        while !Task.isCancelled {
                            try? await Task.sleep(for: rescan)
                            await self.notifyChanged(server, only: nil)
                        }
                    }
                }
            }
        }
        await server.waitUntilCompleted()
        // The client closed its end: the calls it made are finished and answered (a decision
        // carried out must not go unanswered, nor its command be left running), then exit.
        await transport.waitForReplies(limit: .seconds(300))
        watching.cancel()
    }

    /// A message with a key twice in one object is refused before the SDK reads it: its
    /// decoder keeps one of them silently, and a proxy or a confirmation screen reading the
    /// same line with another parser may see the other (`{"run": "A", …, "run": "B"}`).
    @Sendable static func screen(_ line: Data) -> Data? {
        do {
            _ = try JSONValue.parseRejectingDuplicateKeys(line)
            return nil
        } catch {
            // Not JSON at all: the SDK answers its parse error.
            guard let lenient = try? JSONValue.parse(line) else { return nil }
            let reply: JSONValue = ["jsonrpc": "2.0", "id": lenient["id"] ?? .null,
                                    "error": ["code": -32600, "message": .string("Invalid request: \(JSONValue.describe(error))")]]
            return Data(reply.compactText().utf8)
        }
    }

    /// Watches a subscribed run's directory (once).
    func watchSubscribed(_ id: String) async {
        guard watched.withLock({ $0.insert(id).inserted }) else { return }
        try? await watcher.watch(spool.run(id).directory.string)
    }

    /// A stamp of state.json that changes when it is replaced (inode, size, mtime).
    func stamp(_ id: String) -> String {
        var st = stat()
        guard stat(spool.run(id).stateFile.string, &st) == 0 else { return "" }
        return "\(st.st_ino)-\(st.st_size)-\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
    }

    /// Sends `notifications/resources/updated` for each subscribed resource of a run whose
    /// state changed since the last one sent (`only`: that run; nil: every subscribed run).
    func notifyChanged(_ server: Server, only: String?) async {
        let subs = subscriptions.withLock { $0 }
        for (id, uris) in subs where only == nil || only == id {
            let now = stamp(id)
            let changed = lastSeen.withLock { seen -> Bool in
                defer { seen[id] = now }
                return seen[id] != now
            }
            guard changed else { continue }
            for uri in uris.sorted() {
                try? await server.notify(ResourceUpdatedNotification.message(.init(uri: uri)))
            }
        }
    }

    func parse(_ uri: String) throws -> (String, String) {
        let parts = uri.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        // cairn://runs/ID/state
        guard uri.hasPrefix("cairn://runs/"), parts.count == 5, ["state", "journal"].contains(parts[4]), Names.isValidRunID(parts[3]) else {
            throw MCPError.invalidParams("unknown resource '\(uri)' (cairn://runs/RUN/state or cairn://runs/RUN/journal)")
        }
        guard spool.runExists(parts[3]) else { throw MCPError.invalidParams("no such run '\(parts[3])' in \(spool.root.string)/runs") }
        return (parts[3], parts[4])
    }

    func read(_ id: String, _ part: String) throws -> String {
        do {
            if part == "state" {
                guard let s = try spool.readState(id) else { throw MCPError.invalidParams("\(id): no state.json yet") }
                return try JSONValue(encoding: s).canonicalText()
            }
            return JSONValue.array(try spool.journal(id).load().map { try JSONValue(encoding: $0) }).canonicalText()
        } catch let e as MCPError {
            throw e
        } catch {
            throw MCPError.internalError("\(id): \(error)")
        }
    }

    /// Runs a tool: its arguments checked, then the CLI command, whose one-line error (exit
    /// code 1, 3, 4) comes back as a tool error (`isError`), its output as the result.
    func call(_ name: String, _ arguments: [String: MCP.Value]) async throws -> CallTool.Result {
        guard let tool = tools.first(where: { $0.name == name }) else {
            throw MCPError.invalidParams("unknown tool '\(name)' (\(tools.map(\.name).joined(separator: ", ")))")
        }
        let args = try MCPValues.json(.object(arguments)).objectValue ?? [:]
        if let problem = tool.problem(args) { throw MCPError.invalidParams(problem) }
        let (argv, stdin) = tool.command(args)
        let (code, out, err) = try await Self.runCLI(exe, argv, stdin: stdin)
        if code == 0 {
            var text = out.trimmingCharacters(in: .newlines)
            let warnings = err.trimmingCharacters(in: .newlines)
            if !warnings.isEmpty { text += (text.isEmpty ? "" : "\n") + warnings }
            let structured = (try? JSONValue.parse(out)).flatMap { try? MCPValues.value($0) }
            return .init(content: [.text(text: text, annotations: nil, _meta: nil)], structuredContent: structured.flatMap { v in if case .object = v { return v } else { return .object(["result": v]) } }, isError: false)
        }
        let message = err.split(separator: "\n").first.map(String.init) ?? "cairn \(name) failed (exit \(code))"
        return .init(content: [.text(text: message, annotations: nil, _meta: nil)], isError: true)
    }

    /// This executable with `args`; stdin, stdout and stderr through unlinked temporary
    /// files (no pipe a child could leave half-read).
    static func runCLI(_ exe: String, _ args: [String], stdin: String?) async throws -> (Int32, String, String) {
        func temp(_ text: String) throws -> FileDescriptor {
            var template = Array((NSTemporaryDirectory() + "/cairn-mcp-XXXXXX").utf8CString)
            let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            guard fd >= 0 else { throw MCPError.internalError("cannot make a temporary file: \(String(cString: strerror(errno)))") }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            unlink(String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self))
            let f = FileDescriptor(rawValue: fd)
            _ = try f.writeAll(Array(text.utf8))
            _ = try f.seek(offset: 0, from: FileDescriptor.SeekOrigin.start)
            return f
        }
        let input = try temp(stdin ?? "")
        let out = try temp("")
        let err = try temp("")
        defer { try? out.close(); try? err.close() }
        var env = ProcessInfo.processInfo.environment
        env["NO_COLOR"] = "1"
        env["CAIRN_PAGER"] = "cat"
        let status = try await Subprocess.run(.path(FilePath(exe)), arguments: Arguments(args), environment: .custom(Dictionary(uniqueKeysWithValues: env.map { (Environment.Key(rawValue: $0.key)!, $0.value) })),
                                              input: .fileDescriptor(input, closeAfterSpawningProcess: true),
                                              output: .fileDescriptor(out, closeAfterSpawningProcess: false),
                                              error: .fileDescriptor(err, closeAfterSpawningProcess: false)).terminationStatus
        func text(_ fd: FileDescriptor) -> String {
            var data = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 65536)
            var off: Int64 = 0
            while true {
                let n = buf.withUnsafeMutableBytes { (try? fd.read(fromAbsoluteOffset: off, into: $0)) ?? 0 }
                if n <= 0 || data.count > 8 << 20 { break }
                data += buf[0..<n]
                off += Int64(n)
            }
            return String(decoding: data, as: UTF8.self)
        }
        let code: Int32 = switch status {
        case .exited(let c): c
        case .signaled(let s): 128 + s
        }
        return (code, text(out), text(err))
    }
}

/// JSONValue ⇄ the SDK's Value, through JSON text.
extension MCPValues {
    static func value(_ v: JSONValue) throws -> MCP.Value { try value(v.compactText()) }
    static func json(_ v: MCP.Value) throws -> JSONValue { try JSONValue.parse(text(v)) }
}
