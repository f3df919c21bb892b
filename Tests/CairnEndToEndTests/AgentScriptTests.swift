import CairnSpool
import CairnTesting
import Foundation
import Testing

/// `cairn llm` inside script workflows, under a real daemon.
@Suite(.serialized) struct AgentScriptTests {
    func install(_ t: TempSpool, _ name: String, _ text: String) throws {
        let p = t.spool.workflowsDirectory.appending(name).string
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
    }

    func configure(_ t: TempSpool, port: Int) throws {
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["llm"] = ["providers": ["fake": ["type": "openai", "base_url": .string("http://127.0.0.1:\(port)/v1")]]]
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
    }

    /// A prompt file that is not there is an error before anything is sent.
    @Test func llmWithAMissingPromptFileFailsAndSendsNothing() throws {
        let fake = try FakeLLMProcess(queue: [])
        let t = try TempSpool()
        try configure(t, port: fake.port)
        try install(t, "ask", """
            #!/usr/bin/env bash
            set -u
            cairn llm ask --model fake:m --prompt does-not-exist.txt > answer.txt 2> error.txt
            code=$?
            printf '{"code": %s, "error": %s}' "$code" "$(jq -Rs . < error.txt)" | cairn result -
            """)
        let d = try DaemonProcess(spool: t.spool)
        let r = try t.submit("ask", input: [:] as JSONValue)
        try t.waitFor(r, .completed, timeout: 20)
        d.stop()
        let out = try t.result(r)
        #expect(out["code"] != 0, "\(out)")
        #expect(out["error"]?.stringValue?.contains("does-not-exist.txt") == true, "\(out)")
        #expect(fake.requests.isEmpty, "nothing was sent: \(fake.requests)")
    }
}
