import Cairn
import CairnCLI
import CairnSpool
import Foundation

// `cairn-fixtures`: the `cairn` CLI with the test suite's workflows registered. The crash
// tests run it against temp spools and SIGKILL it (CAIRN_CRASH_AT picks a point inside the
// durable write, or the test kills it at a random moment).

/// Appends "LABEL KEY" to the effects file: the side effect the crash tests count.
func effect(_ path: String, _ label: String, _ key: String) throws {
    try DurableFile.appendLine("\(label) \(key)", to: path)
}

struct Crashy: Workflow {
    static let name = "crashy"

    struct Input: Codable, Sendable {
        var steps: Int
        var effects: String
        var delayMs: Int?

        enum CodingKeys: String, CodingKey {
            case steps, effects
            case delayMs = "delay_ms"
        }
    }

    func run(_ ctx: WorkflowContext, input: Input) async throws -> Int {
        var total = 0
        for i in 0..<input.steps {
            total += try await ctx.step("s-\(i)") { key in
                try await Task.sleep(for: .milliseconds(input.delayMs ?? 1))
                try effect(input.effects, "s-\(i)", key)
                return i
            }
            if i == input.steps / 2 {
                let big: String = try await ctx.step("big") { key in
                    try effect(input.effects, "big", key)
                    return String(repeating: "b", count: 70_000)
                }
                total += big.count
                _ = ctx.now("midpoint")
                try await ctx.sleep("nap", for: .milliseconds(5))
                let _: Bool = try await ctx.step("pay", semantics: .atMostOnce) { key in
                    try effect(input.effects, "pay", key)
                    return true
                }
            }
        }
        return total
    }
}

/// Waits for a person at gate "go", then reports the decision.
struct Gate: Workflow {
    static let name = "gate"
    func run(_ ctx: WorkflowContext, input: JSONValue) async throws -> JSONValue {
        let prepared: String = try await ctx.step("prepare") { _ in "draft for \(input["who"]?.stringValue ?? "?")" }
        let d = try await ctx.approval("go", request: .init(summary: "Go?", details: ["draft": .string(prepared)]))
        return ["approved": .bool(d.approved), "value": d.value ?? .null, "by": .string(d.decidedBy?.user ?? ""), "reason": .string(d.reason ?? "")]
    }
}

/// Sleeps durably for input seconds, then records a step.
struct Nap: Workflow {
    static let name = "nap"
    func run(_ ctx: WorkflowContext, input: Double) async throws -> String {
        try await ctx.sleep("nap", for: .milliseconds(Int64(input * 1000)))
        return try await ctx.step("woke") { _ in "woke" }
    }
}

/// Waits for an event and returns its data.
struct Listen: Workflow {
    static let name = "listen"
    func run(_ ctx: WorkflowContext, input: String) async throws -> JSONValue {
        try await ctx.waitForEvent(input) ?? .null
    }
}

/// One step that logs "start TAG" and "end TAG" around a pause of `ms` (concurrency tests) —
/// or, with `while_exists`, while that file exists (at most `ms`); then, with `then_event`,
/// waits for that event (shutdown tests: an execution that reaches its next wait).
struct Hold: Workflow {
    static let name = "hold"
    struct Input: Codable, Sendable {
        var effects: String
        var tag: String
        var ms: Int
        var whileExists: String?
        var thenEvent: String?

        enum CodingKeys: String, CodingKey {
            case effects, tag, ms
            case whileExists = "while_exists"
            case thenEvent = "then_event"
        }
    }
    func run(_ ctx: WorkflowContext, input: Input) async throws -> String {
        let tag: String = try await ctx.step("hold") { key in
            try effect(input.effects, "start", input.tag)
            if let path = input.whileExists {
                let deadline = Date().addingTimeInterval(Double(input.ms) / 1000)
                while FileManager.default.fileExists(atPath: path) && Date() < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                }
            } else {
                try await Task.sleep(for: .milliseconds(input.ms))
            }
            try effect(input.effects, "end", input.tag)
            return input.tag
        }
        if let event = input.thenEvent { _ = try await ctx.waitForEvent(event) }
        return tag
    }
}

/// The I/O fault tests' workflow (FaultTests): a small step, a step whose value is a blob, a
/// durable sleep, an approval at gate "go", a step after it. Each step appends to `effects`.
struct Errand: Workflow {
    static let name = "errand"
    struct Input: Codable, Sendable { var effects: String }
    func run(_ ctx: WorkflowContext, input: Input) async throws -> JSONValue {
        let a: Int = try await ctx.step("a") { key in
            try effect(input.effects, "a", key)
            return 1
        }
        let big: String = try await ctx.step("big") { key in
            try effect(input.effects, "big", key)
            return String(repeating: "b", count: 70_000)
        }
        try await ctx.sleep("nap", for: .milliseconds(5))
        let d = try await ctx.approval("go", request: .init(summary: "Go?", details: ["a": .int(Int64(a))]))
        let c: Int = try await ctx.step("c") { key in
            try effect(input.effects, "c", key)
            return a + 1
        }
        return ["a": .int(Int64(a)), "big": .int(Int64(big.count)), "approved": .bool(d.approved), "c": .int(Int64(c))]
    }
}

/// The power-loss test's run (CrashStateTests): a step, a person's approval, an
/// at-most-once step. `effects` is relative to the working directory, so a copy of the spool
/// materialised elsewhere logs its side effects beside itself.
struct CrashStates: Workflow {
    static let name = "crash-states"
    struct Input: Codable, Sendable { var effects: String }
    func run(_ ctx: WorkflowContext, input: Input) async throws -> JSONValue {
        let a: Int = try await ctx.step("a") { key in
            try effect(input.effects, "a", key)
            return 1
        }
        let d = try await ctx.approval("go", request: .init(summary: "Go?"))
        let paid: Bool = try await ctx.step("pay", semantics: .atMostOnce) { key in
            try effect(input.effects, "pay", key)
            return true
        }
        return ["a": .int(Int64(a)), "approved": .bool(d.approved), "paid": .bool(paid)]
    }
}

var workflows = CairnCLI.exampleWorkflows
try workflows.register(Crashy())
try workflows.register(Gate())
try workflows.register(Nap())
try workflows.register(Listen())
try workflows.register(Hold())
try workflows.register(Saga())
try workflows.register(Errand())
try workflows.register(CrashStates())
try workflows.register(Soak())
try workflows.register(SoakChild())
try workflows.register(Long())
try workflows.register(Relay())
await CairnCLI.main(workflows: workflows)
