import Cairn
import CairnAgents
import CairnSpool
import Foundation

// The soak's Swift workflows (Tests/CairnEndToEndTests/SoakTests.swift, `make soak`): every
// kind of durable operation in one run, so that a daemon SIGKILLed at a random moment lands
// in each of them. Side effects append "LABEL KEY" to SPOOL/soak-effects.log (the spool a
// run executes in, so a restored copy counts its own).

/// A step, a recorded time, a durable sleep, a parallel group, a child run, a model call, a
/// person's approval at "go", an event "ping", an at-most-once payment.
struct Soak: Workflow {
    static let name = "soak"
    struct Input: Codable, Sendable {
        var n: Int
        var napMs: Int
        var model: String

        enum CodingKeys: String, CodingKey {
            case n
            case napMs = "nap_ms"
            case model
        }
    }

    func run(_ ctx: WorkflowContext, input: Input) async throws -> JSONValue {
        let effects = ctx.spoolRoot.appending("soak-effects.log").string
        let a: Int = try await ctx.step("a") { key in
            try await Task.sleep(for: .milliseconds(20))
            try effect(effects, "a", key)
            return input.n
        }
        _ = ctx.now("t0")
        try await ctx.sleep("nap", for: .milliseconds(Int64(input.napMs)))
        let parts = try await ctx.parallel("part", [1, 2, 3], maxConcurrency: 2) { i, key in
            try await Task.sleep(for: .milliseconds(10))
            try effect(effects, "part", key)
            return i * input.n
        }
        let kid = try await ctx.child("kid", SoakChild.self, input: input.n)
        let answer = try await ctx.llm("ask", model: input.model, messages: [.user("soak run \(input.n)")])
        let decision = try await ctx.approval("go", request: .init(summary: "soak \(input.n)?"))
        let ping = try await ctx.waitForEvent("ping") ?? .null
        let paid: Bool = try await ctx.step("pay", semantics: .atMostOnce) { key in
            try effect(effects, "pay", key)
            return true
        }
        return ["a": .int(Int64(a)), "parts": .int(Int64(parts.reduce(0, +))), "kid": .int(Int64(kid)),
                "answer": .string(answer.content), "approved": .bool(decision.approved), "ping": ping, "paid": .bool(paid)]
    }
}

/// The soak's child: two steps.
struct SoakChild: Workflow {
    static let name = "soak-child"
    func run(_ ctx: WorkflowContext, input: Int) async throws -> Int {
        let effects = ctx.spoolRoot.appending("soak-effects.log").string
        let x: Int = try await ctx.step("x") { key in
            try effect(effects, "x", key)
            return input + 1
        }
        return try await ctx.step("y") { key in
            try await Task.sleep(for: .milliseconds(15))
            try effect(effects, "y", key)
            return x * 2
        }
    }
}
