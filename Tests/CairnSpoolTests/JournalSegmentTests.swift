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

    /// What a daemon serving a script's helpers asks before reusing its loaded journal:
    /// whether any record at a position or later is on disk, in a file or a segment.
    @Test func holdsPositionSeesFilesAndSegments() throws {
        let (t, j) = try Self.filled(12)
        defer { withExtendedLifetime(t) {} }
        #expect(try j.holdsPosition(atLeast: 12))
        #expect(try !j.holdsPosition(atLeast: 13))
        #expect(try j.compact(threshold: 5) == 0)  // 000001-000012.jsonl
        #expect(try j.holdsPosition(atLeast: 12))
        #expect(try !j.holdsPosition(atLeast: 13))
        try j.append(JournalEntry(seq: 13, kind: .step, name: "1234", at: Date(timeIntervalSince1970: 1_800_000_100)))
        #expect(try j.holdsPosition(atLeast: 13))
        #expect(try !j.holdsPosition(atLeast: 14))
    }

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
        #expect(c.entries.map(\.seq) == [1, 2, 3, 4])  // the lines before the damage
        #expect(c.damage.first?.problem.hasPrefix("line 5:") == true)
        #expect(c.damage.first?.keptThrough == 4)
        // Cut short (no final newline), a line too many, a wrong seq: each named.
        #expect(throws: SpoolError.self) { try Journal.decodeSegment(Data(#"{"at":"2026-01-01T00:00:00.000Z","kind":"start","seq":1}"#.utf8), first: 1, last: 1) }
        #expect(throws: SpoolError.self) { try Journal.decodeSegment(Data("{\"at\":\"2026-01-01T00:00:00.000Z\",\"kind\":\"start\",\"seq\":2}\n".utf8), first: 1, last: 1) }
        withExtendedLifetime(t) {}
    }

    /// Found by an outside attack: one bad line made `fsck --repair` set the whole segment
    /// aside, and the steps recorded on the good lines before it ran again (at-most-once ones
    /// too). The lines before the damage stay in the journal.
    @Test func repairKeepsTheRecordsBeforeADamagedLine() throws {
        let (t, j) = try Self.filled(10)
        let before = try j.load()
        try j.compact(threshold: 2)
        let seg = j.directory.appending("000001-000010.jsonl").string
        var lines = try String(contentsOfFile: seg, encoding: .utf8).split(separator: "\n").map(String.init)
        lines[7] = lines[7].replacingOccurrences(of: #""seq":8"#, with: #""seq":80"#)
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: seg))
        let c = try j.readPrefix()
        #expect(c.entries == Array(before[0..<7]))
        #expect(c.damage.first?.keptThrough == 7)
        let report = try Repair.run(t.spool, repair: true)
        #expect(report.findings.contains { $0.repaired?.contains("kept as journal/000001-000007.jsonl") == true }, "\(report.findings)")
        #expect(try Self.names(j) == ["000001-000007.jsonl"])
        #expect(try j.load() == Array(before[0..<7]))
        // The damaged file is kept in repair/, whole.
        let run = try Spool.list(t.spool.runsDirectory)[0]
        let repaired = try FileManager.default.subpathsOfDirectory(atPath: t.spool.run(run).repairDirectory.string)
        #expect(repaired.contains { $0.hasSuffix("000001-000010.jsonl") })
    }

    /// A line too many after a whole segment: the segment keeps its name and its records.
    @Test func repairKeepsAWholeSegmentWithALineTooMany() throws {
        let (t, j) = try Self.filled(6)
        let before = try j.load()
        try j.compact(threshold: 2)
        let seg = j.directory.appending("000001-000006.jsonl").string
        let text = try String(contentsOfFile: seg, encoding: .utf8)
        try Data((text + text.split(separator: "\n")[5] + "\n").utf8).write(to: URL(fileURLWithPath: seg))
        #expect(throws: SpoolError.self) { try j.load() }
        _ = try Repair.run(t.spool, repair: true)
        #expect(try Self.names(j) == ["000001-000006.jsonl"])
        #expect(try j.load() == before)
    }

    /// Found by an outside attack: a stray copy of a segment under an overlapping name made
    /// every record after it damage (18 steps ran again). It alone is set aside.
    @Test func aStraySegmentOverlappingOthersIsSetAsideAlone() throws {
        let (t, j) = try Self.filled(12)
        try j.compact(threshold: 5)
        for i in 13...14 { try j.append(JournalEntry(seq: i, kind: .step, name: "s\(i)", at: Date(timeIntervalSince1970: 1_800_000_100))) }
        try j.compact(threshold: 2)
        let before = try j.load()
        try FileManager.default.copyItem(atPath: j.directory.appending("000001-000012.jsonl").string, toPath: j.directory.appending("000001-000999.jsonl").string)
        let c = try j.readPrefix()
        #expect(c.entries == before)
        #expect(c.damage.map(\.file) == ["000001-000999.jsonl"])
        _ = try Repair.run(t.spool, repair: true)
        #expect(try j.load() == before)
        #expect(try Self.names(j) == ["000001-000012.jsonl", "000013-000014.jsonl"])
    }

    /// Found by an outside attack: a record with a key twice read one way in `cairn show`
    /// and another in jq. It is damage.
    @Test func aRecordWithADuplicateKeyIsDamage() throws {
        let (t, j) = try Self.filled(3)
        let file = j.directory.appending(try j.load()[1].fileName).string
        let text = try String(contentsOfFile: file, encoding: .utf8)
        try Data(text.replacingOccurrences(of: #""seq": 2"#, with: #""seq": 2, "seq": 9"#).utf8).write(to: URL(fileURLWithPath: file))
        #expect(throws: SpoolError.self) { try j.load() }
        #expect(try Repair.run(t.spool, repair: false).findings.contains { $0.problem.contains("duplicate") || $0.problem.contains("twice") })
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
        for s in ["2024-02-29T23:59:59.999Z", "2000-02-29T00:00:00.000Z", "1970-01-01T00:00:00.000Z", "1969-12-31T23:59:59.999Z", "2001-01-01T00:00:00.001Z", "0020-11-27T09:17:28.000Z", "1582-10-04T00:00:00.000Z", "1582-10-15T00:00:00.000Z", "1583-01-01T00:00:00.000Z"] { same(s) }
        // What the hand-written parser declines, the format style reads as it always did.
        for odd in ["2023-02-29T00:00:00.000Z", "2026-13-01T00:00:00.000Z", "2026-01-01T24:00:00.000Z", "2026-01-01T00:00:00.00xZ", "2026-01-01T00:00:00Z"] {
            let slow = (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(odd)) ?? (try? Date.ISO8601FormatStyle().parse(odd))
            #expect(Timestamp.parse(odd) == slow, "\(odd)")
        }
    }
}
