import Cairn
import CairnSpool
import Foundation

/// A long run of no-op steps, each returning a ~200-byte value (the long-run benchmark and
/// tests). With `hold_at: [K…]` and `markers: DIR`, the body of step K (counting from 0) —
/// the first step after K recorded ones — writes `DIR/reached-K` and sleeps for an hour while
/// `DIR/hold-K` exists, and otherwise writes `DIR/resumed-K` holding the wall-clock time in
/// nanoseconds: the benchmark SIGKILLs the daemon at `reached-K` and times the restart to
/// `resumed-K`.
struct Long: Workflow {
    static let name = "long"

    struct Input: Codable, Sendable {
        var steps: Int
        var holdAt: [Int]?
        var markers: String?

        enum CodingKeys: String, CodingKey {
            case steps, markers
            case holdAt = "hold_at"
        }
    }

    func run(_ ctx: WorkflowContext, input: Input) async throws -> Int {
        let filler = String(repeating: "v", count: 180)
        var total = 0
        for i in 0..<input.steps {
            let v: String = try await ctx.step("s\(i)") { _ in
                if input.holdAt?.contains(i) == true, let dir = input.markers {
                    if FileManager.default.fileExists(atPath: dir + "/hold-\(i)") {
                        _ = FileManager.default.createFile(atPath: dir + "/reached-\(i)", contents: nil)
                        try await Task.sleep(for: .seconds(3600))
                    }
                    var ts = timespec()
                    clock_gettime(CLOCK_REALTIME, &ts)
                    let ns = Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
                    try DurableFile.appendLine(String(ns), to: dir + "/resumed-\(i)")
                }
                return "\(i):" + filler
            }
            total += v.count
        }
        return total
    }
}

/// Does one step, then continues as a new run with `left - 1` until `left` is 0 (the
/// continueAsNew tests): `{"left": N, "effects": FILE}`.
struct Relay: Workflow {
    static let name = "relay"

    struct Input: Codable, Sendable {
        var left: Int
        var effects: String
    }

    func run(_ ctx: WorkflowContext, input: Input) async throws -> String {
        let _: Int = try await ctx.step("work") { key in
            try effect(input.effects, "work-\(input.left)", key)
            return input.left
        }
        if input.left > 0 { try await ctx.continueAsNew(Input(left: input.left - 1, effects: input.effects)) }
        return "done"
    }
}
