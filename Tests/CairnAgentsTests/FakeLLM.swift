import CairnSpool
import Foundation
import SystemPackage

/// The fake LLM server (Fixtures/fake_llm.py) on 127.0.0.1, a fresh one per test.
/// `start` waits for it without blocking a thread of the cooperative pool (many tests start
/// servers at once on a 2-core machine; blocking waits would stall every other test's
/// continuations, and with them any timing a test measures).
final class FakeLLM: @unchecked Sendable {
    let process = Process()
    let dir: String
    private(set) var port = 0

    static func start(queue: [JSONValue] = [], default step: JSONValue = ["reply": ["content": "ok"]]) async throws -> FakeLLM {
        let f = try FakeLLM(launching: queue, default: step)
        // The deadline is generous and the file is looked at once more after it: a test may
        // not be resumed for a while when synchronous tests occupy the cooperative threads.
        let deadline = Date().addingTimeInterval(120)
        while true {
            let late = Date() >= deadline
            if let p = (try? String(contentsOfFile: f.dir + "/port", encoding: .utf8)).flatMap({ Int($0) }) {
                f.port = p
                return f
            }
            if late { throw SpoolError(.io, "the fake LLM server did not start") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    static var script: String { FilePath(#filePath).removingLastComponent().appending("Fixtures/fake_llm.py").string }

    private init(launching queue: [JSONValue], default step: JSONValue) throws {
        dir = NSTemporaryDirectory() + "fake-llm-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", Self.script, dir + "/port", dir + "/plan.json", dir + "/requests.jsonl"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try Self.writePlan(dir, queue, step)
        try process.run()
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
