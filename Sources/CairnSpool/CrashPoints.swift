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
///
/// `CAIRN_SIMULATE_SLOW=POINT:MS` makes `slowAt(POINT)` wait MS milliseconds instead: the
/// whole binary's `step.spawned` (a step's command started, not yet known to its killer), the
/// daemon's `script.spawned` (a script started, not yet known to its cancellation).
///
/// Compiled into debug builds only (`CAIRN_TEST_HOOKS`, see Package.swift): in a release
/// build `reached` is empty and `CAIRN_CRASH_AT` means nothing.
public enum CrashPoints {
    #if CAIRN_TEST_HOOKS
    /// Whether this build has test hooks at all: true, a debug build.
    public static let compiledIn = true
    #else
    /// Whether this build has test hooks at all: false, a release build.
    public static let compiledIn = false
    #endif

    /// The value of a test hook's environment variable; always nil in a release build.
    public static func testHook(_ name: String) -> String? {
        #if CAIRN_TEST_HOOKS
        return ProcessInfo.processInfo.environment[name]
        #else
        return nil
        #endif
    }

    /// The test hooks set in this process's environment (for the daemon's warning).
    public static var activeHooks: [String] {
        ["CAIRN_CRASH_AT", "CAIRN_SIMULATE_REMOTE_WRITES", "CAIRN_SIMULATE_OVERFLOW_EVERY", "CAIRN_SIMULATE_SLOW"].filter { testHook($0).map { !$0.isEmpty } ?? false }
    }

    #if CAIRN_TEST_HOOKS
    private struct Plan: Sendable {
        var point: String
        var nth: Int
    }

    private static let plan: Plan? = {
        guard let spec = testHook("CAIRN_CRASH_AT"), !spec.isEmpty else { return nil }
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
    private static let slow: Plan? = {
        guard let spec = testHook("CAIRN_SIMULATE_SLOW"), !spec.isEmpty else { return nil }
        let parts = spec.split(separator: ":", maxSplits: 1)
        return Plan(point: String(parts[0]), nth: parts.count > 1 ? Int(parts[1]) ?? 0 : 0)
    }()

    /// Reached `point`: waits there when `CAIRN_SIMULATE_SLOW=POINT:MS` says so (a machine
    /// so loaded that a timeout fires inside a window that is normally microseconds wide).
    @inline(__always)
    public static func slowAt(_ point: String) {
        guard let slow, slow.point == point, slow.nth > 0 else { return }
        usleep(UInt32(slow.nth) * 1000)
    }
    #else
    /// Release build: no crash points.
    @inline(__always)
    public static func reached(_ point: String) {}

    /// Release build: no delays.
    @inline(__always)
    public static func slowAt(_ point: String) {}
    #endif
}
