#if CAIRN_TEST_HOOKS
import Foundation
import Synchronization
import SystemPackage

/// A test hook (debug builds only): a process that dies at its Nth durable write, in
/// process. Set as `WriteFault.$current` around an engine call; every durable write made in
/// that task and its child tasks (`DurableFile.commit`, the routine behind every runtime
/// write, and `DurableFile.rename`, which moves new runs and consumed decisions into place)
/// is counted. The Nth fails — before anything reaches the disk, or after the file is in
/// place (`lands`) — and so does every write after it, as nothing is written by a dead
/// process. Scoped to a task, unlike `CrashPoints`, so that tests running side by side in
/// one process do not see each other's faults. The property tests of the replay engine
/// (`Tests/CairnTests/ReplayPropertyTests.swift`) resume the run with a fresh engine.
public final class WriteFault: Sendable {
    /// The durable writes of this task and its children fail as this says; nil: none does.
    @TaskLocal public static var current: WriteFault?

    /// 1-based; `Int.max` never fails (counts only).
    public let failAt: Int
    /// The failing write reaches the disk first (the process died after the rename).
    public let lands: Bool
    private struct State {
        var writes = 0
        var crashedAt: String?
    }
    private let state = Mutex(State())

    public init(failAt: Int = .max, lands: Bool = false) {
        self.failAt = failAt
        self.lands = lands
    }

    /// Durable writes attempted so far (the failing one included).
    public var writes: Int { state.withLock { $0.writes } }
    /// Whether the process is "dead": the path of the write it died at.
    public var crashedAt: String? { state.withLock { $0.crashedAt } }
    public var crashed: Bool { crashedAt != nil }

    /// Before a durable write: throws if the process is dead or dies now; true when the
    /// write goes ahead and the process dies once it is in place (`afterWrite`).
    func beforeWrite(_ path: FilePath) throws -> Bool {
        try state.withLock { s in
            if let at = s.crashedAt { throw Self.dead(path, at: at) }
            s.writes += 1
            guard s.writes == failAt else { return false }
            if lands { return true }
            s.crashedAt = path.string
            throw Self.dead(path, at: path.string)
        }
    }

    func afterWrite(_ path: FilePath) throws {
        state.withLock { $0.crashedAt = path.string }
        throw Self.dead(path, at: path.string)
    }

    static func dead(_ path: FilePath, at: String) -> SpoolError {
        SpoolError(.io, path: path.string, "simulated crash: the process died at its durable write of \(at)")
    }
}
#endif
