import CairnWatch
import Foundation
import Synchronization

/// Following something as it changes — `cairn logs -f`, `cairn show --follow`,
/// `cairn ls --watch` — the way `cairn wait` waits: inotify on the directories that change,
/// never a poll loop; and, since inotify does not see writes made through another host's
/// mount of a shared filesystem, one cheap look every `rescan` too.
enum Follow {
    /// Watches `directories` (each with its mask), then calls `look` once, after every
    /// change (whatever it was: an event, an overflow, a watch gone) and every `rescan`,
    /// until `look` returns true. `look` gets the event that woke it, or nil for the first
    /// look and the rescans (look at everything then). The watch is in place before the first look, so nothing
    /// that lands in between is missed. `look` does its own reading: events only wake it.
    static func until(watching directories: [(path: String, mask: UInt32)], rescan: Duration, _ look: @escaping @Sendable (WatchEvent?) throws -> Bool) async throws {
        let watcher = try Watcher.start()
        defer { watcher.stop() }
        for d in directories {
            // A directory that is not there yet (a run's logs/ before its first execution)
            // is looked at on the rescan; the parent's events wake the look anyway.
            try? await watcher.watch(d.path, mask: d.mask)
        }
        // One look at a time: the events and the rescan both call it.
        let one = Mutex(())
        let look: @Sendable (WatchEvent?) throws -> Bool = { e in try one.withLock { _ in try look(e) } }
        if try look(nil) { return }
        _ = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await e in watcher.events {
                    if try look(e) { return true }
                }
                return false
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: rescan)
                    if try look(nil) { return true }
                }
            }
            let first = try await group.next() ?? false
            group.cancelAll()
            return first
        }
    }
}
