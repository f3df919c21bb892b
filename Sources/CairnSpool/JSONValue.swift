import Foundation

/// Any JSON value. Cairn stores every record as JSON; this is the type that crosses
/// the journal boundary and the one the canonical writer prints.
public enum JSONValue: Sendable, Hashable {
    /// JSON `null`.
    case null
    /// `true` or `false`.
    case bool(Bool)
    /// A number read or built as a 64-bit integer.
    case int(Int64)
    /// A number read or built as a Double.
    case double(Double)
    /// A string.
    case string(String)
    /// An array.
    case array([JSONValue])
    /// An object (written with sorted keys).
    case object([String: JSONValue])
}

extension JSONValue: Codable {
    /// For JSONValue fields inside Codable types. Containers are tried before scalars, so a
    /// failed attempt (whose error costs time in proportion to the nesting depth in
    /// Foundation's decoder) is at most one per level. Bytes from outside are parsed by
    /// `parse`, which is linear in their size whatever their shape.
    public init(from decoder: any Decoder) throws {
        if let k = try? decoder.container(keyedBy: AnyKey.self) {
            var o: [String: JSONValue] = [:]
            for key in k.allKeys { o[key.stringValue] = try k.decode(JSONValue.self, forKey: key) }
            self = .object(o)
            return
        }
        if var u = try? decoder.unkeyedContainer() {
            var a: [JSONValue] = []
            if let n = u.count { a.reserveCapacity(n) }
            while !u.isAtEnd { a.append(try u.decode(JSONValue.self)) }
            self = .array(a)
            return
        }
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null; return }
        if let b = try? c.decode(Bool.self) { self = .bool(b); return }
        if let i = try? c.decode(Int64.self) { self = .int(i); return }
        if let d = try? c.decode(Double.self) {
            // A whole number in Int64's range is `.int`, however it was written (as
            // `parseUntrusted` reads it): "9333333333333333.3" is the double
            // 9333333333333334, whose canonical text reads back as an integer.
            if d == d.rounded(), d >= -9.223372036854775808e18, d < 9.223372036854775808e18 {
                self = .int(Int64(d))
            } else {
                self = .double(d)
            }
            return
        }
        if let s = try? c.decode(String.self) { self = .string(s); return }
        throw DecodingError.dataCorruptedError(in: c, debugDescription: "not a JSON value")
    }

    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// Writes the value as JSON (integers as integers, doubles as doubles).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral, ExpressibleByFloatLiteral
{
    /// A JSON string.
    public init(stringLiteral value: String) { self = .string(value) }
    /// A JSON integer.
    public init(integerLiteral value: Int64) { self = .int(value) }
    /// A JSON boolean.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// A JSON number with a fraction.
    public init(floatLiteral value: Double) { self = .double(value) }
    /// A JSON array.
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    /// A JSON object (a later duplicate key replaces an earlier one).
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { $1 }))
    }
    /// JSON `null`.
    public init(nilLiteral: ()) { self = .null }
}

extension JSONValue {
    /// The string, if this is one.
    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    /// The integer, if this is one or a double with no fraction below 2^53.
    public var intValue: Int64? {
        switch self {
        case .int(let i): return i
        case .double(let d) where d.rounded() == d && abs(d) < 9.0e15: return Int64(d)
        default: return nil
        }
    }
    /// The number, if this is an integer or a double.
    public var doubleValue: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }
    /// The boolean, if this is one.
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    /// The elements, if this is an array.
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
    /// The members, if this is an object.
    public var objectValue: [String: JSONValue]? { if case .object(let o) = self { return o } else { return nil } }
    /// The JSON kind, as people say it: `null`, `boolean`, `number`, `string`, `array`, `object`.
    public var kindName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .int, .double: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }

    /// Whether this is `null`.
    public var isNull: Bool { if case .null = self { return true } else { return false } }

    /// The member `key` of an object; nil for a missing key or a value that is not an object.
    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }
}

// MARK: - Canonical text

extension JSONValue {
    /// The canonical form of every file Cairn writes: UTF-8, two-space indentation, keys
    /// sorted, `"key": value`, every top-level field on its own line, a trailing newline.
    /// `grep '"status"' runs/*/state.json` therefore reads one line per file.
    public func canonicalText() -> String {
        var out = ""
        out.reserveCapacity(256)
        Self.write(self, into: &out, indent: 0, pretty: true)
        out.append("\n")
        return out
    }

    /// Compact canonical form (sorted keys, no whitespace): used for hashing and for
    /// one-line output such as `ls --json` streams.
    public func compactText() -> String {
        var out = ""
        Self.write(self, into: &out, indent: 0, pretty: false)
        return out
    }

    /// `canonicalText()` as UTF-8 bytes (what content hashes are taken of).
    public func canonicalData() -> Data { Data(canonicalText().utf8) }

    private static func write(_ v: JSONValue, into out: inout String, indent: Int, pretty: Bool) {
        switch v {
        case .null: out.append("null")
        case .bool(let b): out.append(b ? "true" : "false")
        case .int(let i): out.append(String(i))
        case .double(let d):
            if !d.isFinite {
                out.append("null")
            } else if d.rounded() == d && abs(d) < 9.0e15 {
                out.append(String(Int64(d)))
            } else {
                out.append("\(d)")
            }
        case .string(let s): writeString(s, into: &out)
        case .array(let a):
            if a.isEmpty { out.append("[]"); return }
            out.append("[")
            for (i, e) in a.enumerated() {
                if i > 0 { out.append(",") }
                if pretty { newline(&out, indent + 1) }
                write(e, into: &out, indent: indent + 1, pretty: pretty)
            }
            if pretty { newline(&out, indent) }
            out.append("]")
        case .object(let o):
            if o.isEmpty { out.append("{}"); return }
            out.append("{")
            // By UTF-8 bytes: a total order on the keys as written. (String's `<` follows
            // Unicode equivalence, and over keys with combining marks it did not give one
            // order: a value and its copy read back from this text sorted differently.)
            for (i, key) in o.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }).enumerated() {
                if i > 0 { out.append(",") }
                if pretty { newline(&out, indent + 1) }
                writeString(key, into: &out)
                out.append(pretty ? ": " : ":")
                write(o[key]!, into: &out, indent: indent + 1, pretty: pretty)
            }
            if pretty { newline(&out, indent) }
            out.append("}")
        }
    }

    private static func newline(_ out: inout String, _ indent: Int) {
        out.append("\n")
        out.append(String(repeating: "  ", count: indent))
    }

    private static func writeString(_ s: String, into out: inout String) {
        out.append("\"")
        let plain = s.utf8.withContiguousStorageIfAvailable { buf in
            !buf.contains { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C || $0 == 0xE2 }
        } ?? false
        if plain {
            out.append(s)
            out.append("\"")
            return
        }
        for u in s.unicodeScalars {
            switch u {
            case "\"": out.append("\\\"")
            case "\\": out.append("\\\\")
            case "\n": out.append("\\n")
            case "\r": out.append("\\r")
            case "\t": out.append("\\t")
            case "\u{08}": out.append("\\b")
            case "\u{0C}": out.append("\\f")
            default:
                if u.value < 0x20 || u.value == 0x2028 || u.value == 0x2029 {
                    out.append("\\u")
                    let hex = String(u.value, radix: 16)
                    out.append(String(repeating: "0", count: 4 - hex.count) + hex)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out.append("\"")
    }
}

// MARK: - Parsing and Codable bridges

extension JSONValue {
    /// Parses JSON text. Throws `SpoolError.malformed` naming `file` when given.
    ///
    /// JSONDecoder does the parsing: every number exactly as written (a double to the
    /// nearest value, as jq reads it), so what the runtime wrote reads back bit for bit and
    /// replay sees what execution saw. Its cost grows fast with nesting depth, so bytes from
    /// outside go through `parseUntrusted`. `maxDepth` refuses deeper nesting.
    public static func parse(_ data: Data, file: String? = nil, maxDepth: Int? = nil) throws -> JSONValue {
        if let maxDepth, let depth = nestingDepth(data, above: maxDepth) {
            throw SpoolError(.malformed, path: file, "not valid JSON here: nested \(depth) levels deep or more (at most \(maxDepth))")
        }
        // JSONDecoder stops at a NUL byte and ignores what follows; a NUL is never JSON.
        if data.contains(0) { throw SpoolError(.malformed, path: file, "not valid JSON: a NUL byte") }
        do {
            return try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            throw SpoolError(.malformed, path: file, "not valid JSON: \(Self.describe(error))")
        }
    }

    /// Parses what people drop (inbox, decisions, events): Foundation's JSONSerialization,
    /// linear in the input whatever its shape (JSONDecoder into this enum took seconds for a
    /// few KB nested some hundred levels deep). Numbers: a value exactly representable as
    /// Int64 is `.int` (`1.0`, `1e3`), any other `.double` — which JSONSerialization on Linux
    /// may read one unit in the last place off for 17-digit doubles (0.30000000000000004);
    /// the recorded value is then what the journal keeps and every replay reads.
    public static func parseUntrusted(_ data: Data, file: String? = nil, maxDepth: Int? = nil) throws -> JSONValue {
        if let maxDepth, let depth = nestingDepth(data, above: maxDepth) {
            throw SpoolError(.malformed, path: file, "not valid JSON here: nested \(depth) levels deep or more (at most \(maxDepth))")
        }
        if data.contains(0) { throw SpoolError(.malformed, path: file, "not valid JSON: a NUL byte") }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            let why = ((error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String) ?? "\(error)"
            throw SpoolError(.malformed, path: file, "not valid JSON: \(why)")
        }
        guard let v = JSONValue(foundation: object) else {
            throw SpoolError(.malformed, path: file, "not valid JSON: a number out of range")
        }
        return v
    }

    /// How deep people's drops (inbox submissions, decisions, events) may nest: ample for
    /// any real document, and a bound on what one costs to decode into a workflow's types.
    public static let dropDepthLimit = 64

    /// The nesting depth of `data` when it exceeds `limit` (counted outside strings, in one
    /// pass), else nil.
    public static func nestingDepth(_ data: Data, above limit: Int) -> Int? {
        var depth = 0, inString = false, escaped = false
        for b in data {
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch b {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > limit { return depth }
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth -= 1
            default: break
            }
        }
        return nil
    }

    /// A JSONSerialization result as a JSONValue (nil for a number Swift cannot hold).
    /// Containers are matched first: asking whether a Swift array or dictionary is an
    /// NSNumber or NSNull bridges it, deeply — quadratic in the depth (0.2 s for 500 levels).
    init?(foundation x: Any) {
        switch x {
        case let a as [Any]:
            var out: [JSONValue] = []
            out.reserveCapacity(a.count)
            for e in a {
                guard let v = JSONValue(foundation: e) else { return nil }
                out.append(v)
            }
            self = .array(out)
        case let o as [String: Any]:
            var out: [String: JSONValue] = [:]
            out.reserveCapacity(o.count)
            for (k, e) in o {
                guard let v = JSONValue(foundation: e) else { return nil }
                out[k] = v
            }
            self = .object(out)
        case is NSNull: self = .null
        case let s as String: self = .string(s)
        case let n as NSNumber:
            switch String(cString: n.objCType) {
            case "c", "B": self = .bool(n.boolValue)
            case "d", "f":
                let d = n.doubleValue
                guard d.isFinite else { return nil }
                if d == d.rounded(), d >= -9.223372036854775808e18, d < 9.223372036854775808e18 {
                    self = .int(Int64(d))
                } else {
                    self = .double(d)
                }
            case "Q", "L":
                let u = n.uint64Value
                self = u <= UInt64(Int64.max) ? .int(Int64(u)) : .double(Double(u))
            default: self = .int(n.int64Value)
            }
        default: return nil
        }
    }

    /// Parses JSON text that someone wrote by hand or dropped (configuration, a value given
    /// to a command): as `parse`, and a key twice in one object (at any depth) is an error,
    /// since parsers disagree on which one counts and what Cairn reads would differ from
    /// what `jq` shows.
    public static func parseRejectingDuplicateKeys(_ data: Data, file: String? = nil) throws -> JSONValue {
        let v = try parse(data, file: file)
        if let problem = duplicateKeyProblem(in: data) { throw SpoolError(.malformed, path: file, problem) }
        return v
    }

    /// "has the key "K" twice in one object (…)" when `data` has a duplicate key, else nil:
    /// the one wording of that refusal, for drops, configuration and command arguments.
    public static func duplicateKeyProblem(in data: Data) -> String? {
        duplicateKey(in: data).map { "has the key \"\(Names.printable($0))\" twice in one object (tools disagree on which one counts)" }
    }

    /// Parses JSON text the runtime wrote, exactly (see `parse(_:file:maxDepth:)` on `Data`);
    /// `file` names it in errors.
    public static func parse(_ text: String, file: String? = nil) throws -> JSONValue {
        try parse(Data(text.utf8), file: file)
    }

    /// Parses JSON text from outside, in linear time (see `parseUntrusted(_:file:maxDepth:)` on
    /// `Data`); `file` names it in errors.
    public static func parseUntrusted(_ text: String, file: String? = nil) throws -> JSONValue {
        try parseUntrusted(Data(text.utf8), file: file)
    }

    /// Converts any Encodable into a JSONValue (dates as ISO-8601 with milliseconds).
    public init<T: Encodable>(encoding value: T) throws {
        if let v = value as? JSONValue { self = v; return }
        let data = try JSONCoding.encoder.encode(value)
        self = try JSONValue.parse(data)
    }

    /// Decodes this value as `T`.
    public func decode<T: Decodable>(as type: T.Type = T.self) throws -> T {
        if let v = self as? T { return v }
        // The common scalars without a round trip through text (a long run's replay decodes
        // one value per recorded step).
        switch self {
        case .string(let s): if let v = s as? T { return v }
        case .int(let i): if T.self == Int.self, let v = Int(exactly: i) as? T { return v } else if let v = i as? T { return v }
        case .bool(let b): if let v = b as? T { return v }
        default: break
        }
        let data = Data(compactText().utf8)
        return try JSONCoding.decoder.decode(T.self, from: data)
    }

    /// A decoding error in a sentence: what is missing or mistyped, and where.
    public static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let ctx):
            return ctx.debugDescription + ((ctx.underlyingError).map { " (\($0))" } ?? "")
        case DecodingError.keyNotFound(let key, let ctx):
            return "missing field '\(key.stringValue)'" + pathSuffix(ctx.codingPath)
        case DecodingError.typeMismatch(let type, let ctx):
            return "expected \(type)" + pathSuffix(ctx.codingPath) + ": " + ctx.debugDescription
        case DecodingError.valueNotFound(let type, let ctx):
            return "null where \(type) was expected" + pathSuffix(ctx.codingPath)
        default:
            return "\(error)"
        }
    }

    private static func pathSuffix(_ path: [any CodingKey]) -> String {
        path.isEmpty ? "" : " at " + path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }
}

extension JSONValue {
    /// The first object key that appears twice in the same object of `data` (already known
    /// to be valid JSON), or nil. Parsers disagree on duplicates (JSONDecoder kept the
    /// first, JSONSerialization and jq keep the last, others refuse), so what people drop must not have them: what Cairn reads
    /// would differ from what `jq` shows.
    public static func duplicateKey(in data: Data) -> String? {
        let bytes = [UInt8](data)
        // Per open container: nil for an array, the keys seen so far for an object. Keys are
        // compared as Swift strings: two that are canonically equivalent ("é" precomposed
        // and decomposed) are one key to Cairn's readers (a Swift dictionary keeps one of
        // them) and two to jq, so they are a duplicate too.
        var stack: [Set<String>?] = []
        var expectKey = false
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "{"):
                stack.append([])
                expectKey = true
            case UInt8(ascii: "["):
                stack.append(nil)
                expectKey = false
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = stack.popLast()
                expectKey = false
            case UInt8(ascii: ","):
                expectKey = stack.last.map { $0 != nil } ?? false
            case UInt8(ascii: "\""):
                var j = i + 1
                var escaped = false
                while j < bytes.count, bytes[j] != UInt8(ascii: "\"") {
                    if bytes[j] == UInt8(ascii: "\\") { escaped = true; j += 1 }
                    j += 1
                }
                if expectKey, var keys = stack.last ?? nil {
                    var key = String(decoding: bytes[(i + 1)..<min(j, bytes.count)], as: UTF8.self)
                    if escaped, let s = try? JSONDecoder().decode(String.self, from: Data(bytes[i...min(j, bytes.count - 1)])) { key = s }
                    if !keys.insert(key).inserted { return key }
                    stack[stack.count - 1] = keys
                    expectKey = false
                }
                i = j
            default:
                break
            }
            i += 1
        }
        return nil
    }
}

/// The encoder and decoder every record goes through: ISO-8601 dates with milliseconds.
public enum JSONCoding {
    /// A new encoder: sorted keys, unescaped slashes, `Timestamp` dates.
    public static var encoder: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .custom { date, enc in
            var c = enc.singleValueContainer()
            try c.encode(Timestamp.format(date))
        }
        return e
    }

    /// A new decoder reading `Timestamp` dates (with or without milliseconds).
    public static var decoder: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .custom { dec in
            let c = try dec.singleValueContainer()
            let s = try c.decode(String.self)
            guard let date = Timestamp.parse(s) else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an ISO-8601 time: \(s)")
            }
            return date
        }
        return d
    }
}

/// ISO-8601 UTC timestamps with milliseconds: `2026-11-27T09:17:28.123Z`.
public enum Timestamp {
    /// The exact form `format` writes, `YYYY-MM-DDTHH:MM:SS.mmmZ`, parsed by hand (a journal
    /// holds two or three per record, and a long run's replay reads them all: the
    /// format style took most of a record's decoding time); nil for any other text, which
    /// the format style then reads. Gives the same `Date` as the format style.
    static func parseWritten(_ s: String) -> Date? {
        var s = s
        return s.withUTF8 { b -> Date? in
            guard b.count == 24, b[4] == 0x2D, b[7] == 0x2D, b[10] == 0x54, b[13] == 0x3A, b[16] == 0x3A, b[19] == 0x2E, b[23] == 0x5A else { return nil }
            func num(_ from: Int, _ count: Int) -> Int? {
                var n = 0
                for i in from..<(from + count) {
                    let d = Int(b[i]) - 48
                    guard d >= 0 && d <= 9 else { return nil }
                    n = n * 10 + d
                }
                return n
            }
            // Years from 1583 on: before the Gregorian reform the format style counts in the
            // Julian calendar (found by `make fuzz`: year 20 moved by two days), so those go to it.
            guard let y = num(0, 4), y >= 1583, let mo = num(5, 2), let d = num(8, 2), let h = num(11, 2), let mi = num(14, 2), let sec = num(17, 2), let ms = num(20, 3),
                  (1...12).contains(mo), d >= 1, d <= daysIn(month: mo, year: y), h < 24, mi < 60, sec < 60 else { return nil }
            // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
            let yy = mo <= 2 ? y - 1 : y
            let era = (yy >= 0 ? yy : yy - 399) / 400
            let yoe = yy - era * 400
            let doy = (153 * (mo > 2 ? mo - 3 : mo + 9) + 2) / 5 + d - 1
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
            let days = era * 146097 + doe - 719468
            let seconds = days * 86400 + h * 3600 + mi * 60 + sec
            // From the reference date, as the format style counts (1970-based sums differ from
            // its Date in the last bits about one time in three).
            return Date(timeIntervalSinceReferenceDate: Double(seconds - 978_307_200) + Double(ms) / 1000)
        }
    }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// The date as `2026-11-27T09:17:28.123Z`, rounded to the millisecond.
    public static func format(_ date: Date) -> String {
        // Rounded to the millisecond, and the milliseconds written from that integer, so that
        // parse → format gives back the same text. (Formatting the Date itself truncates its
        // fraction: ms / 1000 lands a hair below the millisecond about one time in five at
        // today's times, where a Double's resolution is ~0.2 µs, and a millisecond was lost.)
        let ms = Int64((date.timeIntervalSince1970 * 1000).rounded())
        let millis = ((ms % 1000) + 1000) % 1000
        let whole = Date(timeIntervalSince1970: Double((ms - millis) / 1000)).formatted(Date.ISO8601FormatStyle())
        return whole.dropLast() + "." + String(millis + 1000).dropFirst() + "Z"
    }

    /// An ISO-8601 time, with or without fractional seconds; nil when malformed.
    public static func parse(_ s: String) -> Date? {
        if let d = parseWritten(s) { return d }
        if let d = try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(s) { return d }
        return try? Date.ISO8601FormatStyle().parse(s)
    }
}

extension JSONValue: CustomStringConvertible {
    /// The compact JSON text.
    public var description: String { compactText() }
}
