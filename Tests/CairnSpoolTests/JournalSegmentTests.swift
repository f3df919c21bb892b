import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// Segment files (`FIRST-LAST.jsonl`): the settled part of a long journal moved out of its
/// single record files. The journal reads the same before, during and after a compaction.
@Suite struct JournalSegmentTests {
    static func filled(_ n: Int) throws -> (TempSpool, Journal) {
        let t = try TempSpool()
        let run = try t.submit("w", input: JSONValue.null)
        let j = t.spool.journal(run)
        let base = Date(timeIntervalSince1970: 1_800_000_000.123)
        for i in 1...n {
            var e = JournalEntry(seq: i, kind: i == 1 ? .start : .step, name: i == 1 ? nil : "s\(i)", at: base.addingTimeInterval(Double(i)))
            if i > 1 { e.value = .string("value \(i) " + String(repeating: "x", count: 100)); e.attempt = 1 }
            try j.append(e)
        }
        return (t, j)
    }

    static func names(_ j: Journal) throws -> [String] { try Spool.list(j.directory).sorted() }

    @Test func compactionMovesTheTailIntoASegmentAndReadsTheSame() throws {
        let (t, j) = try Self.filled(25)
        let before = try j.load()
        #expect(try j.compact(threshold: 30) == 25)  // not due: nothing moves
        #expect(try Self.names(j).count == 25)
        #expect(try j.compact(threshold: 10) == 0)
        #expect(try Self.names(j) == ["000001-000025.jsonl"])
        #expect(try j.load() == before)
        // The segment is JSON lines, one record a line, as jq -c prints them.
        let text = try String(contentsOfFile: j.directory.appending("000001-000025.jsonl").string, encoding: .utf8)
        #expect(text.split(separator: "\n").count == 25)
        #expect(text.hasPrefix(#"{"at":"#))
        // More records after it: single files again, then a second segment.
        for i in 26...30 { try j.append(JournalEntry(seq: i, kind: .step, name: "s\(i)", at: Date(timeIntervalSince1970: 1_800_000_100))) }
        let contents = try j.read()
        #expect(contents.entries.count == 30)
        #expect(contents.segmentEnd == 25)
        #expect(contents.tailCount == 5)
        #expect(try j.compact(threshold: 5) == 0)
        #expect(try Self.names(j) == ["000001-000025.jsonl", "000026-000030.jsonl"])
        #expect(try j.load().map(\.seq) == Array(1...30))
        #expect(try Repair.run(t.spool, repair: false).findings.filter { $0.file.contains("journal") }.isEmpty)
    }

    @Test func aCompactionCutShortReadsTheSameAndIsFinished() throws {
        let (t, j) = try Self.filled(12)
        let before = try j.load()
        // As if the process died after the segment's rename, before removing the single files.
        var text = ""
        for e in before[0..<8] { text += try e.canonicalJSON().compactText() + "\n" }
        try t.spool.durable.write(Data(text.utf8), to: j.directory.appending("000001-000008.jsonl"), mode: .noReplace)
        _ = unlink(j.directory.appending(before[0].fileName).string)  // one removal happened
        let c = try j.read()
        #expect(c.entries == before)
        #expect(c.segmentEnd == 8)
        #expect(c.redundant.count == 7)
        #expect(c.tailCount == 4)
        // fsck says so; --repair removes the repeated files.
        let report = try Repair.run(t.spool, repair: true)
        #expect(report.findings.contains { $0.problem.contains("repeat what a segment holds") && $0.repaired != nil })
        #expect(try Self.names(j).count == 5)
        #expect(try j.load() == before)
    }

    @Test func aSingleFileThatDiffersFromItsSegmentIsDamage() throws {
        let (t, j) = try Self.filled(6)
        let before = try j.load()
        try j.compact(threshold: 2)
        var changed = before[2]
        changed.value = .string("not what was recorded")
        try Data(changed.canonicalJSON().canonicalText().utf8).write(to: URL(fileURLWithPath: j.directory.appending(changed.fileName).string))
        #expect(throws: SpoolError.self) { try j.load() }
        let report = try Repair.run(t.spool, repair: true)
        #expect(report.findings.contains { $0.problem.contains("already in a segment, with other content") })
        #expect(try j.load() == before)
    }

    @Test func aDamagedSegmentEndsTheValidPrefix() throws {
        let (t, j) = try Self.filled(10)
        try j.compact(threshold: 2)
        let seg = j.directory.appending("000001-000010.jsonl").string
        #expect(FileManager.default.fileExists(atPath: seg))
        var lines = try String(contentsOfFile: seg, encoding: .utf8).split(separator: "\n").map(String.init)
        lines[4] = String(lines[4].prefix(20))
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: seg))
        let c = try j.readPrefix()
        #expect(c.entries.isEmpty)
        #expect(c.damage.first?.problem.hasPrefix("line 5:") == true)
        // Cut short (no final newline), a line too many, a wrong seq: each named.
        #expect(throws: SpoolError.self) { try Journal.decodeSegment(Data(#"{"at":"2026-01-01T00:00:00.000Z","kind":"start","seq":1}"#.utf8), first: 1, last: 1) }
        #expect(throws: SpoolError.self) { try Journal.decodeSegment(Data("{\"at\":\"2026-01-01T00:00:00.000Z\",\"kind\":\"start\",\"seq\":2}\n".utf8), first: 1, last: 1) }
        withExtendedLifetime(t) {}
    }

    @Test func segmentNamesAreStrict() {
        #expect(Journal.parseSegmentName("000001-001000.jsonl")! == (1, 1000))
        #expect(Journal.parseSegmentName("1000001-1001000.jsonl")! == (1_000_001, 1_001_000))
        for bad in ["000001-001000.json", "1-1000.jsonl", "000010-000001.jsonl", "000000-000001.jsonl", "000001-0001000.jsonl", "000001-001000.jsonl.tmp", "x00001-001000.jsonl"] {
            #expect(Journal.parseSegmentName(bad) == nil, "\(bad)")
        }
    }

    @Test func aWindowReadsOnlyWhatItShows() throws {
        let (t, j) = try Self.filled(30)
        try j.compact(threshold: 10)
        for i in 31...35 { try j.append(JournalEntry(seq: i, kind: .step, name: "s\(i)", at: Date(timeIntervalSince1970: 1_800_000_100))) }
        let all = try j.load()
        #expect(try j.lastPosition() == 35)
        #expect(try j.records(in: 28...35) == Array(all[27...]))
        #expect(try j.records(in: 1...1) == [all[0]])
        #expect(try j.records(in: 40...50).isEmpty)
        withExtendedLifetime(t) {}
    }

    @Test func theSettingIsCheckedAndFailsClosed() throws {
        let t = try TempSpool()
        #expect(try t.spool.config().journalSegmentRecords == SpoolConfig.defaultJournalSegmentRecords)
        try t.setConfig("journal_segment_records", 0)
        #expect(try t.spool.config().journalSegmentRecords == 0)
        for bad: JSONValue in [1, -5, 2.5, "100", [10]] {
            try t.setConfig("journal_segment_records", bad)
            #expect(throws: SpoolError.self, "\(bad)") { try t.spool.config() }
        }
    }

    /// The hand-written timestamp parser gives the format style's time (to well under a
    /// microsecond: the style's own float arithmetic differs in the last bits near 2001), and
    /// format → parse → format gives back the text. Every reader of the runtime's files goes
    /// through `Timestamp.parse`, so they all see the same Date for the same text.
    @Test func writtenTimestampsParseAsTheFormatStyleParsesThem() {
        var rng = SystemRandomNumberGenerator()
        func same(_ text: String) {
            let slow = try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text)
            guard let fast = Timestamp.parse(text), let slow else { Issue.record("\(text) did not parse"); return }
            #expect(abs(fast.timeIntervalSince(slow)) < 1e-6, "\(text)")
            #expect(Timestamp.format(fast) == text)
        }
        for _ in 0..<3000 { same(Timestamp.format(Date(timeIntervalSince1970: Double.random(in: -2_000_000_000...5_000_000_000, using: &rng)))) }
        for _ in 0..<1000 { same(Timestamp.format(Date(timeIntervalSince1970: Double.random(in: 975_000_000...982_000_000, using: &rng)))) }
        for s in ["2024-02-29T23:59:59.999Z", "2000-02-29T00:00:00.000Z", "1970-01-01T00:00:00.000Z", "1969-12-31T23:59:59.999Z", "2001-01-01T00:00:00.001Z"] { same(s) }
        // What the hand-written parser declines, the format style reads as it always did.
        for odd in ["2023-02-29T00:00:00.000Z", "2026-13-01T00:00:00.000Z", "2026-01-01T24:00:00.000Z", "2026-01-01T00:00:00.00xZ", "2026-01-01T00:00:00Z"] {
            let slow = (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(odd)) ?? (try? Date.ISO8601FormatStyle().parse(odd))
            #expect(Timestamp.parse(odd) == slow, "\(odd)")
        }
    }
}
