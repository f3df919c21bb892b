import Cairn
import CairnSpool
import Foundation

// A workflow for the tests of the docs' operational promises (Tests/CairnEndToEndTests/
// PromiseTests.swift): a saga whose compensation is retried and killed mid-way.

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
