import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Issue 14: an agent whose tools come from an MCP server (the test help desk, written with
/// the same SDK) — the triage example's MCP variant under the real daemon.
@Suite(.serialized) struct MCPAgentTests {
    func turn(_ content: String, _ tool: String? = nil, _ args: JSONValue = [:], delay: Double = 0) -> JSONValue {
        var r: [String: JSONValue] = ["content": .string(content), "usage": ["input": 100, "output": 10]]
        if let tool { r["tool_calls"] = [["name": .string(tool), "arguments": args]] }
        return ["delay": .double(delay), "reply": .object(r)]
    }

    struct Desk {
        let calls: String
        let outbox: String
        func lines(_ path: String) -> [JSONValue] {
            ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
        }
        var callLog: [JSONValue] { lines(calls) }
        var sent: [JSONValue] { lines(outbox) }
        func count(_ tool: String) -> Int { callLog.filter { $0["tool"]?.stringValue == tool }.count }
        var lists: Int { callLog.filter { $0["list"] == true }.count }
    }

    /// cairn.json with the fake LLM (when given) and the help desk as `helpdesk`.
    func configure(_ t: TempSpool, fake: FakeLLMProcess?, env extra: [String: String] = [:]) throws -> Desk {
        let desk = Desk(calls: t.path.appending("calls.jsonl").string, outbox: t.path.appending("sent.jsonl").string)
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        if let fake {
            cfg["llm"] = ["providers": ["fake": ["type": "openai", "base_url": .string("http://127.0.0.1:\(fake.port)/v1"), "api_key_env": "FAKE_KEY"]]]
        }
        var env: [String: JSONValue] = ["HELPDESK_CALLS": .string(desk.calls), "HELPDESK_OUTBOX": .string(desk.outbox)]
        for (k, v) in extra { env[k] = .string(v) }
        cfg["mcp_servers"] = ["helpdesk": ["command": [.string(Binary.path("cairn-mcp-fixture"))], "env": .object(env), "timeout_seconds": 30]]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        return desk
    }

    static let ticket: JSONValue = ["id": "T-9", "from": "ann@example.com", "subject": "lamp", "body": "broken"]

    @Test func killedMidAgentCallsNoMCPToolTwice() async throws {
        let send: JSONValue = ["to": "ann@example.com", "subject": "Re: lamp", "body": "Sorry! (ticket T-9)"]
        let fake = try await FakeLLMProcess(queue: [
            turn("looking up", "lookup_customer", ["email": "ann@example.com"]),
            turn("drafting", "send_reply", send),
            turn("done: replied", delay: 150),  // in flight when the daemon dies
            turn("done: replied"),             // the same turn, sent again after the restart
        ])
        let t = try TempSpool()
        let desk = try configure(t, fake: fake)
        let env = ["FAKE_KEY": "sk-e2e-secret"]
        var d = try await DaemonProcess(spool: t.spool, env: env)
        let r = try t.submit("triage-ticket", input: ["ticket": Self.ticket, "models": ["fake:m"], "tools_server": "helpdesk"] as JSONValue)
        try await t.waitFor(r, .waiting, timeout: 30)
        let gate = try #require(try t.state(r).waitingFor?["gate"]?.stringValue)
        #expect(gate.hasSuffix("send_reply"), "the MCP tool asks a person first, as the Swift tool does: \(gate)")
        // The proposed call is in the request, as for a Swift tool.
        let request = try DurableFile.readJSON(t.spool.run(r).approvalsDirectory.appending("\(gate).request.json"))
        #expect(request["details"]?["tool"] == "send_reply" && request["details"]?["arguments"]?["to"] == "ann@example.com", "\(request)")
        try t.drop("approvals/\(gate).approved", in: r)
        try await waitUntil("turn 3 in flight", timeout: 30) { fake.requests.count == 3 && desk.sent.count == 1 }
        // While the model thinks, the tool server's connection is unused: it is closed after
        // 30 s (docs/mcp.md), its process gone, the daemon running on — not at once, not never.
        let lastCall = ContinuousClock.now
        func servers() throws -> Int {
            try Binary.run("/usr/bin/pgrep", ["-P", String(d.pid), "-f", "cairn-mcp-fixture"]).stdout.split(separator: "\n").count
        }
        #expect(try servers() == 1, "the daemon's connection to the tool server is open after a call")
        try await waitUntil("the idle tool server closed", timeout: 110) { (try? servers()) == 0 }
        let idle = ContinuousClock.now - lastCall
        #expect(idle >= .seconds(25), "closed after \(idle), before 30 s unused")
        #expect(kill(d.pid, 0) == 0 && fake.requests.count == 3, "the daemon runs on, turn 3 still in flight")
        await d.kill9()
        // The restarted daemon counts the tokens its replay did not spend again.
        let prom = t.path.appending("m.prom").string
        d = try await DaemonProcess(spool: t.spool, env: env, args: ["--metrics-file", prom])
        try await t.waitFor(r, .completed, timeout: 30)
        _ = await d.stop()
        let saved = try #require(try t.state(r).tokens?["saved"]?.intValue)
        let metrics = MetricsTests.parse((try? String(contentsOfFile: prom, encoding: .utf8)) ?? "")
        #expect(saved > 0 && MetricsTests.sum(metrics, "cairn_llm_tokens_saved_total", ["workflow=\"triage-ticket\""]) == Double(saved), "state.json says \(saved); \(metrics.filter { $0.key.contains("tokens") })")

        // Each tool called once, the tool list asked once: the restart replayed both calls
        // and the list from the journal.
        #expect(desk.count("lookup_customer") == 1 && desk.count("send_reply") == 1 && desk.lists == 1, "\(desk.callLog)")
        #expect(desk.sent.count == 1)
        let key = desk.sent.first?["key"]?.stringValue ?? ""
        #expect(key.hasPrefix(r), "the step's idempotency key reached the server in _meta: \(key)")
        let summary = try t.journalSummary(r)
        #expect(summary.filter { $0 == "step:mcp-tools.helpdesk" }.count == 1, "\(summary)")
        #expect(summary.contains { $0.hasPrefix("step:triage.tool-2-1-send_reply") }, "\(summary)")
        let turns = fake.requests.map { $0["body"]?["messages"]?.arrayValue?.count ?? 0 }
        #expect(turns == [2, 4, 6, 6], "requests by conversation length: \(turns)")
        // The tool results the model saw came from the server.
        let lastMessages = fake.requests.last?["body"]?["messages"]?.arrayValue ?? []
        #expect(lastMessages.contains { $0["role"] == "tool" && ($0["content"]?.stringValue ?? "").contains("\"plan\": \"pro\"") }, "\(lastMessages)")
        #expect(try t.result(r)["answer"] == "done: replied")
    }

    /// A server that dies after it was sent a call: the call may have acted. An at-least-once
    /// tool (lookup_customer) is sent again with the same key to a fresh server; an
    /// at-most-once one (send_reply) is never guessed at: the run stops at the uncertain
    /// gate, and a person's "rerun" sends it again (found by an attack: it was re-sent).
    @Test func aServerThatDiesMidCallRetriesAtLeastOnceAndAsksForAtMostOnce() async throws {
        for (tool, atMostOnce) in [("lookup_customer", false), ("send_reply", true)] {
            let t = try TempSpool()
            let flag = t.path.appending("died").string
            let desk = try configure(t, fake: nil, env: ["HELPDESK_DIE_ONCE": flag, "HELPDESK_DIE_ON": tool])
            let d = try await DaemonProcess(spool: t.spool)
            defer { d.stopBlocking() }
            // The offline canned provider: lookup, a draft, its repair, the final line.
            let r = try t.submit("triage-ticket", input: ["ticket": Self.ticket, "tools_server": "helpdesk"] as JSONValue)
            try await waitUntil("the reply's approval gate", timeout: 30) {
                let g = (try? t.state(r).waitingFor?["gate"]?.stringValue) ?? ""
                return g.hasSuffix("send_reply") && !g.hasPrefix("uncertain")
            }
            let gate = try #require(try t.state(r).waitingFor?["gate"]?.stringValue)
            try t.drop("approvals/\(gate).approved", in: r)
            if atMostOnce {
                try await waitUntil("the uncertain gate", timeout: 30) { (try? t.state(r).waitingFor?["kind"]) == "uncertain" }
                #expect(desk.count("send_reply") == 1, "not re-sent on its own: \(desk.callLog)")
                let uncertain = try #require(try t.state(r).waitingFor?["gate"]?.stringValue)
                try t.drop("approvals/\(uncertain).approved", in: r)  // empty: rerun
            }
            try await t.waitFor(r, .completed, timeout: 60)
            #expect(FileManager.default.fileExists(atPath: flag), "the server died once mid-call")
            let calls = desk.callLog.filter { $0["tool"]?.stringValue == tool }
            #expect(calls.count == 2 && calls[0]["key"] == calls[1]["key"], "sent again with the same key to a fresh server: \(calls)")
            #expect(desk.sent.count == 1, "\(desk.sent)")
        }
    }

    @Test func aMissingOrUntrustedServerFailsTheRunWithAReason() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        // No such server in cairn.json: fails at once (not retried), naming what is there.
        let r = try t.submit("triage-ticket", input: ["ticket": Self.ticket, "tools_server": "nosuch"] as JSONValue)
        try await t.waitFor(r, .failed, timeout: 30)
        let e = try #require(try t.state(r).error)
        #expect(e.type == "mcp_configuration" || e.message.contains("mcp_servers"), "\(e)")
        // A command others can write: refused before it runs.
        let exe = t.path.appending("desk").string
        #expect(try Binary.run("/bin/cp", [Binary.path("cairn-mcp-fixture"), exe]).code == 0)
        chmod(exe, 0o777)
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["mcp_servers"] = ["open": ["command": [.string(exe)]]]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        let r2 = try t.submit("triage-ticket", input: ["ticket": Self.ticket, "tools_server": "open"] as JSONValue)
        try await t.waitFor(r2, .failed, timeout: 30)
        let e2 = try #require(try t.state(r2).error)
        #expect(e2.message.contains("writable by group or others") && e2.message.contains("will not execute"), "\(e2)")
        // A symbolic link in a trusted directory to a file in a directory anyone can write:
        // judged where it leads (found by an attack: only the link's directory was checked).
        let open = t.path.appending("open").string, safe = t.path.appending("safe").string
        try FileManager.default.createDirectory(atPath: open, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: safe, withIntermediateDirectories: true)
        chmod(open, 0o777)
        chmod(safe, 0o755)
        #expect(try Binary.run("/bin/cp", [Binary.path("cairn-mcp-fixture"), open + "/desk"]).code == 0)
        chmod(open + "/desk", 0o755)
        try FileManager.default.createSymbolicLink(atPath: safe + "/desk", withDestinationPath: open + "/desk")
        cfg["mcp_servers"] = ["linked": ["command": [.string(safe + "/desk")]]]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        let r3 = try t.submit("triage-ticket", input: ["ticket": Self.ticket, "tools_server": "linked"] as JSONValue)
        try await t.waitFor(r3, .failed, timeout: 30)
        let e3 = try #require(try t.state(r3).error)
        #expect(e3.message.contains(open) && e3.message.contains("writable by group or others"), "\(e3)")
    }

    /// `cairn mcp-call` in a script: recorded, replayed when the script runs again from the
    /// top, a gate before the call that needs a person, a tool error is exit 1.
    @Test func aScriptCallsMCPToolsThroughTheHelper() async throws {
        let t = try TempSpool()
        let desk = try configure(t, fake: nil)
        let script = t.spool.workflowsDirectory.appending("desk-script").string
        try """
            #!/bin/sh
            set -e
            c=$(echo '{"email": "ann@example.com"}' | cairn mcp-call lookup helpdesk lookup_customer --args -)
            if cairn mcp-call bad helpdesk no_such_tool 2>/dev/null; then exit 9; fi
            cairn event go >/dev/null
            echo '{"to": "ann@example.com", "subject": "Re: lamp", "body": "T-9"}' | cairn mcp-call reply helpdesk send_reply --args - --approval --at-most-once >/dev/null
            echo "$c" | cairn result -

            """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        let r = try t.submit("desk-script", input: JSONValue.null)
        try await t.waitFor(r, .waiting, timeout: 30)
        #expect(try t.state(r).waitingFor?["kind"] == "event")
        _ = try Binary.cairn("signal", r, "go", spool: t.spool)
        try await waitUntil("the reply's gate", timeout: 30) { (try? t.state(r).waitingFor?["gate"]) == "reply" }
        let request = try DurableFile.readJSON(t.spool.run(r).approvalsDirectory.appending("reply.request.json"))
        #expect(request["details"]?["tool"] == "send_reply" && request["details"]?["server"] == "helpdesk", "\(request)")
        #expect(desk.count("send_reply") == 0, "nothing sent before the approval")
        try t.drop("approvals/reply.approved", in: r)
        try await t.waitFor(r, .completed, timeout: 30)
        // The script ran three times from the top; each call reached the server once.
        #expect(desk.count("lookup_customer") == 1 && desk.count("no_such_tool") == 1 && desk.count("send_reply") == 1, "\(desk.callLog)")
        #expect(desk.sent.count == 1)
        #expect(try t.result(r)["plan"] == "pro")
        let summary = try t.journalSummary(r)
        #expect(summary.contains("step:lookup") && summary.contains("step:bad") && summary.contains("step:reply"), "\(summary)")
    }

    /// A tool server reached over Streamable HTTP (`"url"` in cairn.json): a small Python
    /// server on loopback, called from a script through `cairn mcp-call`, with the key.
    @Test func aToolServerOverHTTP() async throws {
        let t = try TempSpool()
        let dir = t.path.string
        let server = try await FixtureServer("mcp_http_server.py", dir: dir, log: dir + "/http-calls.jsonl")
        defer { server.stop() }
        let port = server.port
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["mcp_servers"] = ["http-desk": ["url": .string("http://127.0.0.1:\(port)/mcp"), "timeout_seconds": 20]]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        let script = t.spool.workflowsDirectory.appending("http-script").string
        try "#!/bin/sh\nset -e\necho '{\"email\": \"ann@example.com\"}' | cairn mcp-call look http-desk lookup_customer --args - | cairn result -\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        let r = try t.submit("http-script", input: JSONValue.null)
        try await t.waitFor(r, .completed, timeout: 30)
        #expect(try t.result(r)["via"] == "http" && (try t.result(r)["plan"]) == "enterprise")
        let calls = ((try? String(contentsOfFile: dir + "/http-calls.jsonl", encoding: .utf8)) ?? "").split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
        #expect(calls.count == 1 && (calls.first?["key"]?.stringValue ?? "").hasPrefix(r), "\(calls)")
    }
}
