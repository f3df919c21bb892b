import Foundation

// Reading journal records fast. A long run's restart reads every record (100,000 of them for
// a 100,000-step agent), and Foundation's decoders take 20–30 µs per ~430-byte record on
// Linux (measured with `cairn-bench decode`: JSONDecoder 22–28 µs, JSONSerialization 10 µs
// before any conversion, JSONValue.parse 60 µs), three times the whole budget of a resume
// in under a second. No faster JSON package is available to this project. So records the
// runtime wrote take a narrow, strict path: `RecordJSON.record` reads the JSON subset the
// runtime writes, straight into the record's fields. Anything outside that subset — a number
// with a fraction or an exponent, an escape it does not know, bytes that are not UTF-8, a
// duplicate key, a field of an unexpected type — makes it return nil, and the record is
// decoded by JSONDecoder as before (which also says what is wrong).
// `RecordDecodingTests` checks the two paths agree, record by record.

/// A strict reader of the JSON subset the runtime writes: objects, arrays, strings, `true`,
/// `false`, `null` and integers that fit in an Int64, with any JSON whitespace between
/// tokens. Nil for anything else (the caller falls back to JSONDecoder).
package enum RecordJSON {
    /// A journal record read straight into its fields (no dictionary in between); nil when
    /// anything is outside the subset or of an unexpected type.
    package static func record(_ data: Data) -> JournalEntry? {
        data.withUnsafeBytes { raw -> JournalEntry? in
            let b = raw.bindMemory(to: UInt8.self)
            var r = Reader(b: b, i: 0)
            guard let e = r.record() else { return nil }
            r.skipSpace()
            return r.i == b.count ? e : nil
        }
    }

    struct Reader {
        let b: UnsafeBufferPointer<UInt8>
        var i: Int

        mutating func skipSpace() {
            while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
        }

        mutating func value(depth: Int) -> JSONValue? {
            skipSpace()
            guard i < b.count, depth < 256 else { return nil }
            switch b[i] {
            case UInt8(ascii: "{"): return object(depth: depth)
            case UInt8(ascii: "["): return array(depth: depth)
            case UInt8(ascii: "\""): return string().map { .string($0) }
            case UInt8(ascii: "t"): return literal("true") ? .bool(true) : nil
            case UInt8(ascii: "f"): return literal("false") ? .bool(false) : nil
            case UInt8(ascii: "n"): return literal("null") ? .null : nil
            default: return integer()
            }
        }

        mutating func literal(_ word: StaticString) -> Bool {
            let n = word.utf8CodeUnitCount
            guard i + n <= b.count else { return false }
            for k in 0..<n where b[i + k] != word.utf8Start[k] { return false }
            i += n
            return true
        }

        /// `-?(0|[1-9][0-9]*)` within Int64, not followed by a fraction or exponent.
        mutating func integer() -> JSONValue? {
            var negative = false
            if b[i] == UInt8(ascii: "-") {
                negative = true
                i += 1
            }
            let start = i
            var n: Int64 = 0
            while i < b.count, b[i] >= 0x30, b[i] <= 0x39 {
                let (m, o1) = n.multipliedReportingOverflow(by: 10)
                let (s, o2) = negative ? m.subtractingReportingOverflow(Int64(b[i] - 0x30)) : m.addingReportingOverflow(Int64(b[i] - 0x30))
                guard !o1, !o2 else { return nil }
                n = s
                i += 1
            }
            let digits = i - start
            guard digits > 0, !(digits > 1 && b[start] == 0x30), !(negative && n == 0) else { return nil }
            if i < b.count, b[i] == UInt8(ascii: ".") || b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") { return nil }
            return .int(n)
        }

        mutating func string() -> String? {
            i += 1  // the opening quote
            let start = i
            var ascii = true
            while i < b.count {
                let c = b[i]
                if c == UInt8(ascii: "\"") {
                    let bytes = UnsafeBufferPointer(rebasing: b[start..<i])
                    i += 1
                    return ascii ? String(decoding: bytes, as: UTF8.self) : String(validating: bytes, as: UTF8.self)
                }
                if c == UInt8(ascii: "\\") { return escapedString(from: start) }
                if c < 0x20 { return nil }
                if c >= 0x80 { ascii = false }
                i += 1
            }
            return nil
        }

        /// A string with escapes: the bytes so far, then each escape decoded.
        mutating func escapedString(from start: Int) -> String? {
            var out = [UInt8](UnsafeBufferPointer(rebasing: b[start..<i]))
            while i < b.count {
                let c = b[i]
                if c == UInt8(ascii: "\"") {
                    i += 1
                    return String(validating: out, as: UTF8.self)
                }
                if c < 0x20 { return nil }
                guard c == UInt8(ascii: "\\") else {
                    out.append(c)
                    i += 1
                    continue
                }
                guard i + 1 < b.count else { return nil }
                let e = b[i + 1]
                i += 2
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    guard var scalar = hex4() else { return nil }
                    if (0xD800..<0xDC00).contains(scalar) {
                        // A surrogate pair: the low half must follow as another \u escape.
                        guard i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else { return nil }
                        i += 2
                        guard let low = hex4(), (0xDC00..<0xE000).contains(low) else { return nil }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(scalar) {
                        return nil
                    }
                    guard let u = Unicode.Scalar(scalar) else { return nil }
                    out.append(contentsOf: Array(String(Character(u)).utf8))
                default:
                    return nil
                }
            }
            return nil
        }

        mutating func hex4() -> UInt32? {
            guard i + 4 <= b.count else { return nil }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = b[i]
                let d: UInt32
                switch c {
                case 0x30...0x39: d = UInt32(c - 0x30)
                case 0x41...0x46: d = UInt32(c - 0x41 + 10)
                case 0x61...0x66: d = UInt32(c - 0x61 + 10)
                default: return nil
                }
                v = v << 4 | d
                i += 1
            }
            return v
        }

        mutating func array(depth: Int) -> JSONValue? {
            i += 1
            var out: [JSONValue] = []
            skipSpace()
            if i < b.count, b[i] == UInt8(ascii: "]") {
                i += 1
                return .array(out)
            }
            while true {
                guard let v = value(depth: depth + 1) else { return nil }
                out.append(v)
                skipSpace()
                guard i < b.count else { return nil }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
                return nil
            }
        }

        /// A record's top-level object, each known key into its field, typed as JSONDecoder
        /// would take it (`RecordDecodingTests` checks the two agree).
        mutating func record() -> JournalEntry? {
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: "{") else { return nil }
            i += 1
            var seq: Int?, kind: String?, at: Date?
            var e = JournalEntry(seq: 0, kind: "", at: Date(timeIntervalSince1970: 0))
            // Duplicate keys: JSONDecoder's answer for them, whatever it is (a bit per known
            // key; the unknown ones, rare, in a list).
            var seen: UInt32 = 0
            var unknown: [String] = []
            var status: String?
            skipSpace()
            if i < b.count, b[i] == UInt8(ascii: "}") { return nil }
            while true {
                guard let key = key() else { return nil }
                let bit: UInt32
                switch key {
                case "seq": bit = 1 << 0
                case "kind": bit = 1 << 1
                case "at": bit = 1 << 2
                case "name": bit = 1 << 3
                case "value": bit = 1 << 4
                case "data": bit = 1 << 5
                case "attempt": bit = 1 << 6
                case "idempotency_key": bit = 1 << 7
                case "semantics": bit = 1 << 8
                case "started_at": bit = 1 << 9
                case "duration_ms": bit = 1 << 10
                case "until": bit = 1 << 11
                case "phase": bit = 1 << 12
                case "group": bit = 1 << 13
                case "index": bit = 1 << 14
                case "decision": bit = 1 << 15
                case "decided_by": bit = 1 << 16
                case "file": bit = 1 << 17
                case "comment": bit = 1 << 18
                case "status": bit = 1 << 19
                case "resume_from": bit = 1 << 20
                case "error": bit = 1 << 21
                default:
                    guard !unknown.contains(key) else { return nil }
                    unknown.append(key)
                    bit = 0
                }
                guard seen & bit == 0, let v = value(depth: 1) else { return nil }
                seen |= bit
                func str() -> String?? {
                    switch v {
                    case .null: return .some(nil)
                    case .string(let s): return .some(s)
                    default: return nil
                    }
                }
                func int() -> Int?? {
                    switch v {
                    case .null: return .some(nil)
                    case .int(let n): return Int(exactly: n).map { .some($0) } ?? nil
                    default: return nil
                    }
                }
                func date() -> Date?? {
                    switch v {
                    case .null: return .some(nil)
                    case .string(let s): return Timestamp.parse(s).map { .some($0) } ?? nil
                    default: return nil
                    }
                }
                func decoded<T: Decodable>(_: T.Type) -> T?? {
                    if case .null = v { return .some(nil) }
                    return (try? v.decode(as: T.self)).map { .some($0) } ?? nil
                }
                switch key {
                case "seq": guard case .int(let n) = v, let x = Int(exactly: n) else { return nil }; seq = x
                case "kind": guard case .string(let x) = v else { return nil }; kind = x
                case "at": guard case .string(let x) = v, let d = Timestamp.parse(x) else { return nil }; at = d
                case "name": guard let x = str() else { return nil }; e.name = x
                case "value": if case .null = v { e.value = nil } else { e.value = v }
                case "data": if case .null = v { e.data = nil } else { e.data = v }
                case "attempt": guard let x = int() else { return nil }; e.attempt = x
                case "idempotency_key": guard let x = str() else { return nil }; e.idempotencyKey = x
                case "semantics": guard let x = str() else { return nil }; e.semantics = x
                case "started_at": guard let x = date() else { return nil }; e.startedAt = x
                case "duration_ms": guard let x = int() else { return nil }; e.durationMs = x
                case "until": guard let x = date() else { return nil }; e.until = x
                case "phase": guard let x = str() else { return nil }; e.phase = x.map(RecordPhase.init(rawValue:))
                case "group": guard let x = str() else { return nil }; e.group = x
                case "index": guard let x = int() else { return nil }; e.index = x
                case "decision": guard let x = str() else { return nil }; e.decision = x.map(Decision.init(rawValue:))
                case "decided_by": guard let x = decoded(Principal.self) else { return nil }; e.decidedBy = x
                case "file": guard let x = str() else { return nil }; e.file = x
                case "comment": guard let x = str() else { return nil }; e.comment = x
                case "status": guard let x = str() else { return nil }; status = x
                case "resume_from": guard let x = int() else { return nil }; e.resumeFrom = x
                case "error": guard let x = decoded(ErrorInfo.self) else { return nil }; e.error = x
                default: break  // a field this version does not know: ignored, as JSONDecoder ignores it
                }
                skipSpace()
                guard i < b.count else { return nil }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; break }
                return nil
            }
            guard let seq, let kind, let at else { return nil }
            if let status {
                guard let s = RunStatus(rawValue: status) else { return nil }
                e.status = s
            }
            e.seq = seq
            e.kind = RecordKind(rawValue: kind)
            e.at = at
            return e
        }

        /// An object's `"KEY":`, whitespace around it skipped.
        mutating func key() -> String? {
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: "\""), let key = string() else { return nil }
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: ":") else { return nil }
            i += 1
            return key
        }

        mutating func object(depth: Int) -> JSONValue? {
            i += 1
            var out: [String: JSONValue] = [:]
            skipSpace()
            if i < b.count, b[i] == UInt8(ascii: "}") {
                i += 1
                return .object(out)
            }
            while true {
                guard let key = key(), let v = value(depth: depth + 1) else { return nil }
                // Parsers disagree on duplicate keys: JSONDecoder's answer, whatever it is.
                guard out.updateValue(v, forKey: key) == nil else { return nil }
                skipSpace()
                guard i < b.count else { return nil }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
                return nil
            }
        }
    }
}

extension JournalEntry {
    /// This record as canonical JSON, built field by field: what `JSONValue(encoding:)` gives
    /// (JSONEncoder, then the text parsed back — 100 µs of CPU for every step a run records),
    /// without the round trip. `RecordDecodingTests` checks the two agree.
    public func canonicalJSON() throws -> JSONValue {
        var o: [String: JSONValue] = ["seq": .int(Int64(seq)), "kind": .string(kind.rawValue), "at": .string(Timestamp.format(at))]
        if let name { o["name"] = .string(name) }
        if let value { o["value"] = try value.roundTripped() }
        if let error { o["error"] = try JSONValue(encoding: error) }
        if let attempt { o["attempt"] = .int(Int64(attempt)) }
        if let idempotencyKey { o["idempotency_key"] = .string(idempotencyKey) }
        if let semantics { o["semantics"] = .string(semantics) }
        if let startedAt { o["started_at"] = .string(Timestamp.format(startedAt)) }
        if let durationMs { o["duration_ms"] = .int(Int64(durationMs)) }
        if let until { o["until"] = .string(Timestamp.format(until)) }
        if let phase { o["phase"] = .string(phase.rawValue) }
        if let group { o["group"] = .string(group) }
        if let index { o["index"] = .int(Int64(index)) }
        if let decision { o["decision"] = .string(decision.rawValue) }
        if let decidedBy { o["decided_by"] = try JSONValue(encoding: decidedBy) }
        if let file { o["file"] = .string(file) }
        if let comment { o["comment"] = .string(comment) }
        if let status { o["status"] = .string(status.rawValue) }
        if let resumeFrom { o["resume_from"] = .int(Int64(resumeFrom)) }
        if let data { o["data"] = try data.roundTripped() }
        return .object(o)
    }
}

extension JSONValue {
    /// The value as writing it and reading it back gives it: a whole double within Int64's
    /// range reads back as an integer; a NaN or an infinity cannot be written (JSONEncoder
    /// refuses it, and so does this).
    func roundTripped() throws -> JSONValue {
        switch self {
        case .double(let d):
            guard d.isFinite else { throw EncodingError.invalidValue(d, .init(codingPath: [], debugDescription: "\(d) is not valid JSON")) }
            if d == d.rounded(), d >= -9.223372036854775808e18, d < 9.223372036854775808e18 { return .int(Int64(d)) }
            return self
        case .array(let a): return .array(try a.map { try $0.roundTripped() })
        case .object(let o): return .object(try o.mapValues { try $0.roundTripped() })
        default: return self
        }
    }
}
