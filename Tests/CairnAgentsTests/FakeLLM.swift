import CairnSpool
import Foundation
import SystemPackage

/// The fake LLM server (Fixtures/fake_llm.py) on 127.0.0.1, a fresh one per test.
final class FakeLLM: @unchecked Sendable {
    let process = Process()
    let dir: String
    let port: Int

    static var script: String { FilePath(#filePath).removingLastComponent().appending("Fixtures/fake_llm.py").string }

    init(queue: [JSONValue] = [], default step: JSONValue = ["reply": ["content": "ok"]]) throws {
        dir = NSTemporaryDirectory() + "fake-llm-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", Self.script, dir + "/port", dir + "/plan.json", dir + "/requests.jsonl"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try Self.writePlan(dir, queue, step)
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        var p: Int? = nil
        while p == nil && Date() < deadline {
            p = (try? String(contentsOfFile: dir + "/port", encoding: .utf8)).flatMap { Int($0) }
            if p == nil { usleep(10_000) }
        }
        guard let p else { throw SpoolError(.io, "the fake LLM server did not start") }
        port = p
    }

    static func writePlan(_ dir: String, _ queue: [JSONValue], _ step: JSONValue) throws {
        try (["queue": .array(queue), "default": step] as JSONValue).canonicalText().write(toFile: dir + "/plan.json", atomically: true, encoding: .utf8)
    }

    func plan(_ queue: [JSONValue], default step: JSONValue = ["reply": ["content": "ok"]]) throws {
        try Self.writePlan(dir, queue, step)
    }

    var baseURL: String { "http://127.0.0.1:\(port)/v1" }

    /// Every request received, in order.
    var requests: [JSONValue] {
        ((try? String(contentsOfFile: dir + "/requests.jsonl", encoding: .utf8)) ?? "").split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
    }

    deinit {
        // Not Process.waitUntilExit: it waits on a run loop that async tests do not spin.
        let pid = process.processIdentifier
        kill(pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
        try? FileManager.default.removeItem(atPath: dir)
    }
}
