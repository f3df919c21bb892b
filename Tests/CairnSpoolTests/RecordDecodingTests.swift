import CairnSpool
import CairnTesting
import Foundation
import Testing

/// The fast path for journal records (`RecordJSON.record`) agrees with
/// JSONDecoder on every record: the same entry, or both refuse. What it does not take, it
/// leaves to JSONDecoder.
@Suite struct RecordDecodingTests {
    struct Gen: RandomNumberGenerator {
        var rng: SeededRandom
        mutating func next() -> UInt64 { rng.next() }
    }

    static let pieces = ["a", "é", "日本", "😀", "\"", "\\", "/", "\n", "\t", "\u{0}", "\u{1F}", "\u{7F}", "\u{FFFD}", "\u{2028}", "e\u{301}", " ", "{", "}", "[", ",", ":"]

    static func string(_ g: inout Gen) -> String {
        (0..<Int.random(in: 0...6, using: &g)).map { _ in pieces.randomElement(using: &g)! }.joined()
    }

    static func value(_ g: inout Gen, depth: Int = 0) -> JSONValue {
        switch Int.random(in: 0...(depth > 3 ? 5 : 7), using: &g) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &g))
        case 2: return .int([0, 1, -1, Int64.max, Int64.min, 9_007_199_254_740_993, Int64.random(in: -1_000_000...1_000_000, using: &g)].randomElement(using: &g)!)
        case 3: return .double([0.5, -2.25, 1e300, 3.141592653589793, 1.0e-7, Double.random(in: -1e6...1e6, using: &g)].randomElement(using: &g)!)
        case 4, 5: return .string(string(&g))
        case 6: return .array((0..<Int.random(in: 0...4, using: &g)).map { _ in value(&g, depth: depth + 1) })
        default:
            var o: [String: JSONValue] = [:]
            for _ in 0..<Int.random(in: 0...4, using: &g) { o[string(&g)] = value(&g, depth: depth + 1) }
            return .object(o)
        }
    }

    static func entry(_ g: inout Gen) -> JournalEntry {
        var e = JournalEntry(seq: Int.random(in: 1...2_000_000, using: &g), kind: RecordKind(rawValue: ["step", "llm", "approval", "start", "continue", string(&g)].randomElement(using: &g)!), name: Bool.random(using: &g) ? string(&g) : nil, at: Date(timeIntervalSince1970: (Double.random(in: 0...4_000_000_000, using: &g) * 1000).rounded() / 1000))
        if Bool.random(using: &g) { e.value = value(&g) }
        if Bool.random(using: &g) { e.data = value(&g) }
        if Int.random(in: 0...4, using: &g) == 0 { e.error = ErrorInfo(type: string(&g), message: string(&g), retryable: Bool.random(using: &g)) }
        if Bool.random(using: &g) { e.attempt = Int.random(in: 1...9, using: &g) }
        if Bool.random(using: &g) { e.idempotencyKey = string(&g) }
        if Bool.random(using: &g) { e.startedAt = e.at; e.durationMs = Int.random(in: 0...100_000, using: &g) }
        if Int.random(in: 0...3, using: &g) == 0 { e.until = e.at.addingTimeInterval(60) }
        if Int.random(in: 0...3, using: &g) == 0 { e.phase = "requested"; e.decision = "approved"; e.decidedBy = Principal(uid: 1000, user: string(&g)) }
        if Int.random(in: 0...3, using: &g) == 0 { e.status = RunStatus.completed; e.resumeFrom = 3; e.group = "g"; e.index = 2; e.file = string(&g); e.comment = string(&g); e.semantics = "at_most_once" }
        return e
    }

    static func same(_ data: Data, _ what: String) {
        let fast = Result { try JournalEntry.decode(data, file: nil) }
        let slow = Result { try JournalEntry.decodeWithFoundation(data, file: nil) }
        switch (fast, slow) {
        case (.success(let a), .success(let b)): #expect(a == b, "\(what): \(String(decoding: data, as: UTF8.self))")
        case (.failure, .failure): break
        default: Issue.record("\(what): fast \(fast), JSONDecoder \(slow): \(String(decoding: data, as: UTF8.self).prefix(300))")
        }
    }

    @Test func randomRecordsDecodeAlikeBothWays() throws {
        var g = Gen(rng: SeededRandom("record decoding"))
        var fastTaken = 0
        for _ in 0..<3000 {
            let e = Self.entry(&g)
            let v = try e.canonicalJSON()
            for text in [v.compactText(), v.canonicalText()] {
                let data = Data(text.utf8)
                Self.same(data, "record")
                if RecordJSON.record(data) != nil { fastTaken += 1 }
            }
        }
        // Most records (those without a fractional number) take the fast path.
        #expect(fastTaken > 2000)
    }

    /// Records are written from `JournalEntry.canonicalJSON()`, built field by field: the same
    /// JSON as the Codable round trip (JSONEncoder, then parsed back).
    @Test func recordsEncodeAsTheirCodableRoundTrip() throws {
        var g = Gen(rng: SeededRandom("record encoding"))
        for _ in 0..<3000 {
            var e = Self.entry(&g)
            if Bool.random(using: &g) { e.value = [.double(2.0), .double(-0.0), .double(1e300), .double(0.1), .object(["x": .double(3.0)])] }
            #expect(try e.canonicalJSON() == JSONValue(encoding: e), "\(e)")
        }
        var bad = JournalEntry(seq: 1, kind: .step, at: Date())
        bad.value = .double(.nan)
        #expect(throws: (any Error).self) { try bad.canonicalJSON() }
        #expect(throws: (any Error).self) { try JSONValue(encoding: bad) }
    }

    @Test func oddTextsDecodeAlikeOrAreRefusedAlike() {
        let base = #""at":"2026-11-28T12:00:00.000Z","kind":"step","seq":7"#
        let odd = [
            #"{\#(base),"value":-0}"#, #"{\#(base),"value":01}"#, #"{\#(base),"value":1.0}"#, #"{\#(base),"value":1e3}"#, #"{\#(base),"value":-}"#,
            #"{\#(base),"value":9223372036854775807}"#, #"{\#(base),"value":9223372036854775808}"#, #"{\#(base),"value":-9223372036854775808}"#,
            #"{\#(base),"value":"\ud83d\ude00"}"#, #"{\#(base),"value":"\ud83d"}"#, #"{\#(base),"value":"\ude00x"}"#, #"{\#(base),"value":"\u00e9\/\b"}"#,
            #"{\#(base),"value":"\x"}"#, #"{\#(base),"value":1,"value":2}"#, #"{\#(base),"seq":8}"#, #"{\#(base)} x"#, #"{\#(base),}"#,
            #"{\#(base),"value":[1,]}"#, #"{\#(base),"value":tru}"#, #"{\#(base),"value":nul}"#, #"{\#(base),"attempt":"2"}"#,
            #"{\#(base),"attempt":2.5}"#, #"{\#(base),"status":"nope"}"#, #"{\#(base),"error":{"message":"m"}}"#, #"{\#(base),"at":"yesterday"}"#,
            #"{"at":"2026-11-28T12:00:00Z","kind":"step","seq":7}"#, #"{\#(base),"name":null,"value":null,"data":null}"#, #"{\#(base),"unknown":{"x":[1,{}]}}"#,
            " \n\t{\(base)}\n ", "{\(base)", "", "[]", "7",
        ]
        for text in odd { Self.same(Data(text.utf8), "odd") }
        var invalidUTF8 = Data(#"{\#(base),"value":"#.utf8)
        invalidUTF8.append(contentsOf: [0x22, 0xC3, 0x28, 0x22, 0x7D])
        Self.same(invalidUTF8, "invalid UTF-8")
        var nul = Data(#"{\#(base),"value":"a"#.utf8)
        nul.append(contentsOf: [0x00, 0x22, 0x7D])
        Self.same(nul, "NUL")
        let deep = String(repeating: "[", count: 600) + String(repeating: "]", count: 600)
        Self.same(Data(#"{\#(base),"value":\#(deep)}"#.utf8), "deep")
    }
}
