import Foundation
import Synchronization

/// Named points where tests can make the process die with SIGKILL, chosen by the
/// environment variable `CAIRN_CRASH_AT=POINT[:N]` (die at the Nth time POINT is reached;
/// N defaults to 1). Unset, every check is one atomic load.
///
/// Points inside the durable write: `write.before-fsync`, `write.before-rename`,
/// `write.before-dirsync`, `write.after-dirsync`. Points in the engine:
/// `step.after-body` (a step's side effect happened but its record is not written). In the
/// spool and the daemon: `run.before-rename` (a new run's directory is staged in `tmp/`, not
/// yet renamed into `runs/`) and `inbox.before-unlink` (an inbox file was made a run but
/// not yet removed).
public enum CrashPoints {
    private struct Plan: Sendable {
        var point: String
        var nth: Int
    }

    private static let plan: Plan? = {
        guard let spec = ProcessInfo.processInfo.environment["CAIRN_CRASH_AT"], !spec.isEmpty else { return nil }
        let parts = spec.split(separator: ":", maxSplits: 1)
        let n = parts.count > 1 ? Int(parts[1]) ?? 1 : 1
        return Plan(point: String(parts[0]), nth: max(1, n))
    }()

    private static let counts = Mutex<[String: Int]>([:])

    /// Reached `point`: dies here when the plan says so.
    @inline(__always)
    public static func reached(_ point: String) {
        guard let plan, plan.point == point else { return }
        let n = counts.withLock { c -> Int in
            c[point, default: 0] += 1
            return c[point]!
        }
        if n == plan.nth {
            kill(getpid(), SIGKILL)
            // SIGKILL cannot be caught; wait for it to land.
            while true { pause() }
        }
    }
}
