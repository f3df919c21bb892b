import Foundation

// Reading journal records fast. A long run's restart reads every record (100,000 of them for
// a 100,000-step agent), and Foundation's decoders take 20–30 µs per ~430-byte record on
// Linux (measured with `cairn-bench decode`: JSONDecoder 22–28 µs, JSONSerialization 10 µs
// before any conversion, JSONValue.parse 60 µs), three times the whole budget of a resume
// in under a second. No faster JSON package is available to this project. So records the
// runtime wrote take a narrow, strict path: `RecordJSON.parse` reads the JSON subset the
// runtime writes, and `JournalEntry(record:)` takes the fields from it. Anything outside
// that subset — a number with a fraction or an exponent, an escape it does not know, bytes
// that are not UTF-8, a duplicate key, a field of an unexpected type — makes either return
// nil, and the record is decoded by JSONDecoder as before (which also writes the errors).
// `RecordDecodingTests` checks the two paths agree, record by record.

/// A strict reader of the JSON subset the runtime writes: objects, arrays, strings, `true`,
/// `false`, `null` and integers that fit in an Int64, with any JSON whitespace between
/// tokens. Nil for anything else (the caller falls back to JSONDecoder).
package enum RecordJSON {
    package static func parse(_ data: Data) -> JSONValue? {
        data.withUnsafeBytes { raw -> JSONValue? in
            let b = raw.bindMemory(to: UInt8.self)
            var r = Reader(b: b, i: 0)
            guard let v = r.value(depth: 0) else { return nil }
            r.skipSpace()
            return r.i == b.count ? v : nil
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

        mutating func object(depth: Int) -> JSONValue? {
            i += 1
            var out: [String: JSONValue] = [:]
            skipSpace()
            if i < b.count, b[i] == UInt8(ascii: "}") {
                i += 1
                return .object(out)
            }
            while true {
                skipSpace()
                guard i < b.count, b[i] == UInt8(ascii: "\""), let key = string() else { return nil }
                skipSpace()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { return nil }
                i += 1
                guard let v = value(depth: depth + 1) else { return nil }
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
    /// The record in a parsed object, with the fields JSONDecoder would give it; nil when a
    /// field has a type this path does not take (JSONDecoder then decodes it, or says why not).
    package init?(record v: JSONValue) {
        guard case .object(let o) = v,
              case .int(let seq)? = o["seq"], let seqInt = Int(exactly: seq),
              case .string(let kind)? = o["kind"],
              case .string(let atText)? = o["at"], let at = Timestamp.parse(atText) else { return nil }
        self.init(seq: seqInt, kind: RecordKind(rawValue: kind), at: at)
        func string(_ k: String) -> String?? {
            switch o[k] {
            case nil, .null?: return .some(nil)
            case .string(let s)?: return .some(s)
            default: return nil
            }
        }
        func int(_ k: String) -> Int?? {
            switch o[k] {
            case nil, .null?: return .some(nil)
            case .int(let n)?: return Int(exactly: n).map { .some($0) } ?? nil
            default: return nil
            }
        }
        func date(_ k: String) -> Date?? {
            switch o[k] {
            case nil, .null?: return .some(nil)
            case .string(let s)?: return Timestamp.parse(s).map { .some($0) } ?? nil
            default: return nil
            }
        }
        func decoded<T: Decodable>(_ k: String, _: T.Type) -> T?? {
            switch o[k] {
            case nil, .null?: return .some(nil)
            case let x?: return (try? x.decode(as: T.self)).map { .some($0) } ?? nil
            }
        }
        guard let name = string("name"), let idempotencyKey = string("idempotency_key"), let semantics = string("semantics"),
              let group = string("group"), let file = string("file"), let comment = string("comment"),
              let phase = string("phase"), let decision = string("decision"), let status = string("status"),
              let attempt = int("attempt"), let durationMs = int("duration_ms"), let index = int("index"), let resumeFrom = int("resume_from"),
              let startedAt = date("started_at"), let until = date("until"),
              let error = decoded("error", ErrorInfo.self), let decidedBy = decoded("decided_by", Principal.self) else { return nil }
        let runStatus: RunStatus?
        if let status {
            guard let s = RunStatus(rawValue: status) else { return nil }
            runStatus = s
        } else {
            runStatus = nil
        }
        self.name = name
        self.idempotencyKey = idempotencyKey
        self.semantics = semantics
        self.group = group
        self.file = file
        self.comment = comment
        self.phase = phase.map(RecordPhase.init(rawValue:))
        self.decision = decision.map(Decision.init(rawValue:))
        self.status = runStatus
        self.attempt = attempt
        self.durationMs = durationMs
        self.index = index
        self.resumeFrom = resumeFrom
        self.startedAt = startedAt
        self.until = until
        self.error = error
        self.decidedBy = decidedBy
        if case .null? = o["value"] { self.value = nil } else { self.value = o["value"] }
        if case .null? = o["data"] { self.data = nil } else { self.data = o["data"] }
    }
}
