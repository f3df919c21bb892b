import CairnSpool
import Foundation
import Logging
import Synchronization

/// What both of the daemon's log handlers share: metadata set on the logger, read back.
public protocol CairnLogHandler: LogHandler {
    var metadata: Logger.Metadata { get set }
}

extension CairnLogHandler {
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
}

/// `--log-format json`: one JSON object per line on stderr
/// (`{"at", "level", "message", "label", ...metadata}`), for journald and log shippers.
public struct JSONLogHandler: CairnLogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    let label: String
    private static let lock = Mutex(())

    public init(label: String) { self.label = label }

    public func log(event: LogEvent) {
        var o: [String: JSONValue] = [
            "at": .string(Timestamp.format(Date())), "level": .string(event.level.rawValue),
            "message": .string("\(event.message)"), "label": .string(label),
        ]
        for (k, v) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { o[k] = Self.json(v) }
        let line = JSONValue.object(o).compactText() + "\n"
        Self.lock.withLock { _ in FileHandle.standardError.write(Data(line.utf8)) }
    }

    /// A metadata value as JSON: numbers logged as numbers (`.stringConvertible(n)`), the
    /// rest as text.
    static func json(_ v: Logger.Metadata.Value) -> JSONValue {
        switch v {
        case .stringConvertible(let x as any BinaryInteger): return .int(Int64(x))
        case .stringConvertible(let x as Double) where x.isFinite: return .double(x)
        case .array(let a): return .array(a.map(json))
        case .dictionary(let d): return .object(d.mapValues(json))
        default: return .string("\(v)")
        }
    }
}

/// `--log-format human` (the default): one line per event on stderr, its time written as
/// every `cairn` command writes times (`2026-11-28T09:00:02.113Z`, UTC with milliseconds),
/// then the level, the message, and the metadata as `key=value` sorted by key (a value with
/// a space or a quote in double quotes). Control characters in values (a run id or a file
/// name from a drop) are escaped, so no value can forge a second line.
public struct HumanLogHandler: CairnLogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    let label: String
    private static let lock = Mutex(())

    public init(label: String) { self.label = label }

    public func log(event: LogEvent) {
        let fields = metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 })
        var line = "\(Timestamp.format(Date())) \(event.level.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0)) \(Names.printable("\(event.message)"))"
        for (k, v) in fields.sorted(by: { $0.key < $1.key }) {
            line += " \(k)=\(Self.text(v))"
        }
        line += "\n"
        Self.lock.withLock { _ in FileHandle.standardError.write(Data(line.utf8)) }
    }

    static func text(_ v: Logger.Metadata.Value) -> String {
        let s = Names.printable("\(v)")
        return s.isEmpty || s.contains(" ") || s.contains("\"") ? "\"" + s.replacingOccurrences(of: "\"", with: "\\\"") + "\"" : s
    }
}
