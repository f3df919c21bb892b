import CairnSpool
import CairnTesting
import Foundation
import Testing

/// JSON from outside is parsed in time linear in its size, whatever its shape; numbers keep
/// their old reading; drops may nest at most `JSONValue.dropDepthLimit` levels.
@Suite struct JSONParseTests {
    static func alternating(_ depth: Int) -> String { HostileJSON.alternatingNesting(depth) }

    @Test func numbersReadAsBeforeIntegersExactlyElseDoubles() throws {
        let v = try JSONValue.parseUntrusted(#"[1.0, 1e3, 1.5, 9223372036854775807, 9223372036854775808, -0, -7, 0.1, true, false, 1, 0, null, "1"]"#)
        #expect(v == [.int(1), .int(1000), .double(1.5), .int(Int64.max), .double(9.223372036854775808e18), .int(0), .int(-7), .double(0.1), .bool(true), .bool(false), .int(1), .int(0), .null, .string("1")])
        #expect(try JSONValue.parse("\"\\u00e9\\n\"") == .string("é\n"))
        #expect(try JSONValue.parse("42") == .int(42), "a top-level scalar is JSON too")
        #expect(throws: SpoolError.self) { try JSONValue.parse("1e400") }
        #expect(throws: SpoolError.self) { try JSONValue.parse("{not json") }
    }

    @Test func deepNestingIsParsedInLinearTimeAndDecodedIntoCodableTypes() throws {
        // Before: JSONDecoder into JSONValue took ~0.5 s (release) for one 500-deep value
        // of alternating arrays and objects, and grew as the cube of the depth.
        let text = Self.alternating(500)
        let clock = ContinuousClock()
        var parsed: JSONValue = .null
        let took = try clock.measure { parsed = try JSONValue.parseUntrusted(text) }
        var depth = 0, v = parsed
        while true {
            if case .array(let a) = v, let f = a.first { v = f } else if case .object(let o) = v, let f = o["k"] { v = f } else { break }
            depth += 1
        }
        #expect(depth == 500 && v == .int(1))
        print("JSONParseTests: a 500-deep value (\(text.utf8.count) bytes) parsed in \(took)")
        // The canonical text round-trips.
        #expect(try JSONValue.parse(parsed.canonicalText()) == parsed)
        // JSONValue inside a Codable type (a workflow's input) decodes too.
        struct Input: Codable, Equatable { var data: JSONValue }
        let input = try JSONValue.object(["data": JSONValue.parse(Self.alternating(64))]).decode(as: Input.self)
        #expect(input.data == (try JSONValue.parse(Self.alternating(64))))
    }

    @Test func whatTheRuntimeWroteReadsBackExactly() throws {
        // JSONSerialization (drops) may read a 17-digit double one ulp off; records written
        // by the runtime are read with the exact parser, so replay sees what execution saw.
        for d in [0.30000000000000004, 0.1, 19.99, 1.2345678901234568e+29, Double.leastNonzeroMagnitude, 1.7976931348623157e308] {
            let text = JSONValue.double(d).canonicalText()
            #expect(try JSONValue.parse(text) == .double(d), "\(text)")
        }
        #expect(try JSONValue.parse("[1.0, 1e3, 1.5, -0]") == (try JSONValue.parseUntrusted("[1.0, 1e3, 1.5, -0]")))
    }

    /// "é" written precomposed and decomposed are two keys to jq and to the bytes, one key
    /// to a Swift dictionary: the reader kept one of them silently. They are a duplicate key
    /// (found by the `drop` fuzz target's member-count invariant).
    @Test func canonicallyEquivalentKeysAreADuplicateKey() throws {
        let text = "{\"caf\u{E9}\": \"approve\", \"cafe\u{301}\": \"reject\"}"
        #expect(try JSONValue.parseUntrusted(text).objectValue?.count == 1, "the reader merges them (why they must be refused)")
        #expect(JSONValue.duplicateKey(in: Data(text.utf8)) != nil)
        #expect(throws: SpoolError.self) { try JSONValue.parseRejectingDuplicateKeys(Data(text.utf8)) }
        // Escaped and raw forms of one key, too.
        #expect(JSONValue.duplicateKey(in: Data(#"{"caf\u00e9": 1, "cafe\u0301": 2}"#.utf8)) != nil)
        // Distinct keys stay distinct.
        #expect(JSONValue.duplicateKey(in: Data("{\"caf\u{E9}\": 1, \"cafe\": 2, \"CAF\u{C9}\": 3}".utf8)) == nil)
    }

    /// A number written with a fraction whose nearest double is a whole number (beyond 2^53)
    /// was `.double` when read, and its canonical text ("9.333333333333334e+15") read back as
    /// `.int`: what the runtime wrote did not read back as the same value. Read like
    /// `parseUntrusted` reads it, a whole number in Int64's range is `.int` (found by the
    /// `journal` fuzz target's round-trip invariant).
    @Test func theExactParserReadsAWholeDoubleAsAnInteger() throws {
        let v = try JSONValue.parse("9333333333333333.333333333333333333")
        #expect(v == .int(9_333_333_333_333_334))
        #expect(try JSONValue.parse(v.canonicalText()) == v)
        #expect(try JSONValue.parse("[1e300, 0.5, 9223372036854775808.5, -9.5e18]") == [.double(1e300), .double(0.5), .double(9.223372036854775808e18), .double(-9.5e18)])
        #expect(try JSONValue.parse("[-9223372036854775808.0, 4.0]") == [.int(Int64.min), .int(4)])
    }

    /// JSONDecoder stopped at a NUL byte and ignored the rest: `9\0\0\0:` read as 9, and
    /// `{"format": 1}\0{…}` as its first object, where jq refuses the file. A NUL is never
    /// valid JSON (outside strings it is no token, inside them a raw control character), so
    /// such a file is refused (found by the `journal` fuzz target's member-count invariant).
    @Test func aNulByteIsNeverJSON() throws {
        for text in ["9\u{0}\u{0}\u{0}:", "{\"format\": 1}\u{0}{\"approvers\": 1}", "\"a\u{0}b\"", "[1]\u{0}"] {
            #expect(throws: SpoolError.self, "\(text.debugDescription)") { try JSONValue.parse(Data(text.utf8)) }
            #expect(throws: SpoolError.self, "\(text.debugDescription)") { try JSONValue.parseRejectingDuplicateKeys(Data(text.utf8)) }
            #expect(throws: SpoolError.self, "\(text.debugDescription)") { try JSONValue.parseUntrusted(Data(text.utf8)) }
        }
        #expect(try JSONValue.parse(#"["\u0000"]"#) == ["\u{0}"], "an escaped NUL is a character like any other")
    }

    @Test func nestingDepthCountsOutsideStringsOnly() {
        #expect(JSONValue.nestingDepth(Data(Self.alternating(64).utf8), above: 64) == nil)
        #expect(JSONValue.nestingDepth(Data(Self.alternating(65).utf8), above: 64) == 65)
        let inString = "[\"" + String(repeating: "[", count: 100) + "\\\"[[[\"]"
        #expect(JSONValue.nestingDepth(Data(inString.utf8), above: 2) == nil)
        #expect(throws: SpoolError.self) { try JSONValue.parse(Data(Self.alternating(65).utf8), maxDepth: 64) }
    }

    @Test func aDropNestedDeeperThanTheLimitIsRefused() throws {
        let t = try TempSpool()
        let dir = t.spool.root.appending("inbox")
        try Self.alternating(JSONValue.dropDepthLimit + 1).write(toFile: dir.appending("deep.approved").string, atomically: true, encoding: .utf8)
        try ("{\"value\": " + Self.alternating(JSONValue.dropDepthLimit - 1) + "}").write(toFile: dir.appending("ok.approved").string, atomically: true, encoding: .utf8)
        guard case .refused(_, let reason, _) = Drops.read(dir.appending("deep.approved"), limit: 1 << 20) else {
            Issue.record("a 65-deep drop was accepted")
            return
        }
        #expect(reason.contains("nests 65 levels deep or more (at most 64)"), "\(reason)")
        guard case .valid = Drops.read(dir.appending("ok.approved"), limit: 1 << 20) else {
            Issue.record("a 64-deep drop was refused")
            return
        }
    }
}
