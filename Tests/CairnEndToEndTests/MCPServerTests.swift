import CairnSpool
import CairnTesting
import Foundation
import MCP
import Synchronization
import SystemPackage
import Testing

/// Issue 14: `cairn mcp` driven by the MCP Swift SDK's own client over stdio — as an
/// assistant would run it: tools listed, runs listed, a waiting run approved (the journal
/// records the Unix user who ran `cairn mcp`), and a resource-updated notification when the
/// run completes. As root (CI), with real users: a service user runs the daemon, alice
/// approves through MCP, and bob — in the group, not among the gate's approvers — is refused
/// exactly as `cairn approve` refuses him.
@Suite(.serialized) struct MCPServerTests {
    /// `cairn-fixtures mcp` (as `user`, when given) with the SDK's client on its stdio.
    final class Session: Sendable {
        let process: Process
        let client: Client
        let updated = Mutex<[String]>([])

        init(spool: String, asUser user: String?) async throws {
            let p = Process()
            if let user {
                p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
                p.arguments = ["--reuid=\(user)", "--regid=\(user)", "--init-groups", "--", Binary.path("cairn-fixtures"), "mcp", "--spool", spool]
            } else {
                p.executableURL = URL(fileURLWithPath: Binary.path("cairn-fixtures"))
                p.arguments = ["mcp", "--spool", spool]
            }
            let toServer = Pipe(), fromServer = Pipe()
            p.standardInput = toServer
            p.standardOutput = fromServer
            p.standardError = FileHandle.standardError
            try p.run()
            process = p
            client = Client(name: "cairn-tests", version: "1.0")
            let transport = StdioTransport(input: FileDescriptor(rawValue: fromServer.fileHandleForReading.fileDescriptor),
                                           output: FileDescriptor(rawValue: toServer.fileHandleForWriting.fileDescriptor))
            let info = try await client.connect(transport: transport)
            #expect(info.serverInfo.name == "cairn" && info.capabilities.resources?.subscribe == true)
            await client.onNotification(ResourceUpdatedNotification.self) { [self] message in
                self.updated.withLock { $0.append(message.params.uri) }
            }
        }

        func call(_ tool: String, _ args: [String: Value]) async throws -> (text: String, isError: Bool) {
            let (content, isError) = try await client.callTool(name: tool, arguments: args)
            let text = content.compactMap { c -> String? in if case .text(let t, _, _) = c { return t } else { return nil } }.joined(separator: "\n")
            return (text, isError ?? false)
        }

        func close() async {
            await client.disconnect()
            process.terminate()
            process.waitUntilExit()
        }
    }

    static var asRoot: Bool { getuid() == 0 }

    @Test func anAssistantListsApprovesAndIsToldWhenTheRunCompletes() async throws {
        // As root: the service spool of AuthorizationTests (gate "go" narrowed to alice).
        let (t, spool): (TempSpool, String) = Self.asRoot ? try AuthorizationTests.serviceSpool() : { let t = try! TempSpool(); return (t, t.spool.root.string) }()
        let daemon = try await DaemonProcess(spool: t.spool, asUser: Self.asRoot ? AuthorizationTests.service : nil)
        defer { daemon.stopBlocking() }
        let approver = Self.asRoot ? AuthorizationTests.alice : nil
        let me = Self.asRoot ? AuthorizationTests.alice : (getpwuid(getuid()).map { String(cString: $0.pointee.pw_name) } ?? "?")

        let session = try await Session(spool: spool, asUser: approver)
        // The tools, each with an input schema.
        let (tools, _) = try await session.client.listTools()
        #expect(Set(tools.map(\.name)) == ["list_runs", "show_run", "why", "submit", "approve", "reject", "signal", "cancel", "pause", "resume", "retry"])
        #expect(tools.allSatisfy { $0.inputSchema.objectValue?["type"] == .string("object") })
        #expect(tools.first { $0.name == "list_runs" }?.annotations.readOnlyHint == true)

        // Submit through MCP (as alice: through the inbox, as `cairn submit` does for her).
        let submitted = try await session.call("submit", ["workflow": "gate", "id": "mcp-1", "input": ["who": "m"]])
        #expect(!submitted.isError && submitted.text.hasPrefix("mcp-1"), "\(submitted.text)")
        try await t.waitFor("mcp-1", .waiting, timeout: 30)

        let listed = try await session.call("list_runs", ["status": ["waiting"]])
        #expect(!listed.isError && listed.text.contains("\"mcp-1\"") && listed.text.contains("\"gate\": \"go\""), "\(listed.text)")
        let why = try await session.call("why", ["run": "mcp-1"])
        #expect(why.text.contains("waiting for approval 'go'"), "\(why.text)")

        // Subscribed before the decision: told when the run changes, without asking.
        try await session.client.subscribeToResource(uri: "cairn://runs/mcp-1/state")
        let state = try await session.client.readResource(uri: "cairn://runs/mcp-1/state")
        #expect(state.first?.text?.contains("\"waiting\"") == true)

        // Wrong arguments: an MCP error naming the problem; a CLI refusal: a tool error with
        // the CLI's one line.
        await #expect(throws: MCPError.self) { _ = try await session.call("approve", ["run": "mcp-1"]) }
        await #expect(throws: MCPError.self) { _ = try await session.call("approve", ["run": "mcp-1", "gate": "go", "force": true]) }
        await #expect(throws: MCPError.self) { _ = try await session.call("approve", ["run": "--spool", "gate": "go"]) }
        let early = try await session.call("approve", ["run": "mcp-1", "gate": "later"])
        #expect(early.isError && early.text.hasPrefix("cairn: run mcp-1 has not requested gate 'later'"), "\(early.text)")

        if Self.asRoot {
            // bob is in the group but not among the gate's approvers: refused, nothing dropped.
            let bob = try await Session(spool: spool, asUser: AuthorizationTests.bob)
            let refused = try await bob.call("approve", ["run": "mcp-1", "gate": "go"])
            #expect(refused.isError && refused.text.contains("approvers"), "\(refused.text)")
            await bob.close()
            #expect(!FileManager.default.fileExists(atPath: "\(spool)/runs/mcp-1/approvals/go.approved"))
        }

        let approved = try await session.call("approve", ["run": "mcp-1", "gate": "go", "comment": "via MCP", "value": ["ok": true]])
        #expect(!approved.isError && approved.text.hasPrefix("approved mcp-1 go"), "\(approved.text)")
        try await t.waitFor("mcp-1", .completed, timeout: 30)
        try await waitUntil("a resource-updated notification for the run's state") {
            session.updated.withLock { $0.contains("cairn://runs/mcp-1/state") }
        }
        // The decision is the person's, as if dropped by hand: owner and comment in the journal.
        let decision = try t.spool.journal("mcp-1").load().first { $0.kind == .approval && $0.decision == .approved }
        #expect(decision?.decidedBy?.user == me, "\(String(describing: decision))")
        #expect(decision?.comment == "via MCP")
        let journal = try await session.client.readResource(uri: "cairn://runs/mcp-1/journal")
        #expect(journal.first?.text?.contains("\"complete\"") == true)
        // A resource of a run that is not there: an MCP error.
        await #expect(throws: MCPError.self) { _ = try await session.client.readResource(uri: "cairn://runs/no-such-run/state") }
        await session.close()
    }

    /// Raw JSON-RPC lines to `cairn mcp`, stdin closed after them; every line it printed.
    static func rawSession(_ spool: String, _ lines: [String]) throws -> [JSONValue] {
        let initialize = #"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#
        let initialized = #"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
        let r = try Binary.run("cairn-fixtures", ["mcp", "--spool", spool], stdin: ([initialize, initialized] + lines).joined(separator: "\n") + "\n")
        return r.stdout.split(separator: "\n").map { (try? JSONValue.parse(String($0))) ?? .string(String($0)) }
    }

    /// Found by an attack: a key twice in the arguments (the SDK's decoder kept the first,
    /// another parser the last), a NUL (cut the value short on the command line), a negative
    /// limit (became an option), an argument over the kernel's limit (an internal error), and
    /// a client that closes stdin right after a request (the approval was carried out and its
    /// answer never sent).
    @Test func hostileArgumentsAreRefusedAndNothingIsLeftUnanswered() async throws {
        let t = try TempSpool()
        let spool = t.spool.root.string
        for id in ["dupA", "dupB", "closeN"] {
            _ = try Binary.run("cairn-fixtures", ["submit", "gate", "--id", id, "--spool", spool], stdin: nil)
            _ = try Binary.run("cairn-fixtures", ["advance", id, "--spool", spool])
        }
        func call(_ id: Int, _ tool: String, _ args: String) -> String {
            #"{"jsonrpc":"2.0","id":\#(id),"method":"tools/call","params":{"name":"\#(tool)","arguments":\#(args)}}"#
        }
        let long = String(repeating: "x", count: 200_000)
        let replies = try Self.rawSession(spool, [
            call(1, "approve", #"{"run":"dupA","gate":"go","run":"dupB"}"#),
            call(2, "why", #"{"run":"dupA\u0000/../../x"}"#),
            call(3, "list_runs", #"{"limit":-1}"#),
            call(4, "reject", #"{"run":"dupA","gate":"go","reason":"\#(long)"}"#),
            call(5, "approve", #"{"run":"closeN","gate":"go","comment":"last"}"#),
        ])
        func reply(_ id: Int) -> JSONValue? { replies.first { $0["id"]?.intValue == Int64(id) } }
        #expect(reply(1)?["error"]?["code"] == -32600 && (reply(1)?["error"]?["message"]?.stringValue ?? "").contains("twice"), "\(String(describing: reply(1)))")
        for id in [2, 3, 4] {
            #expect(reply(id)?["error"]?["code"] == -32602, "\(id): \(String(describing: reply(id)))")
        }
        // Nothing was decided by the refused calls; the last one was, and was answered.
        #expect(t.status("dupA") == .waiting && t.status("dupB") == .waiting)
        #expect(reply(5)?["result"]?["isError"] == false, "answered before exiting: \(replies)")
        #expect(FileManager.default.fileExists(atPath: t.spool.run("closeN").approvalsDirectory.appending("go.approved").string))
        #expect(replies.allSatisfy { $0.objectValue != nil }, "nothing but JSON-RPC on stdout: \(replies)")
    }
}
