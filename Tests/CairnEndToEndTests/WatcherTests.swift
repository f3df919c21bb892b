import CSystemShims
import CairnSpool
import CairnTesting
import CairnWatch
import Foundation
import Testing

/// The watcher in this test process (libinotifytools is global: one watcher per process,
/// so every test here shares it and the suite runs serialized).
@Suite(.serialized) struct WatcherTests {
    static let watcher: Watcher = try! Watcher.start()

    @Test func inotifyDescriptorIsCloseOnExec() {
        #expect(Self.watcher.inotifyFD >= 0)
        #expect(cairn_is_cloexec(Self.watcher.inotifyFD) == 1)
    }

    @Test func reportsDropsMovesSymlinksAndRemovals() async throws {
        let t = try TempSpool()
        let dir = t.spool.inboxDirectory.string
        try await Self.watcher.watch(dir)
        let collector = Task {
            var out: [WatchEvent] = []
            for await e in Self.watcher.events where e.directory == dir {
                out.append(e)
                if out.count == 4 { break }
            }
            return out
        }
        try "x".write(toFile: dir + "/written.json", atomically: false, encoding: .utf8)
        try "y".write(toFile: t.spool.tmpDirectory.string + "/m", atomically: false, encoding: .utf8)
        #expect(rename(t.spool.tmpDirectory.string + "/m", dir + "/moved.json") == 0)
        #expect(symlink("/etc/passwd", dir + "/link") == 0)
        #expect(unlink(dir + "/written.json") == 0)
        let timeout = Task { try await Task.sleep(for: .seconds(5)); collector.cancel() }
        let events = await collector.value
        timeout.cancel()
        #expect(events.map(\.kind) == [.landed, .landed, .landed, .removed], "\(events)")
        #expect(events.map(\.name) == ["written.json", "moved.json", "link", "written.json"])
        Self.watcher.unwatch(dir)
    }

    /// What the owner never acts on takes no place in the queue: names starting with "." (the
    /// runtime's lock files, drops' staging names) and what its `ignore` predicate names (a
    /// daemon's own state.json in a run directory). Before, a rescan's own lock files filled the
    /// queue past its limit and the overflow caused the next rescan, for ever.
    @Test func hiddenAndIgnoredNamesAreNoEvents() async throws {
        let t = try TempSpool()
        let dir = t.spool.inboxDirectory.string
        Self.watcher.ignore { d, name in d == dir && name == "own.json" }
        defer { Self.watcher.ignore { _, _ in false } }
        try await Self.watcher.watch(dir)
        let collector = Task {
            var out: [WatchEvent] = []
            for await e in Self.watcher.events where e.directory == dir {
                out.append(e)
                if e.name == "drop.json" { break }
            }
            return out
        }
        let fd = open(dir + "/.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        close(fd)
        try "x".write(toFile: dir + "/own.json", atomically: false, encoding: .utf8)
        try "y".write(toFile: dir + "/.drop.json.tmp", atomically: false, encoding: .utf8)
        #expect(rename(dir + "/.drop.json.tmp", dir + "/drop.json") == 0)
        let timeout = Task { try await Task.sleep(for: .seconds(5)); collector.cancel() }
        let events = await collector.value
        timeout.cancel()
        #expect(events.map(\.name) == ["drop.json"], "\(events)")
        Self.watcher.unwatch(dir)
    }
}
