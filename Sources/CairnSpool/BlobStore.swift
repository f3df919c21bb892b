import Foundation
import Synchronization
import SystemPackage

/// Content-addressed values: `blobs/sha256-HEX` holds a value's canonical JSON text, and
/// HEX is the SHA-256 of the file's bytes (so `sha256sum` verifies a blob). Records refer
/// to a blob with `{"$blob": "sha256-HEX", "bytes": N}`.
///
/// Arrays above the threshold are stored as a chain of list nodes, one per element:
/// `{"$list": {"prev": REF|null, "items": [ITEM]}}`. A list that grows by appending (an
/// agent's conversation) shares every earlier node, so n turns cost O(n) bytes, not O(n²).
public struct BlobStore: Sendable {
    /// The run's `blobs/` directory.
    public let directory: FilePath
    let durable: DurableFile
    /// Values whose JSON is larger than this many bytes are stored as blobs.
    public let threshold: Int
    /// `directory` as a String: FilePath operations are slow in debug builds, and this is hot.
    private let directoryString: String
    private static let nodeMemo = Mutex<[String: JSONValue]>([:])

    /// A store in `directory`, writing through `durable`.
    public init(directory: FilePath, durable: DurableFile, threshold: Int) {
        self.directory = directory
        self.durable = durable
        self.threshold = threshold
        self.directoryString = directory.string
    }

    /// A reference `{"$blob": "sha256-HEX", "bytes": N}`, if `v` is one.
    public static func reference(_ v: JSONValue) -> (name: String, bytes: Int)? {
        guard case .object(let o) = v, o.count == 2, let name = o["$blob"]?.stringValue, let n = o["bytes"]?.intValue else { return nil }
        return (name, Int(n))
    }

    static func isBlobName(_ name: String) -> Bool {
        name.hasPrefix("sha256-") && name.count == 71 && name.dropFirst(7).allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }

    /// Stores `v` as a blob if it is larger than the threshold (or always, with `force`);
    /// returns the value to put in a record (`v` itself or a reference).
    /// `staged`: writing into a run directory still under tmp/ (plain write + fsync).
    public func externalize(_ v: JSONValue, force: Bool = false, staged: Bool = false) throws -> JSONValue {
        guard force || v.compactText().utf8.count > threshold else { return v }
        if case .array(let items) = v {
            var prev: JSONValue = .null
            for item in items {
                // A node is determined by (prev, item): remember the ones already stored so a
                // growing list costs only its new elements (no re-hashing of the prefix).
                let memoKey = directory.string + "\u{0}" + (Self.reference(prev)?.name ?? "") + "\u{0}" + item.compactText()
                if let known = Self.nodeMemo.withLock({ $0[memoKey] }), DurableFile.exists(atPath: directoryString + "/" + Self.reference(known)!.name) {
                    prev = known
                    continue
                }
                let stored = try externalize(item, staged: staged)
                let node: JSONValue = ["$list": ["items": .array([stored]), "prev": prev]]
                prev = try store(node, staged: staged)
                if !staged {
                    Self.nodeMemo.withLock { m in
                        if m.count > 50_000 { m.removeAll() }
                        m[memoKey] = prev
                    }
                }
            }
            if items.isEmpty { return try store(.object(["$list": ["items": [], "prev": .null]]), staged: staged) }
            return prev
        }
        return try store(v, staged: staged)
    }

    /// Writes one blob (no-op when it exists) and returns its reference.
    func store(_ v: JSONValue, staged: Bool) throws -> JSONValue {
        let data = v.canonicalData()
        let name = "sha256-" + ContentHash.sha256Hex(data)
        if !DurableFile.exists(atPath: directoryString + "/" + name) {
            let path = directory.appending(name)
            if staged {
                try DurableFile.writeStaged(data, to: path)
            } else {
                do { try durable.write(data, to: path, mode: .noReplace) } catch let e as SpoolError where e.code == .exists {}
            }
        }
        return ["$blob": .string(name), "bytes": .int(Int64(data.count))]
    }

    /// Replaces every blob reference in `v` by the value it refers to.
    public func resolve(_ v: JSONValue) throws -> JSONValue {
        var expanding = Set<String>()
        return try resolve(v, expanding: &expanding)
    }

    /// Loads a blob by name, expanding list chains.
    public func load(_ name: String) throws -> JSONValue {
        var expanding = Set<String>()
        return try load(name, expanding: &expanding)
    }

    /// `expanding`: the blobs whose values are being expanded around this one. A blob is
    /// named by the hash of its content, so an intact store has no cycle; a blob met again
    /// inside itself, or a list chain that comes back to one of its nodes, is a damaged
    /// directory and an error, not a value without end (a loop, or a stack overflow).
    private func resolve(_ v: JSONValue, expanding: inout Set<String>) throws -> JSONValue {
        switch v {
        case .array(let a):
            var out: [JSONValue] = []
            out.reserveCapacity(a.count)
            for e in a { out.append(try resolve(e, expanding: &expanding)) }
            return .array(out)
        case .object(let o):
            if let (name, _) = Self.reference(v) { return try load(name, expanding: &expanding) }
            var out: [String: JSONValue] = [:]
            out.reserveCapacity(o.count)
            for (k, e) in o { out[k] = try resolve(e, expanding: &expanding) }
            return .object(out)
        default: return v
        }
    }

    private func load(_ name: String, expanding: inout Set<String>) throws -> JSONValue {
        var items: [JSONValue] = []
        var chain: [String] = []
        defer { for n in chain { expanding.remove(n) } }
        var next: String? = name
        while let n = next {
            guard expanding.insert(n).inserted else {
                throw SpoolError(.malformed, path: directory.appending(n).string, "the blob refers back to itself (blobs are named by the hash of their content: this directory is damaged)")
            }
            chain.append(n)
            let v = try loadRaw(n)
            guard case .object(let o) = v, o.count == 1, let list = o["$list"], let nodeItems = list["items"]?.arrayValue else {
                if chain.count == 1 { return try resolve(v, expanding: &expanding) }
                throw SpoolError(.malformed, path: directory.appending(n).string, "expected a list node")
            }
            items.append(contentsOf: nodeItems.reversed())
            switch list["prev"] {
            case .some(let p) where !p.isNull:
                guard let (pn, _) = Self.reference(p) else { throw SpoolError(.malformed, path: directory.appending(n).string, "bad \"prev\"") }
                next = pn
            default: next = nil
            }
        }
        var out: [JSONValue] = []
        out.reserveCapacity(items.count)
        for item in items.reversed() { out.append(try resolve(item, expanding: &expanding)) }
        return .array(out)
    }

    func loadRaw(_ name: String) throws -> JSONValue {
        guard Self.isBlobName(name) else { throw SpoolError(.malformed, "not a blob name: '\(name)'") }
        let path = directory.appending(name)
        let data = try DurableFile.read(path)
        return try JSONValue.parse(data, file: path.string)
    }

    /// Every blob a value refers to, directly or through list chains.
    public func referencedBlobs(in v: JSONValue) throws -> Set<String> {
        var out = Set<String>()
        try collect(v, into: &out)
        return out
    }

    private func collect(_ v: JSONValue, into out: inout Set<String>) throws {
        switch v {
        case .array(let a): for e in a { try collect(e, into: &out) }
        case .object(let o):
            if let (name, _) = Self.reference(v) {
                guard out.insert(name).inserted else { return }
                let path = directory.appending(name)
                guard DurableFile.exists(path) else { throw SpoolError(.notFound, path: path.string, "missing blob") }
                let data = try DurableFile.read(path)
                guard "sha256-" + ContentHash.sha256Hex(data) == name else {
                    throw SpoolError(.malformed, path: path.string, "content does not match its SHA-256 name")
                }
                try collect(JSONValue.parse(data, file: path.string), into: &out)
                return
            }
            for e in o.values { try collect(e, into: &out) }
        default: return
        }
    }

    /// Checks that every blob a record refers to exists and matches its hash.
    public func verifyReferences(in entry: JournalEntry) throws {
        for v in [entry.value, entry.data].compactMap({ $0 }) { _ = try referencedBlobs(in: v) }
    }
}
