import Cairn
import CairnSpool
import Foundation
import Logging
import Synchronization
import SystemPackage

/// A fresh spool in a temporary directory, removed when the value is released.
public final class TempSpool: Sendable {
    /// The spool, at `path/spool`.
    public let spool: Spool
    /// The temporary directory that holds the spool; removed on release.
    public let path: FilePath

    /// Creates a fresh temporary directory (`mkdtemp`, named from `prefix`) with a spool in
    /// it: in `base` when given (a tmpfs such as /dev/shm, for tests that make thousands of
    /// durable writes), else in the temporary directory.
    public init(prefix: String = "cairn-test", in base: String? = nil) throws {
        let base = base ?? FileManager.default.temporaryDirectory.path
        var template = Array("\(base)/\(prefix)-XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SpoolError(.io, path: base, errno: errno, "mkdtemp failed")
        }
        path = FilePath(String(cString: dir))
        spool = try Spool.create(at: path.appending("spool"))
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path.string)
    }

    /// An engine over this spool; its log goes to `capture` when given (every level).
    public func engine(_ workflows: [AnyWorkflow], clock: any CairnClock = ManualClock(autoAdvance: true), logLevel: Logger.Level = .warning, capture: LogCapture? = nil) -> Engine {
        var logger = capture.map { c in Logger(label: "cairn.test") { _ in c.handler } } ?? Logger(label: "cairn.test")
        logger.logLevel = capture == nil ? logLevel : .trace
        return Engine(spool: spool, registry: WorkflowRegistry(workflows), clock: clock, logger: logger)
    }

    /// Submits a run.
    public func submit<T: Encodable>(_ workflow: String, input: T, id: String? = nil, key: String? = nil) throws -> String {
        try spool.createRun(.init(workflow: workflow, input: JSONValue(encoding: input), id: id, idempotencyKey: key)).id
    }

    /// The run's journal as `KIND` or `KIND:NAME` strings, in position order.
    public func journalSummary(_ run: String) throws -> [String] {
        try spool.journal(run).load().map { e in e.name.map { "\(e.kind):\($0)" } ?? e.kind.rawValue }
    }

    /// The run's derived state (`state.json`).
    public func state(_ run: String) throws -> RunState {
        guard let s = try spool.readState(run) else { throw SpoolError(.notFound, "no state.json for \(run)") }
        return s
    }

    /// Drops a file as a person would: written elsewhere, then renamed into place.
    public func drop(_ relative: String, in run: String, content: String = "") throws {
        let target = spool.run(run).directory.appending(relative)
        let tmp = path.appending("drop-\(UUID().uuidString)")
        try Data(content.utf8).write(to: URL(fileURLWithPath: tmp.string))
        guard rename(tmp.string, target.string) == 0 else {
            throw SpoolError(.io, path: target.string, errno: errno, "cannot drop file")
        }
    }

    /// Every JSON file in the spool that does not parse (there must be none).
    public func partialJSONFiles() throws -> [String] {
        var bad: [String] = []
        let e = FileManager.default.enumerator(atPath: spool.root.string)
        while let rel = e?.nextObject() as? String {
            guard !rel.hasPrefix("tmp/") else { continue }
            let p = spool.root.appending(rel)
            if rel.hasSuffix(".json") {
                if (try? DurableFile.readJSON(p)) == nil { bad.append(rel) }
            } else if rel.contains("/journal/"), let name = p.lastComponent?.string, let (first, last) = Journal.parseSegmentName(name) {
                // A journal segment: one record a line, every line whole.
                if (try? Journal.decodeSegment(DurableFile.read(p, limit: 1 << 30), first: first, last: last)) == nil { bad.append(rel) }
            }
        }
        return bad
    }

    /// Sets one setting in the spool's `cairn.json` (written as a person would edit it).
    public func setConfig(_ key: String, _ value: JSONValue) throws {
        let file = spool.root.appending("cairn.json")
        guard case .object(var o) = try DurableFile.readJSON(file) else { throw SpoolError(.malformed, path: file.string, "not an object") }
        o[key] = value
        try Data(JSONValue.object(o).canonicalText().utf8).write(to: URL(fileURLWithPath: file.string))
    }
}

/// Every line an engine logged (message and metadata), for tests that check what reaches
/// the logs (keys must not).
public final class LogCapture: Sendable {
    private let lines = Mutex<[String]>([])

    /// An empty capture; pass it to `TempSpool.engine(_:clock:logLevel:capture:)`.
    public init() {}

    /// Every captured line so far, joined by newlines.
    public var text: String { lines.withLock { $0.joined(separator: "\n") } }

    var handler: any LogHandler { Handler(capture: self) }

    struct Handler: LogHandler {
        let capture: LogCapture
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { $1 }
            let line = "\(event.level) \(event.message) " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            capture.lines.withLock { $0.append(line) }
        }
    }
}
