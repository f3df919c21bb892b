import Cairn
import CairnMCP
import CairnSpool
import Foundation
import MCP
import Synchronization
import SystemPackage

/// An MCP server an agent takes tools from: `cairn.json` `"mcp_servers": {NAME: {...}}`.
///
/// ```json
/// "mcp_servers": {
///   "helpdesk": {"command": ["/usr/local/bin/helpdesk-mcp", "--region", "eu"], "env": {"HELPDESK_TOKEN_FILE": "/etc/cairn/helpdesk"},
///                "needs_approval": ["send_reply"], "at_most_once": ["send_reply"], "timeout_seconds": 60},
///   "search":   {"url": "http://127.0.0.1:8931/mcp"}
/// }
/// ```
public struct MCPServerConfig: Sendable, Hashable {
    /// The name in `cairn.json`.
    public var name: String
    /// A stdio server: the executable (an absolute path, trusted like a workflow) and its arguments.
    public var command: [String]?
    /// An HTTP server (Streamable HTTP).
    public var url: URL?
    /// Extra environment for a stdio server.
    public var env: [String: String]
    /// Tools that open an approval gate before each call.
    public var needsApproval: Set<String>
    /// Tools whose calls are at-most-once (an interrupted call stops at an `uncertain` gate).
    public var atMostOnce: Set<String>
    /// The longest one call may take (default 60 s): then the server is restarted and the
    /// call fails as retryable.
    public var timeout: Duration

    /// What tells one server process from another (two spools may name different servers
    /// alike).
    var key: String { ([name, url?.absoluteString ?? ""] + (command ?? []) + env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }).joined(separator: "\u{0}") }

    /// Reads `mcp_servers.NAME` of `config` (cairn.json). Throws a non-retryable error naming
    /// what is wrong: the configuration is the workflow author's to fix.
    public static func from(config: SpoolConfig, name: String) throws -> MCPServerConfig {
        let file = "cairn.json"
        guard let all = config.raw["mcp_servers"]?.objectValue else {
            throw StepError.nonRetryable("\(file) has no \"mcp_servers\" section: name the MCP server '\(name)' there (docs/mcp.md)", type: "mcp_configuration")
        }
        guard let o = all[name]?.objectValue else {
            throw StepError.nonRetryable("\(file): no MCP server '\(name)' in \"mcp_servers\" (it has \(all.keys.sorted().joined(separator: ", ")))", type: "mcp_configuration")
        }
        var c = MCPServerConfig(name: name, command: nil, url: nil, env: [:], needsApproval: [], atMostOnce: [], timeout: .seconds(60))
        if let cmd = o["command"]?.arrayValue {
            let words = cmd.compactMap(\.stringValue)
            guard words.count == cmd.count, let exe = words.first, exe.hasPrefix("/") else {
                throw StepError.nonRetryable("\(file): mcp_servers.\(name).command must be an array of strings starting with an absolute path", type: "mcp_configuration")
            }
            c.command = words
        }
        if let u = o["url"]?.stringValue {
            guard let url = URL(string: u), ["http", "https"].contains(url.scheme ?? "") else {
                throw StepError.nonRetryable("\(file): mcp_servers.\(name).url must be an http(s) URL, not '\(u)'", type: "mcp_configuration")
            }
            c.url = url
        }
        guard (c.command == nil) != (c.url == nil) else {
            throw StepError.nonRetryable("\(file): mcp_servers.\(name) needs exactly one of \"command\" and \"url\"", type: "mcp_configuration")
        }
        for (k, v) in o["env"]?.objectValue ?? [:] {
            guard let s = v.stringValue else { throw StepError.nonRetryable("\(file): mcp_servers.\(name).env.\(k) must be a string", type: "mcp_configuration") }
            c.env[k] = s
        }
        c.needsApproval = Set((o["needs_approval"]?.arrayValue ?? []).compactMap(\.stringValue))
        c.atMostOnce = Set((o["at_most_once"]?.arrayValue ?? []).compactMap(\.stringValue))
        if let t = o["timeout_seconds"]?.doubleValue {
            guard t > 0, t <= 86400 else { throw StepError.nonRetryable("\(file): mcp_servers.\(name).timeout_seconds must be between 0 and 86400", type: "mcp_configuration") }
            c.timeout = .milliseconds(Int64(t * 1000))
        }
        return c
    }
}

extension WorkflowContext {
    /// The tools of the MCP server `server` (cairn.json `"mcp_servers"`), as agent tools.
    ///
    /// The server's tool list is fetched once per run and recorded (a step named
    /// `mcp-tools.SERVER`): the run sees the same tools after any restart, and a replay does
    /// not ask the server. Each call of one of these tools is then a durable step of the
    /// agent loop like a Swift tool's (`NAME.tool-N-I-TOOL`), sent with the step's
    /// idempotency key in the request's `_meta` (`"cairn/idempotency_key"`), so a server
    /// can deduplicate a call that was re-sent after a crash; on replay nothing is called.
    /// A tool in `needsApproval` (or the server's `needs_approval`) opens a gate first; one
    /// in `atMostOnce` (or `at_most_once`) is at-most-once. A server that cannot be reached,
    /// dies or hangs mid-call fails the call as retryable (the step's retries apply, with a
    /// fresh server process); a tool that answers `isError` goes back to the model as
    /// `error: …` text.
    public func mcpTools(_ server: String, needsApproval: Set<String> = [], atMostOnce: Set<String> = []) async throws -> [Tool] {
        let config = try MCPServerConfig.from(config: spoolConfig, name: server)
        let listed: JSONValue = try await step("mcp-tools.\(server)") { _ in
            try await MCPConnections.shared.listTools(config)
        }
        let approval = needsApproval.union(config.needsApproval)
        let once = atMostOnce.union(config.atMostOnce)
        return (listed.arrayValue ?? []).compactMap { t in
            guard let name = t["name"]?.stringValue else { return nil }
            return Tool(name, description: t["description"]?.stringValue ?? "", parameters: t["input_schema"] ?? ["type": "object"],
                        needsApproval: approval.contains(name), semantics: once.contains(name) ? .atMostOnce : .atLeastOnce) { args, key in
                try await MCPConnections.shared.call(config, tool: name, arguments: args, idempotencyKey: key)
            }
        }
    }
}

/// A person rejected a direct MCP call (`mcpCall` with approval).
public struct MCPCallRejected: Error, CustomStringConvertible {
    /// Who rejected it, and why.
    public var description: String
}

/// What a direct MCP call returned: the tool's text, and whether the tool reported an error.
public struct MCPCallResult: Codable, Sendable, Hashable {
    /// The tool's content as text (several parts joined by line breaks).
    public var content: String
    /// The tool answered `isError`.
    public var isError: Bool
    /// The call, as recorded: a replay that calls another tool under the same name is refused.
    public var server: String?
    public var tool: String?

    enum CodingKeys: String, CodingKey {
        case content, server, tool
        case isError = "is_error"
    }
}

/// A replay met a recorded call of another server or tool under the same name.
public struct MCPCallMismatch: Error, CustomStringConvertible {
    public var description: String
}

extension WorkflowContext {
    /// One call of an MCP server's tool, outside an agent loop (`cairn mcp-call` in scripts):
    /// a durable step named `name` whose idempotency key goes to the server in `_meta`; on
    /// replay nothing is called. With approval (`needsApproval`, default: the server's
    /// `needs_approval`), the gate `name` opens first with `{"server", "tool", "arguments"}`:
    /// an approval's JSON object replaces the arguments, a rejection throws `MCPCallRejected`.
    public func mcpCall(_ name: String, server: String, tool: String, arguments: JSONValue, needsApproval: Bool? = nil, atMostOnce: Bool? = nil) async throws -> MCPCallResult {
        let config = try MCPServerConfig.from(config: spoolConfig, name: server)
        var args = arguments
        if needsApproval ?? config.needsApproval.contains(tool) {
            let d = try await approval(Names.fileSafe(name), request: ApprovalRequest(
                summary: "A script wants to call the MCP tool \(tool) of server \(server). Approve to run it (your JSON value, if any, replaces the arguments); reject to skip it.",
                details: ["server": .string(server), "tool": .string(tool), "arguments": args]),
                expectedValue: "a JSON object: the tool's arguments",
                checkValue: { v in
                    if case .object = v { return nil }
                    return "replaces the tool's arguments, so it must be a JSON object, not \(v.compactText().prefix(80))"
                })
            guard d.approved else { throw MCPCallRejected(description: "rejected by \(d.decidedBy?.user ?? "a person"): \(d.reason ?? "no reason given")") }
            if let edited = d.value, !edited.isNull { args = edited }
        }
        let finalArgs = args
        let result: MCPCallResult = try await step(name, semantics: (atMostOnce ?? config.atMostOnce.contains(tool)) ? .atMostOnce : .atLeastOnce) { key in
            let (text, isError) = try await MCPConnections.shared.callRaw(config, tool: tool, arguments: finalArgs, idempotencyKey: key)
            return MCPCallResult(content: text, isError: isError, server: server, tool: tool)
        }
        if let t = result.tool, let s = result.server, t != tool || s != server {
            throw MCPCallMismatch(description: "'\(name)' is recorded as a call of \(s)/\(t), and this execution calls \(server)/\(tool) under that name: a workflow must make the same calls in the same order on every execution (rename the call if it is a new one)")
        }
        return result
    }
}

/// The MCP clients of this process, one per configured server, started when first used and
/// started again after one died, hung or was reconfigured.
actor MCPConnections {
    static let shared = MCPConnections()

    private final class Connection: @unchecked Sendable {
        let config: MCPServerConfig
        let client: Client
        let process: Process?
        init(config: MCPServerConfig, client: Client, process: Process?) {
            self.config = config
            self.client = client
            self.process = process
        }
        var alive: Bool { process?.isRunning ?? true }
        func close() async {
            await client.disconnect()
            if let p = process, p.isRunning {
                kill(p.processIdentifier, SIGKILL)
                p.waitUntilExit()
            }
        }
    }

    private var connections: [String: Connection] = [:]
    /// Calls in flight and the last use, by server: a connection unused for `idleClose` is
    /// closed, so that a daemon does not keep a tool server's process for ever.
    private var inFlight: [String: Int] = [:]
    private var lastUse: [String: ContinuousClock.Instant] = [:]
    static let idleClose: Duration = .seconds(30)

    private func begin(_ name: String) {
        inFlight[name, default: 0] += 1
    }

    private func end(_ name: String) {
        inFlight[name, default: 1] -= 1
        let now = ContinuousClock.now
        lastUse[name] = now
        Task {
            try? await Task.sleep(for: Self.idleClose)
            await self.closeIfIdle(name, since: now)
        }
    }

    private func closeIfIdle(_ name: String, since: ContinuousClock.Instant) async {
        guard inFlight[name, default: 0] == 0, lastUse[name] == since else { return }
        await drop(name)
    }

    private func connection(_ config: MCPServerConfig) async throws -> Connection {
        if let c = connections[config.key], c.alive { return c }
        if let old = connections.removeValue(forKey: config.key) { await old.close() }
        let client = Client(name: "cairn", version: "0.1.0")
        var process: Process? = nil
        let transport: any Transport
        if let command = config.command {
            // What the daemon executes must not be writable by anyone but the service user:
            // the file and its directory, as named and as a symbolic link resolves them.
            guard let real = realpath(command[0], nil) else {
                throw StepError.nonRetryable("mcp_servers.\(config.name): \(command[0]): \(String(cString: strerror(errno)))", type: "mcp_configuration")
            }
            let resolved = String(cString: real)
            free(real)
            guard access(resolved, X_OK) == 0 else {
                throw StepError.nonRetryable("mcp_servers.\(config.name): \(command[0]) is not executable", type: "mcp_configuration")
            }
            for path in Set([command[0], FilePath(command[0]).removingLastComponent().string, resolved, FilePath(resolved).removingLastComponent().string]).sorted() {
                if let problem = Spool.trustedFileProblem(path) {
                    throw StepError.nonRetryable("mcp_servers.\(config.name): \(path) \(problem): the daemon will not execute it (\(Spool.trustFixAdvice))", type: "mcp_untrusted")
                }
            }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: command[0])
            p.arguments = Array(command.dropFirst())
            var env = ProcessInfo.processInfo.environment
            for (k, v) in config.env { env[k] = v }
            p.environment = env
            let toServer = Pipe(), fromServer = Pipe()
            p.standardInput = toServer
            p.standardOutput = fromServer
            p.standardError = FileHandle.standardError
            // A server that exits: its client is disconnected at once, so that a request it
            // left unanswered fails now (retryable) instead of waiting for the timeout (the
            // SDK's client does not fail pending requests when its input ends).
            p.terminationHandler = { _ in Task { await client.disconnect() } }
            do {
                try p.run()
            } catch {
                throw StepError("mcp_servers.\(config.name): cannot start \(command[0]): \(error.localizedDescription)", type: "mcp_unavailable")
            }
            process = p
            transport = PipeTransport(input: fromServer.fileHandleForReading.fileDescriptor, output: toServer.fileHandleForWriting.fileDescriptor)
        } else {
            transport = HTTPClientTransport(endpoint: config.url!, streaming: false)
        }
        do {
            _ = try await Self.within(config.timeout, what: "connecting to MCP server '\(config.name)'", onTimeout: { [process] in
                if let p = process, p.isRunning { kill(p.processIdentifier, SIGKILL) }
                await client.disconnect()
            }) {
                try await client.connect(transport: transport)
            }
        } catch {
            let c = Connection(config: config, client: client, process: process)
            await c.close()
            throw Self.unavailable(config, error)
        }
        let c = Connection(config: config, client: client, process: process)
        connections[config.key] = c
        return c
    }

    /// The server's tools as JSON (`[{"name", "description", "input_schema"}]`), every page.
    func listTools(_ config: MCPServerConfig) async throws -> JSONValue {
        begin(config.key)
        defer { end(config.key) }
        let c = try await connection(config)
        do {
            var all: [JSONValue] = []
            var cursor: String? = nil
            repeat {
                let page = try await Self.within(config.timeout, what: "listing the tools of MCP server '\(config.name)'", onTimeout: { await c.close() }) { [cursor] in
                    try await c.client.listTools(cursor: cursor)
                }
                for t in page.tools {
                    all.append(["name": .string(t.name), "description": .string(t.description ?? ""), "input_schema": try Self.json(t.inputSchema)])
                }
                cursor = page.nextCursor
            } while cursor != nil && all.count < 10_000
            return .array(all)
        } catch {
            await drop(config.key)
            throw Self.unavailable(config, error)
        }
    }

    /// One tool call: its text (or `error: …` when the tool reports an error).
    func call(_ config: MCPServerConfig, tool: String, arguments: JSONValue, idempotencyKey: String) async throws -> JSONValue {
        let (text, isError) = try await callRaw(config, tool: tool, arguments: arguments, idempotencyKey: idempotencyKey)
        return .string(isError ? "error: \(text)" : text)
    }

    /// One tool call: its text, and whether the tool (or the protocol) reported an error.
    func callRaw(_ config: MCPServerConfig, tool: String, arguments: JSONValue, idempotencyKey: String) async throws -> (String, Bool) {
        begin(config.key)
        defer { end(config.key) }
        let c = try await connection(config)
        let args = try arguments.objectValue.map { try $0.mapValues(Self.value) }
        let meta = Metadata(additionalFields: ["cairn/idempotency_key": .string(idempotencyKey)])
        let result: (content: [MCP.Tool.Content], isError: Bool?)
        do {
            result = try await Self.within(config.timeout, what: "MCP tool '\(tool)' of server '\(config.name)'", onTimeout: { await c.close() }) {
                try await c.client.callTool(name: tool, arguments: args, meta: meta)
            }
        } catch let e as MCPError where !Self.isTransport(e) {
            // The server answered with a protocol error (unknown tool, invalid params): the
            // model called it wrongly; it is told, as for a tool error.
            return (e.localizedDescription, true)
        } catch {
            // Sent, and no answer (the server died, hung, or its connection broke): the
            // tool may have acted. An at-least-once call is sent again (the same key); an
            // at-most-once one stops at its uncertain gate for a person.
            await drop(config.key)
            throw StepOutcomeUnknown("MCP tool '\(tool)' of server '\(config.name)' was sent and did not answer: \(error.localizedDescription)")
        }
        let text = result.content.map { c -> String in
            switch c {
            case .text(let t, _, _): return t
            case .image(_, let mime, _, _): return "[image \(mime)]"
            case .audio(_, let mime, _, _): return "[audio \(mime)]"
            case .resource(let r, _, _): return r.text ?? "[resource \(r.uri)]"
            case .resourceLink(let uri, let name, _, _, _, _): return "[\(name): \(uri)]"
            }
        }.joined(separator: "\n")
        return (text, result.isError == true)
    }

    private func drop(_ name: String) async {
        if let c = connections.removeValue(forKey: name) { await c.close() }
    }

    static func isTransport(_ e: MCPError) -> Bool {
        switch e {
        case .connectionClosed, .transportError, .internalError: return true
        default: return false
        }
    }

    static func unavailable(_ config: MCPServerConfig, _ error: any Error) -> any Error {
        if error is StepError { return error }
        return StepError("MCP server '\(config.name)' failed: \(error.localizedDescription)", type: "mcp_unavailable")
    }

    final class TimeoutFlag: Sendable {
        let value = Atomic<Bool>(false)
    }

    struct TimedOut: Error, LocalizedError {
        var what: String
        var errorDescription: String? { "\(what) took too long" }
    }

    /// `body`, or TimedOut after `limit`. On the timeout `onTimeout` runs first — it must
    /// make `body` return (by disconnecting the client, whose pending requests then fail):
    /// a task group waits for every child, and a request awaiting an answer that never
    /// comes does not end by cancellation alone.
    static func within<T: Sendable>(_ limit: Duration, what: String, onTimeout: @escaping @Sendable () async -> Void, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let timedOut = TimeoutFlag()
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: limit)
                timedOut.value.store(true, ordering: .sequentiallyConsistent)
                await onTimeout()
                return nil
            }
            defer { group.cancelAll() }
            do {
                if let first = try await group.next(), let value = first { return value }
            } catch where !timedOut.value.load(ordering: .sequentiallyConsistent) {
                throw error
            } catch {}
            throw TimedOut(what: "\(what) (over \(limit))")
        }
    }

    static func json(_ v: MCP.Value) throws -> JSONValue { try JSONValue.parse(MCPValues.text(v)) }
    static func value(_ v: JSONValue) throws -> MCP.Value { try MCPValues.value(v.compactText()) }
}
