import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// The fake LLM server of CairnAgentsTests, started from here for the binary's tests.
final class FakeLLMProcess {
    let process = Process()
    let dir = NSTemporaryDirectory() + "fake-llm-e2e-" + UUID().uuidString
    var port = 0

    init(queue: [JSONValue], defaultStep: JSONValue = ["reply": ["content": "default"]]) async throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try (["queue": .array(queue), "default": defaultStep] as JSONValue).canonicalText().write(toFile: dir + "/plan.json", atomically: true, encoding: .utf8)
        let script = FilePath(#filePath).removingLastComponent().removingLastComponent().appending("CairnAgentsTests/Fixtures/fake_llm.py").string
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, dir + "/port", dir + "/plan.json", dir + "/requests.jsonl"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        try await waitUntil("fake LLM server") {
            port = (try? String(contentsOfFile: dir + "/port", encoding: .utf8)).flatMap { Int($0) } ?? 0
            return port > 0
        }
    }

    var requests: [JSONValue] {
        ((try? String(contentsOfFile: dir + "/requests.jsonl", encoding: .utf8)) ?? "").split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        var st: Int32 = 0
        _ = waitpid(process.processIdentifier, &st, 0)
        try? FileManager.default.removeItem(atPath: dir)
    }
}

@Suite(.serialized) struct AgentCrashTests {
    func turn(_ content: String, _ tool: String? = nil, _ args: JSONValue = [:], delay: Double = 0) -> JSONValue {
        var r: [String: JSONValue] = ["content": .string(content), "usage": ["input": 100, "output": 10]]
        if let tool { r["tool_calls"] = [["name": .string(tool), "arguments": args]] }
        return ["delay": .double(delay), "reply": .object(r)]
    }

    @Test func killedMidAgentResendsNothingAnsweredAndRunsNoToolTwice() async throws {
        let send: JSONValue = ["to": "ann@example.com", "subject": "Re: lamp", "body": "Sorry! (ticket T-9)"]
        let fake = try await FakeLLMProcess(queue: [
            turn("looking up", "lookup_customer", ["email": "ann@example.com"]),
            turn("drafting", "send_reply", send, delay: 60),  // in flight when the daemon dies (killed as soon as it is seen)
            turn("drafting", "send_reply", send),            // the same turn, sent again after the restart
            turn("done: replied"),
        ])
        let t = try TempSpool()
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["llm"] = ["providers": ["fake": ["type": "openai", "base_url": .string("http://127.0.0.1:\(fake.port)/v1"), "api_key_env": "FAKE_KEY"]]]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        let env = ["FAKE_KEY": "sk-e2e-secret"]
        var d = try await DaemonProcess(spool: t.spool, env: env)
        let r = try t.submit("triage-ticket", input: ["ticket": ["id": "T-9", "from": "ann@example.com", "subject": "lamp", "body": "broken"], "models": ["fake:m"]] as JSONValue)
        try await waitUntil("turn 2 in flight") {
            try fake.requests.count == 2 && t.journalSummary(r).contains("llm:triage.turn-1")
        }
        await d.kill9()
        let firstLog = d.log
        d = try await DaemonProcess(spool: t.spool, env: env)
        try await t.waitFor(r, .waiting, timeout: 20)
        let gate = try #require(try t.state(r).waitingFor?["gate"]?.stringValue)
        try t.drop("approvals/\(gate).approved", in: r)
        try await t.waitFor(r, .completed, timeout: 20)
        await d.stop()

        let reqs = fake.requests
        let turns = reqs.map { $0["body"]?["messages"]?.arrayValue?.count ?? 0 }
        #expect(turns == [2, 4, 4, 6], "requests by conversation length: \(turns)")  // turn 1 was never re-sent
        #expect(reqs.allSatisfy { $0["auth"] == true })
        let outbox = ((try? String(contentsOfFile: t.spool.root.appending("outbox.jsonl").string, encoding: .utf8)) ?? "").split(separator: "\n")
        #expect(outbox.count == 1)
        let summary = try t.journalSummary(r)
        #expect(summary.filter { $0 == "step:triage.tool-1-1-lookup_customer" }.count == 1)
        #expect(summary.filter { $0.hasPrefix("llm:") }.count == 3)
        let state = try t.state(r)
        #expect(state.tokens?["input"] == 300 && state.tokens?["output"] == 30)
        #expect(state.tokens?["saved"]?.intValue ?? 0 > 0)
        // The key reached the server and nothing else.
        let everything = (FileManager.default.enumerator(atPath: t.spool.root.string)?.allObjects as? [String] ?? [])
            .compactMap { try? String(contentsOfFile: t.spool.root.appending($0).string, encoding: .utf8) }.joined()
        #expect(!everything.contains("sk-e2e-secret"))
        // Nor the daemons' logs (at debug level).
        #expect(firstLog.contains(r) && d.log.contains(r), "the daemons logged nothing about the run")
        #expect(!firstLog.contains("sk-e2e-secret") && !d.log.contains("sk-e2e-secret"))
    }

    /// Issue 16: the daemon dies between a rejected answer (the triage's validator: a reply
    /// must name the ticket) and its repair. After the restart only the repair is sent — the
    /// rejected request is not sent again — and the journal tells the story.
    @Test func killedBetweenARejectedAnswerAndItsRepairResendsOnlyTheRepair() async throws {
        let fake = try await FakeLLMProcess(queue: [
            turn("looking up", "lookup_customer", ["email": "ann@example.com"]),
            turn("drafting", "send_reply", ["to": "ann@example.com", "subject": "Re: lamp", "body": "Sorry!"]),
            turn("drafting again", "send_reply", ["to": "ann@example.com", "subject": "Re: lamp", "body": "Sorry! (ticket T-9)"]),
            turn("done: replied"),
        ])
        let t = try TempSpool()
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["llm"] = ["providers": ["fake": ["type": "openai", "base_url": .string("http://127.0.0.1:\(fake.port)/v1"), "api_key_env": "FAKE_KEY"]]]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        let env = ["FAKE_KEY": "sk-e2e-secret"]
        let d1 = try await DaemonProcess(spool: t.spool, env: env.merging(["CAIRN_CRASH_AT": "llm.after-rejected"]) { a, _ in a })
        let r = try t.submit("triage-ticket", input: ["ticket": ["id": "T-9", "from": "ann@example.com", "subject": "lamp", "body": "broken"], "models": ["fake:m"]] as JSONValue)
        try await waitUntil("the daemon died after recording the rejection", timeout: 30) { !d1.process.isRunning || DaemonProcess.isZombie(d1.pid) }
        await d1.exited()
        #expect(fake.requests.count == 2, "the repair was not sent before the crash")
        let d = try await DaemonProcess(spool: t.spool, env: env)
        try await t.waitFor(r, .waiting, timeout: 20)
        let gate = try #require(try t.state(r).waitingFor?["gate"]?.stringValue)
        try t.drop("approvals/\(gate).approved", in: r)
        try await t.waitFor(r, .completed, timeout: 20)
        await d.stop()

        let reqs = fake.requests
        let turns = reqs.map { $0["body"]?["messages"]?.arrayValue?.count ?? 0 }
        #expect(turns == [2, 4, 6, 6], "requests by conversation length: \(turns)")  // the rejected turn was not re-sent
        let repair = reqs[2]["body"]?["messages"]?.arrayValue ?? []
        #expect(repair.last?["content"]?.stringValue?.contains("must name the ticket's id (T-9)") == true, "\(repair)")
        let outbox = ((try? String(contentsOfFile: t.spool.root.appending("outbox.jsonl").string, encoding: .utf8)) ?? "").split(separator: "\n")
        #expect(outbox.count == 1 && outbox[0].contains("T-9"), "only the repaired reply was sent: \(outbox)")
        let turn1 = try #require(try t.spool.journal(r).load().last { $0.kind == "llm" && $0.name == "triage.turn-2" })
        #expect(turn1.data?["repairs"] == 1 && turn1.data?["attempts"]?.arrayValue?.first?["status"] == "invalid_answer", "\(String(describing: turn1.data))")
        #expect(try t.state(r).tokens?["rejected"] == 110)
    }

    @Test func demoReachesTheApprovalAndCompletesAfterATouch() async throws {
        let t = try TempSpool()
        let root = t.path.appending("demo-spool").string
        let started = try Binary.start("cairn", ["demo", "--spool", root, "--exit-when-done"])
        var refund = ""
        try await waitUntil("the demo's approval prompt", timeout: 30) {
            let runs = (try? FileManager.default.contentsOfDirectory(atPath: root + "/runs")) ?? []
            refund = runs.first { FileManager.default.fileExists(atPath: "\(root)/runs/\($0)/approvals/issue-refund.request.json") } ?? ""
            guard !refund.isEmpty, let state = try? DurableFile.readJSON(FilePath("\(root)/runs/\(refund)/state.json")) else { return false }
            return state["status"] == "waiting"
        }
        _ = FileManager.default.createFile(atPath: "\(root)/runs/\(refund)/approvals/issue-refund.approved", contents: nil)
        let r = await Binary.finish(started)
        #expect(r.code == 0, "\(r.stderr)")
        #expect(r.stdout.contains("is waiting for your approval"))
        #expect(r.stdout.contains("touch \(root)/runs/\(refund)/approvals/issue-refund.approved"))
        #expect(r.stdout.contains("✓ \(refund) completed"))
        #expect(r.stderr.contains("run completed"))
    }
}
