import CInotifyTools
import CSystemShims
import Foundation
import Synchronization

/// Something changed in a watched directory.
public struct WatchEvent: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// A file was closed after writing, or moved in (a drop landed whole).
        case landed
        /// A directory was created or moved in (a new run).
        case directoryLanded
        /// A file was deleted or moved out (e.g. `pause` removed).
        case removed
        /// The kernel's event queue overflowed: events were lost; rescan what is watched.
        case overflow
        /// The watched directory itself went away (its watch is gone).
        case watchGone
    }

    public var kind: Kind
    /// The watched directory (no trailing slash); empty for `.overflow`.
    public var directory: String
    /// The file's name inside it; empty for events on the directory itself.
    public var name: String
    /// For `.overflow`: the watcher's `epoch` when it was reported. Every event lost to it
    /// happened before then, so a rescan that began at that epoch or later has found them.
    public var epoch: UInt64 = 0

    public var description: String { "\(kind) \(directory)/\(name)" }
}

/// The inotify watcher: libinotifytools behind one small interface.
///
/// libinotifytools 3.22.6 keeps global state, so one dedicated thread (not a Swift task
/// on the cooperative pool) owns every call into it. That thread sleeps in poll(2) on the
/// inotify fd and an eventfd; requests (add/remove a watch, stop) are queued and the
/// eventfd wakes it, so nothing polls on a timer and timeouts need not be whole seconds.
/// When the inotify fd is readable it calls `inotifytools_next_events(0, 1)` until the
/// library's buffer is empty (num_events > 1 busy-spins in that version).
///
/// Start it before the process opens many files: the library select()s on its fd and
/// aborts once the fd is ≥ 1024. Its fd is not close-on-exec; `start()` finds it in
/// /proc/self/fd and sets FD_CLOEXEC so child processes never inherit it.
/// New directories are never watched automatically: callers add the watch, then scan.
public final class Watcher: Sendable {
    public static let dropMask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_ONLYDIR)
    /// For directories where a change of mode matters too (`chmod +x` of a script workflow).
    public static let dropAndModeMask = dropMask | UInt32(IN_ATTRIB)
    /// For files followed as they grow (`cairn logs -f`): every write is an event. Never for
    /// a directory the daemon watches (a chatty writer would fill the queue).
    public static let appendMask = dropMask | UInt32(IN_MODIFY)

    private enum Request: @unchecked Sendable {
        case add(String, UInt32, CheckedContinuation<Void, any Error>)
        case remove(String)
        case stop
    }

    private struct Shared {
        var requests: [Request] = []
        var watched: Set<String> = []
        var ignore: (@Sendable (String, String) -> Bool)? = nil
    }

    /// Events its owner never acts on, by directory and name (its own writes in a directory
    /// it watches for others' drops): dropped on the watcher thread, before they take a place
    /// in the queue, so that they cannot overflow it. Never applied to a watch that is gone.
    public func ignore(_ predicate: @escaping @Sendable (_ directory: String, _ name: String) -> Bool) {
        shared.withLock { $0.ignore = predicate }
    }

    private let shared = Mutex(Shared())
    private let wakeFD: Int32
    private let continuation: AsyncStream<WatchEvent>.Continuation
    /// Events, in the order the kernel reported them. At most `queueLimit` wait to be
    /// consumed: past that, events are dropped and one `.overflow` is reported once there is
    /// room, exactly as the kernel does with its own queue — so a flood of file churn (anyone
    /// in the group can create and delete names in a drop directory) costs a rescan, not
    /// unbounded memory and a daemon minutes behind.
    public let events: AsyncStream<WatchEvent>
    public static let queueLimit = queueLimitHook ?? 1024
    #if CAIRN_TEST_HOOKS
    /// `CAIRN_SIMULATE_QUEUE_LIMIT=N` (debug builds only): a smaller queue, so that a test can
    /// overflow it with a hundred runs instead of thousands.
    static let queueLimitHook: Int? = ProcessInfo.processInfo.environment["CAIRN_SIMULATE_QUEUE_LIMIT"].flatMap(Int.init).flatMap { $0 > 0 ? $0 : nil }
    #else
    static let queueLimitHook: Int? = nil
    #endif
    nonisolated(unsafe) private var overflowPending = false  // touched only by the watcher thread
    private let delivered = Atomic<UInt64>(0)
    /// Events the kernel has reported so far (a clock for `.overflow`'s `epoch`): a rescan
    /// that reads it first covers every overflow reported with an epoch up to it.
    public var epoch: UInt64 { delivered.load(ordering: .acquiring) }
    /// The inotify fd (for tests of close-on-exec).
    public let inotifyFD: Int32

    public struct Failure: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// Initializes libinotifytools on a new dedicated thread.
    public static func start() throws -> Watcher {
        // The inotify descriptors open before: the new one is the inotify descriptor not
        // among them. (Not "a descriptor not open before": another thread may close one
        // while libinotifytools initialises, and its number is then reused for inotify.)
        let before = Set(openFileDescriptors().filter(isInotify))
        let ready = DispatchSemaphore(value: 0)
        let initResult = Mutex<Int32>(0)
        let (stream, cont) = AsyncStream<WatchEvent>.makeStream(bufferingPolicy: .bufferingOldest(queueLimit))
        let wake = cairn_eventfd()
        guard wake >= 0 else { throw Failure(message: "eventfd failed: \(String(cString: strerror(errno)))") }
        // The thread owns libinotifytools from initialize to cleanup.
        let box = WatcherBox()
        let thread = Thread {
            if inotifytools_initialize() == 0 {
                initResult.withLock { $0 = inotifytools_error() == 0 ? -1 : inotifytools_error() }
                ready.signal()
                return
            }
            ready.signal()
            box.waitForWatcher().loop()
        }
        thread.name = "cairn-inotify"
        thread.start()
        ready.wait()
        let err = initResult.withLock { $0 }
        if err != 0 {
            close(wake)
            throw Failure(message: "inotify initialisation failed: \(err > 0 ? String(cString: strerror(err)) : "unknown error") (see /proc/sys/fs/inotify/max_user_instances)")
        }
        let inotify = openFileDescriptors().filter { !before.contains($0) && isInotify($0) }.first ?? -1
        if inotify >= 0 { _ = cairn_set_cloexec(inotify) }
        let w = Watcher(wakeFD: wake, inotifyFD: inotify, stream: stream, continuation: cont)
        box.set(w)
        return w
    }

    private init(wakeFD: Int32, inotifyFD: Int32, stream: AsyncStream<WatchEvent>, continuation: AsyncStream<WatchEvent>.Continuation) {
        self.wakeFD = wakeFD
        self.inotifyFD = inotifyFD
        self.events = stream
        self.continuation = continuation
    }

    /// Watches a directory for drops (close-after-write, moved in), creations, removals.
    /// Returns once the watch is in place; scan the directory after this.
    public func watch(_ directory: String, mask: UInt32 = Watcher.dropMask) async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            enqueue(.add(Self.normalize(directory), mask, c))
        }
    }

    /// Stops watching a directory (no-op when not watched).
    public func unwatch(_ directory: String) {
        enqueue(.remove(Self.normalize(directory)))
    }

    public var watchedDirectories: Set<String> { shared.withLock { $0.watched } }

    /// Ends the thread and the event stream.
    public func stop() { enqueue(.stop) }

    private func enqueue(_ r: Request) {
        shared.withLock { $0.requests.append(r) }
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    static func normalize(_ d: String) -> String {
        var s = d
        while s.count > 1 && s.hasSuffix("/") { s.removeLast() }
        return s
    }

    // MARK: the thread

    fileprivate func loop() {
        var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0), pollfd(fd: inotifyFD, events: Int16(POLLIN), revents: 0)]
        var running = true
        while running {
            fds[0].revents = 0
            fds[1].revents = 0
            // While an overflow waits for room in the queue, look again every 10 ms.
            let rc = poll(&fds, nfds_t(fds[1].fd >= 0 ? 2 : 1), overflowPending ? 10 : -1)
            if overflowPending { _ = reportOverflowIfRoom() }
            if rc < 0 {
                if errno == EINTR { continue }
                break
            }
            if fds[0].revents != 0 {
                var n: UInt64 = 0
                _ = read(wakeFD, &n, 8)
                let requests = shared.withLock { s -> [Request] in
                    defer { s.requests.removeAll() }
                    return s.requests
                }
                for r in requests {
                    switch r {
                    case .add(let dir, let mask, let c):
                        if inotifytools_watch_file(dir, Int32(bitPattern: mask)) == 1 {
                            shared.withLock { _ = $0.watched.insert(dir) }
                            c.resume()
                        } else {
                            let e = inotifytools_error()
                            c.resume(throwing: Failure(message: "\(dir): cannot watch: \(String(cString: strerror(e)))" + (e == ENOSPC ? " (raise /proc/sys/fs/inotify/max_user_watches)" : "")))
                        }
                    case .remove(let dir):
                        if shared.withLock({ $0.watched.remove(dir) }) != nil {
                            _ = inotifytools_remove_watch_by_filename(dir)
                        }
                    case .stop:
                        running = false
                    }
                }
            }
            if running && fds[1].revents != 0 {
                // Drain: the library buffers several kernel events per read().
                while let ev = inotifytools_next_events(0, 1) {
                    deliver(ev)
                }
            }
        }
        inotifytools_cleanup()
        close(wakeFD)
        continuation.finish()
    }

    private func deliver(_ ev: UnsafeMutablePointer<inotify_event>) {
        // `CAIRN_SIMULATE_REMOTE_WRITES=1` (debug builds only): see nothing, as a daemon on another
        // host of a shared filesystem would; only --rescan-interval finds the work.
        if Self.blind { return }
        delivered.add(1, ordering: .releasing)
        let mask = ev.pointee.mask
        if mask & UInt32(IN_Q_OVERFLOW) != 0 {
            overflowPending = true
            _ = reportOverflowIfRoom()
            return
        }

        guard let dirC = inotifytools_filename_from_wd(ev.pointee.wd) else { return }
        let dir = Self.normalize(String(cString: dirC))
        var name = ""
        if ev.pointee.len > 0 {
            // The name follows the struct (a flexible array member Swift does not import).
            let p = UnsafeRawPointer(ev).advanced(by: MemoryLayout<inotify_event>.size).assumingMemoryBound(to: CChar.self)
            name = String(cString: p)
        }
        // Names starting with "." are never events: the runtime's own lock files (each
        // advance opens and closes runs/ID/.lock) and the staging files of drops, which land
        // by a rename to their real name. Counted toward the queue, a rescan's own lock
        // files overflowed it and caused the next rescan, for ever.
        if name.hasPrefix(".") { return }
        let kind: WatchEvent.Kind
        if mask & UInt32(IN_IGNORED | IN_DELETE_SELF | IN_UNMOUNT) != 0 {
            if shared.withLock({ $0.watched.remove(dir) }) != nil, mask & UInt32(IN_IGNORED) == 0 {
                _ = inotifytools_remove_watch_by_filename(dir)
            }
            kind = .watchGone
        } else if mask & UInt32(IN_ISDIR) != 0 && mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 {
            kind = .directoryLanded
        } else if mask & UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_ATTRIB | IN_MODIFY) != 0 {
            // IN_ATTRIB and IN_MODIFY only where a watch asks for them (workflows/: `chmod +x`
            // installs one; `appendMask`: a followed log grew).
            kind = .landed
        } else if mask & UInt32(IN_DELETE | IN_MOVED_FROM) != 0 {
            kind = .removed
        } else if mask & UInt32(IN_CREATE) != 0 {
            // A regular file: wait for its close or move. A symlink or FIFO never closes
            // after writing, and a hard link (`ln`) is neither written nor moved: report
            // them now, so they can be refused.
            var st = stat()
            guard lstat(dir + "/" + name, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG || st.st_nlink > 1 else { return }
            kind = .landed
        } else {
            return
        }
        if kind != .watchGone, let ignore = shared.withLock({ $0.ignore }), ignore(dir, name) { return }
        if let every = Self.simulatedOverflowEvery {
            simulatedCount += 1
            if simulatedCount % every == 0 {
                // Test hook: lose this event and report an overflow, as the kernel would.
                overflowPending = true
                _ = reportOverflowIfRoom()
                return
            }
        }
        // Events lost to a full queue: the overflow goes first; until it is in, what comes
        // after is covered by the rescan it causes.
        if overflowPending, !reportOverflowIfRoom() { return }
        if case .dropped = continuation.yield(WatchEvent(kind: kind, directory: dir, name: name)) {
            overflowPending = true
        }
    }

    /// Puts the pending overflow in the queue if there is room; whether it went in.
    private func reportOverflowIfRoom() -> Bool {
        if case .dropped = continuation.yield(WatchEvent(kind: .overflow, directory: "", name: "", epoch: epoch)) { return false }
        overflowPending = false
        return true
    }

    #if CAIRN_TEST_HOOKS
    static let blind = ProcessInfo.processInfo.environment["CAIRN_SIMULATE_REMOTE_WRITES"] == "1"
    #else
    static let blind = false  // release build: no test hooks
    #endif

    /// `CAIRN_SIMULATE_OVERFLOW_EVERY=N` (debug builds only): every Nth event is dropped and an
    /// overflow reported in its place, to prove that the rescan loses nothing.
    #if CAIRN_TEST_HOOKS
    static let simulatedOverflowEvery: Int? = ProcessInfo.processInfo.environment["CAIRN_SIMULATE_OVERFLOW_EVERY"].flatMap(Int.init).flatMap { $0 > 0 ? $0 : nil }
    #else
    static let simulatedOverflowEvery: Int? = nil
    #endif
    nonisolated(unsafe) private var simulatedCount = 0  // touched only by the watcher thread

    // MARK: fds

    static func openFileDescriptors() -> [Int32] {
        guard let d = opendir("/proc/self/fd") else { return [] }
        defer { closedir(d) }
        var out: [Int32] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if let n = Int32(name) { out.append(n) }
        }
        return out
    }

    static func isInotify(_ fd: Int32) -> Bool {
        var buf = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(fd)", &buf, 255)
        guard n > 0 else { return false }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self).contains("inotify")
    }
}

/// Hands the Watcher to its thread once constructed.
private final class WatcherBox: Sendable {
    private let w = Mutex<Watcher?>(nil)
    private let sem = DispatchSemaphore(value: 0)
    func set(_ watcher: Watcher) {
        w.withLock { $0 = watcher }
        sem.signal()
    }
    func waitForWatcher() -> Watcher {
        sem.wait()
        return w.withLock { $0! }
    }
}
