import Cairn
import CairnSpool
import Foundation

/// The workflows `cairn bench` runs. They are registered only in the daemon the benchmark
/// starts (`cairn __bench-daemon`), never in a user's spool.
enum BenchWorkflows {
    static var all: [AnyWorkflow] { [AnyWorkflow(Steps()), AnyWorkflow(Gate())] }

    /// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine, so a body
    /// in the daemon and the benchmark's own process can be compared.
    static func monotonic() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// Writes the monotonic time to `path` (a plain write: a measurement, not state).
    static func mark(_ path: String) {
        _ = FileManager.default.createFile(atPath: path, contents: Data(String(monotonic()).utf8))
    }

    /// `steps` no-op steps, each returning a ~200-byte value. With `hold_at: K` and `markers`,
    /// step K's body writes `reached` and sleeps while `hold` exists, and otherwise writes
    /// `resumed` with the time it ran (the restart figure: SIGKILL at `reached`).
    struct Steps: Workflow {
        static let name = "cairn-bench-steps"
        struct Input: Codable, Sendable {
            var steps: Int
            var holdAt: Int?
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
                    if i == input.holdAt, let dir = input.markers {
                        if FileManager.default.fileExists(atPath: dir + "/hold") {
                            mark(dir + "/reached")
                            try await Task.sleep(for: .seconds(3600))
                        }
                        mark(dir + "/resumed")
                    }
                    return "\(i):" + filler
                }
                total += v.count
            }
            return total
        }
    }

    /// A step, an approval at gate `go`, then a step whose body writes the time it started
    /// to `mark` (the approval figure: from the drop to the next step).
    struct Gate: Workflow {
        static let name = "cairn-bench-gate"
        struct Input: Codable, Sendable { var mark: String? }

        func run(_ ctx: WorkflowContext, input: Input) async throws -> Bool {
            let _: Int = try await ctx.step("before") { _ in 1 }
            let d = try await ctx.approval("go", request: .init(summary: "benchmark"))
            let _: Int = try await ctx.step("after") { _ in
                if let m = input.mark { mark(m) }
                return 2
            }
            return d.approved
        }
    }
}
