import Cairn
import CairnSpool
import Foundation

// Workflows for the tests of the docs' operational promises (Tests/CairnEndToEndTests/
// PromiseTests.swift): a saga whose compensation is retried and killed mid-way, and a step
// that lingers while a file exists (shutdown with executions in flight).

/// Books a, b and c (each with an undo), then fails: the undos run in reverse. The first
/// try of undo-b throws (so it is retried in process); undo-a, the first time, does its
/// effect and then SIGKILLs its own process (a crash during compensation).
struct Saga: Workflow {
    static let name = "saga"

    struct Input: Codable, Sendable {
        var effects: String
        var crash: Bool
    }

    func run(_ ctx: WorkflowContext, input: Input) async throws -> String {
        for item in ["a", "b", "c"] {
            let _: Bool = try await ctx.step("book-\(item)") { key in
                try effect(input.effects, "book-\(item)", key)
                return true
            }
            ctx.compensate("undo-\(item)") {
                try effect(input.effects, "undo-\(item)", "-")
                let marker = input.effects + ".undo-\(item).once"
                guard !FileManager.default.fileExists(atPath: marker) else { return }
                if item == "b" {
                    _ = FileManager.default.createFile(atPath: marker, contents: nil)
                    throw StepError("the hotel's cancellation service is down")
                }
                if item == "a" && input.crash {
                    _ = FileManager.default.createFile(atPath: marker, contents: nil)
                    kill(getpid(), SIGKILL)
                    while true { pause() }
                }
            }
        }
        let _: Bool = try await ctx.step("charge", retry: .none) { _ in
            throw StepError.nonRetryable("card declined")
        }
        return "booked"
    }
}

/// One step that logs "start TAG", lingers while the file `hold` exists (at most 60 s), logs
/// "end TAG"; then waits for the event "go" and returns the tag.
struct Linger: Workflow {
    static let name = "linger"

    struct Input: Codable, Sendable {
        var effects: String
        var tag: String
        var hold: String
    }

    func run(_ ctx: WorkflowContext, input: Input) async throws -> String {
        let tag: String = try await ctx.step("linger") { _ in
            try effect(input.effects, "start", input.tag)
            let deadline = Date().addingTimeInterval(60)
            while FileManager.default.fileExists(atPath: input.hold) && Date() < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            try effect(input.effects, "end", input.tag)
            return input.tag
        }
        _ = try await ctx.waitForEvent("go")
        return tag
    }
}
