import Foundation
import SystemPackage

/// A run's append-only journal: one file per durable operation, `NNNNNN-KIND[-NAME].json`,
/// each created by a durable no-replace rename, so a position is written at most once.
public struct Journal: Sendable {
    /// The run's `journal/` directory.
    public let directory: FilePath
    let durable: DurableFile

    /// The journal in `directory`, appending through `durable`.
    public init(directory: FilePath, durable: DurableFile) {
        self.directory = directory
        self.durable = durable
    }

    /// A journal file that does not belong: bad name, gap, unparsable, wrong seq.
    public struct Damage: Sendable, Hashable, CustomStringConvertible {
        /// The file at fault, relative to the journal.
        public var file: String
        /// What is wrong with it.
        public var problem: String
        /// A segment damaged after its first line: the last position of it that is still
        /// in the valid prefix (its lines before the damage). `fsck --repair` keeps those as
        /// a segment of their own, so records before the damage are not lost.
        public var keptThrough: Int?
        /// `FILE: PROBLEM`.
        public var description: String { "\(file): \(problem)" }
    }

    /// Every record, in position order. Throws on the first damaged file, naming it; use
    /// `loadPrefix()` to read up to the damage instead.
    public func load() throws -> [JournalEntry] {
        try read().entries
    }

    /// `load()`, with what else the reading found: where the segments end and the single
    /// files a segment already holds (left by a compaction that stopped before removing them).
    public func read() throws -> Contents {
        let contents = try readPrefix()
        if let d = contents.damage.first {
            throw SpoolError(.malformed, path: directory.appending(d.file).string, d.problem + " (run `cairn fsck --repair`)")
        }
        return contents
    }

    /// The longest valid prefix (positions 1, 2, 3… each parsing as a record whose seq
    /// matches its name), and the files after it.
    public func loadPrefix(blobs: BlobStore? = nil) throws -> (entries: [JournalEntry], damage: [Damage]) {
        let c = try readPrefix(blobs: blobs)
        return (c.entries, c.damage)
    }

    /// What a journal directory holds.
    public struct Contents: Sendable {
        /// The valid prefix, in position order.
        public var entries: [JournalEntry]
        /// The files that do not belong (after the prefix, or beside it).
        public var damage: [Damage]
        /// The last position held by a segment file (0: none).
        public var segmentEnd: Int
        /// Single files whose record a segment also holds, identically: a compaction stopped
        /// before removing them. Harmless; the next compaction or `fsck --repair` removes them.
        public var redundant: [String]
        /// The single files after the segments (the live tail), in position order.
        public var tailFiles: [String]
        /// How many records are in single files after the segments.
        public var tailCount: Int { tailFiles.count }
    }

    /// The valid prefix: segment files (`FIRST-LAST.jsonl`, one record a line) then single
    /// files, positions 1, 2, 3… without a gap; a single file that repeats a segment's
    /// record exactly is `redundant`, one that differs is damage.
    ///
    /// A reader beside the run's owner may list the journal just before a compaction moves
    /// the tail into a segment: a file that vanished between the listing and its reading is
    /// no damage, and the directory is read again.
    public func readPrefix(blobs: BlobStore? = nil) throws -> Contents {
        var attempt = 0
        while true {
            let c = try readOnce(blobs: blobs)
            attempt += 1
            if c.damage.isEmpty || attempt == 5 || !c.damage.contains(where: { !DurableFile.exists(directory.appending($0.file)) }) { return c }
        }
    }

    func readOnce(blobs: BlobStore?) throws -> Contents {
        var files: [(Int, String)] = []
        var segments: [(first: Int, last: Int, name: String)] = []
        var damage: [Damage] = []
        for name in try Spool.list(directory) {
            if let (seq, _) = JournalEntry.parseFileName(name) {
                files.append((seq, name))
            } else if let (first, last) = Self.parseSegmentName(name) {
                segments.append((first, last, name))
            } else {
                damage.append(Damage(file: name, problem: "not a journal file name (NNNNNN-KIND[-NAME].json, or FIRST-LAST.jsonl for a segment)"))
            }
        }
        segments.sort { $0.first < $1.first || ($0.first == $1.first && $0.name < $1.name) }
        files.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        var entries: [JournalEntry] = []
        // Room for what the names promise (within reason: a name is not a promise to trust).
        entries.reserveCapacity(min(max(segments.last?.last ?? 0, files.last?.0 ?? 0), 4_000_000))
        var broken = false
        for seg in segments {
            if broken {
                damage.append(Damage(file: seg.name, problem: "after a damaged or missing record"))
                continue
            }
            let expected = entries.count + 1
            guard seg.first == expected else {
                if seg.first < expected {
                    // Positions already read: this file does not belong (a stray copy, a bad
                    // name). It is set aside; the journal goes on with the segments after it.
                    damage.append(Damage(file: seg.name, problem: "overlaps positions \(seg.first)–\(min(seg.last, expected - 1)), already read from another file"))
                } else {
                    damage.append(Damage(file: seg.name, problem: "starts at position \(seg.first) but \(expected) is missing"))
                    broken = true
                }
                continue
            }
            let before = entries.count
            var problem: String? = nil
            do {
                try Self.decodeSegment(DurableFile.read(directory.appending(seg.name), limit: Self.segmentReadLimit), first: seg.first, last: seg.last, appendingTo: &entries)
            } catch let e as SpoolError {
                // The lines before the bad one were read and stay in the prefix.
                problem = e.message
            }
            if let blobs {
                for k in before..<entries.count {
                    do {
                        try blobs.verifyReferences(in: entries[k])
                    } catch let e as SpoolError {
                        problem = "line \(k - before + 1): \(e.message)"
                        entries.removeSubrange(k...)
                        break
                    }
                }
            }
            if let problem {
                damage.append(Damage(file: seg.name, problem: problem, keptThrough: entries.count > before ? entries.count : nil))
                broken = true
            }
        }
        let segmentEnd = entries.count
        var redundant: [String] = []
        var tailFiles: [String] = []
        for (seq, name) in files {
            if seq <= segmentEnd && !broken {
                // A segment holds this position: the file is left from a compaction, unless it differs.
                let held = entries[seq - 1]
                if let e = try? Self.decodeFile(directory.appending(name), seq: seq), e == held, name == held.fileName {
                    redundant.append(name)
                } else {
                    damage.append(Damage(file: name, problem: "position \(seq) is already in a segment, with other content"))
                }
                continue
            }
            if broken {
                damage.append(Damage(file: name, problem: "after a damaged or missing record"))
                continue
            }
            let expected = entries.count + 1
            guard seq == expected else {
                damage.append(Damage(file: name, problem: seq < expected ? "duplicate position \(seq)" : "position \(seq) but \(expected) is missing"))
                broken = true
                continue
            }
            do {
                let entry = try Self.decodeFile(directory.appending(name), seq: seq)
                if let blobs { try blobs.verifyReferences(in: entry) }
                entries.append(entry)
                tailFiles.append(name)
            } catch let e as SpoolError {
                damage.append(Damage(file: name, problem: e.message))
                broken = true
            }
        }
        return Contents(entries: entries, damage: damage, segmentEnd: segmentEnd, redundant: redundant, tailFiles: tailFiles)
    }

    /// Where the record that was written as `fileName` (`NNNNNN-KIND[-NAME].json`) lives now,
    /// for messages: `journal/NAME` while it is a file of its own, else the segment that holds
    /// it and its line (`journal/FIRST-LAST.jsonl`, "line N"). Lists the directory: for error
    /// paths only.
    public func locate(fileName: String) -> (file: String, text: String) {
        let own = "journal/" + fileName
        guard !DurableFile.exists(directory.appending(fileName)), let (seq, _) = JournalEntry.parseFileName(fileName),
              let names = try? Spool.list(directory) else { return (own, own) }
        for name in names {
            if let (first, last) = Self.parseSegmentName(name), first <= seq, seq <= last {
                return ("journal/" + name, "journal/\(name) line \(seq - first + 1) (written as \(fileName))")
            }
        }
        return (own, own)
    }

    /// The last position, from the file names alone (0: an empty journal).
    public func lastPosition() throws -> Int {
        var last = 0
        for name in try Spool.list(directory) {
            if let (seq, _) = JournalEntry.parseFileName(name) { last = max(last, seq) } else if let (_, l) = Self.parseSegmentName(name) { last = max(last, l) }
        }
        return last
    }

    /// The records at the positions in `range` that exist, in order, reading only the files
    /// that hold them (a long run's `cairn show --tail`): a segment's lines outside the range
    /// are not decoded. No check of the rest of the journal; `load()` does that.
    public func records(in range: ClosedRange<Int>) throws -> [JournalEntry] {
        try records(in: range, attempt: 1)
    }

    func records(in range: ClosedRange<Int>, attempt: Int) throws -> [JournalEntry] {
        var byPosition: [Int: JournalEntry] = [:]
        var singles: [(Int, String)] = []
        for name in try Spool.list(directory) {
            if let (seq, _) = JournalEntry.parseFileName(name) {
                if range.contains(seq) { singles.append((seq, name)) }
            } else if let (first, last) = Self.parseSegmentName(name), first <= range.upperBound, last >= range.lowerBound {
                let data = try DurableFile.read(directory.appending(name), limit: Self.segmentReadLimit)
                var start = data.startIndex
                var seq = first
                for end in Self.lineEnds(data) + [data.endIndex] where start < data.endIndex && seq <= min(last, range.upperBound) {
                    if seq >= range.lowerBound {
                        do {
                            byPosition[seq] = try JournalEntry.decode(data[start..<end], file: nil)
                        } catch let e as SpoolError {
                            throw SpoolError(.malformed, path: directory.appending(name).string, "line \(seq - first + 1): \(e.message) (run `cairn fsck`)")
                        }
                    }
                    start = end + 1
                    seq += 1
                }
            }
        }
        for (seq, name) in singles where byPosition[seq] == nil {
            do {
                byPosition[seq] = try Self.decodeFile(directory.appending(name), seq: seq)
            } catch let e as SpoolError where (e.code == .notFound || e.errno == ENOENT) && attempt < 5 {
                // Moved into a segment since the listing: read again.
                return try records(in: range, attempt: attempt + 1)
            }
        }
        return byPosition.keys.sorted().map { byPosition[$0]! }
    }

    /// A segment is read whole; records above the blob threshold live in blobs/, so this is
    /// far above what `segment_records` records take.
    static let segmentReadLimit = 1 << 30

    /// One record file, its seq checked against its name.
    static func decodeFile(_ path: FilePath, seq: Int) throws -> JournalEntry {
        let entry = try JournalEntry.decode(DurableFile.read(path, limit: 16 << 20), file: path.string)
        guard entry.seq == seq else { throw SpoolError(.malformed, "\"seq\" is \(entry.seq), the file name says \(seq)") }
        return entry
    }

    /// The records of a segment: one a line, positions FIRST…LAST in order.
    public static func decodeSegment(_ data: Data, first: Int, last: Int) throws -> [JournalEntry] {
        var out: [JournalEntry] = []
        out.reserveCapacity(last - first + 1)
        try decodeSegment(data, first: first, last: last, appendingTo: &out)
        return out
    }

    /// The same, appended to `out` (a long journal's records go straight into one array).
    static func decodeSegment(_ data: Data, first: Int, last: Int, appendingTo out: inout [JournalEntry]) throws {
        let base = out.count
        guard data.last == UInt8(ascii: "\n") else { throw SpoolError(.malformed, "does not end with a newline (cut short?)") }
        let newlines = Self.lineEnds(data)
        var start = data.startIndex
        var line = 1
        for end in newlines {
            let seq = first + out.count - base
            guard seq <= last else { throw SpoolError(.malformed, "more than the \(last - first + 1) records its name says") }
            let entry: JournalEntry
            do {
                entry = try JournalEntry.decode(data[start..<end], file: nil)
            } catch let e as SpoolError {
                throw SpoolError(.malformed, "line \(line): \(e.message)")
            }
            guard entry.seq == seq else { throw SpoolError(.malformed, "line \(line): \"seq\" is \(entry.seq), expected \(seq)") }
            out.append(entry)
            start = end + 1
            line += 1
        }
        guard out.count - base == last - first + 1 else { throw SpoolError(.malformed, "\(out.count - base) records, its name says \(last - first + 1)") }
    }

    /// The indices of the newlines in `data` (memchr: a long run's journal has 100,000 lines).
    static func lineEnds(_ data: Data) -> [Data.Index] {
        var out: [Data.Index] = []
        data.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var offset = 0
            while offset < raw.count, let p = memchr(base + offset, 0x0A, raw.count - offset) {
                let at = base.distance(to: UnsafeRawPointer(p))
                out.append(data.startIndex + at)
                offset = at + 1
            }
        }
        return out
    }

    /// Whether a record at `position` or later is on disk (a file, or a segment reaching it):
    /// a listing, no reading. A process that keeps a loaded journal asks it before going on
    /// from where it left off, to learn whether another process appended meanwhile.
    public func holdsPosition(atLeast position: Int) throws -> Bool {
        // Asked before every helper call a daemon serves: the names' leading digits are read
        // in place, without making strings (`NNNNNN-…` files; `FIRST-LAST.jsonl` segments).
        guard let d = opendir(directory.string) else {
            if errno == ENOENT { return false }
            throw SpoolError(.io, path: directory.string, errno: errno, "cannot list directory")
        }
        defer { closedir(d) }
        while let ent = readdir(d) {
            let held = withUnsafeBytes(of: ent.pointee.d_name) { raw -> Int in
                var first = 0, last = 0, i = 0
                while i < raw.count, raw[i] >= 48, raw[i] <= 57 { first = first * 10 + Int(raw[i] - 48); i += 1 }
                guard i > 0, i < raw.count, raw[i] == 45 else { return 0 }  // digits, then "-"
                i += 1
                var j = i
                while j < raw.count, raw[j] >= 48, raw[j] <= 57 { last = last * 10 + Int(raw[j] - 48); j += 1 }
                // FIRST-LAST.jsonl: a segment reaches LAST.
                return j > i && j < raw.count && raw[j] == 46 ? max(first, last) : first
            }
            if held >= position { return true }
        }
        return false
    }

    /// `FIRST-LAST.jsonl`, both padded to six digits.
    public static func segmentName(first: Int, last: Int) -> String {
        func pad(_ n: Int) -> String { let s = String(n); return String(repeating: "0", count: max(0, 6 - s.count)) + s }
        return pad(first) + "-" + pad(last) + ".jsonl"
    }

    /// Parses `FIRST-LAST.jsonl` (FIRST ≤ LAST); nil for other names.
    public static func parseSegmentName(_ name: String) -> (first: Int, last: Int)? {
        guard name.hasSuffix(".jsonl") else { return nil }
        let parts = name.dropLast(6).split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ $0.count >= 6 && $0.allSatisfy { $0.isASCII && $0.isNumber } }),
              let first = Int(parts[0]), let last = Int(parts[1]), first >= 1, first <= last,
              name == segmentName(first: first, last: last) else { return nil }
        return (first, last)
    }

    /// Moves the single files after the segments into a new segment, when there are at least
    /// `threshold` of them: the segment is written with the durable routine (tmp/, fsync,
    /// no-replace rename, directory fsync), then the single files it holds are removed, then
    /// the directory is fsync'd. A crash at any point leaves a journal that reads the same:
    /// before the rename, the single files; after it, the segment (and the files it repeats,
    /// `redundant`, removed by the next execution or `fsck --repair`). The records are read
    /// back from their files, so the segment holds what the disk held; the segments already
    /// there are not read again (the cost is the tail's). Only the run's owner — the holder
    /// of its lock, with no script helper appending — may call this.
    /// Returns how many single files are left after the segments.
    @discardableResult
    public func compact(threshold: Int) throws -> Int {
        var segmentEnd = 0
        var tail: [(Int, String)] = []
        let names = try Spool.list(directory)
        for name in names {
            if let (_, last) = Self.parseSegmentName(name) { segmentEnd = max(segmentEnd, last) }
        }
        for name in names {
            if let (seq, _) = JournalEntry.parseFileName(name), seq > segmentEnd { tail.append((seq, name)) }
        }
        tail.sort { $0.0 < $1.0 }
        guard threshold > 0, tail.count >= threshold else { return tail.count }
        // Only a whole, gap-free tail is moved; anything else is for `fsck` to look at.
        guard tail.enumerated().allSatisfy({ $0.element.0 == segmentEnd + 1 + $0.offset }) else {
            throw SpoolError(.malformed, path: directory.string, "the records after position \(segmentEnd) are not positions \(segmentEnd + 1)… without a gap; not compacted (run `cairn fsck`)")
        }
        var text = ""
        text.reserveCapacity(tail.count * 512)
        for (seq, name) in tail {
            text += try Self.decodeFile(directory.appending(name), seq: seq).canonicalJSON().compactText()
            text += "\n"
        }
        CrashPoints.reached("compact.before-segment")
        try durable.write(Data(text.utf8), to: directory.appending(Self.segmentName(first: segmentEnd + 1, last: tail.last!.0)), mode: .noReplace)
        CrashPoints.reached("compact.after-segment")
        try removeRedundant(tail.map(\.1))
        return 0
    }

    /// For `fsck --repair` of a segment damaged after its first line (`Damage.keptThrough`):
    /// its valid lines are kept as a segment of their own and the damaged file goes to
    /// `copyTo` (a copy first, then the file leaves the journal), so that the records before
    /// the damage stay in the journal. Every step is durable and a crash between them leaves
    /// a journal that reads the valid lines (the kept segment sorts before the damaged file,
    /// which then only overlaps). Returns the kept segment's name; nil when there is nothing
    /// to keep (the caller moves the file).
    public func keepValidPart(of d: Damage, entries: [JournalEntry], copyTo: FilePath) throws -> String? {
        guard let kept = d.keptThrough, let (first, _) = Self.parseSegmentName(d.file), kept >= first, kept <= entries.count else { return nil }
        var text = ""
        for e in entries[(first - 1)..<kept] { text += try e.canonicalJSON().compactText() + "\n" }
        let damaged = directory.appending(d.file)
        try durable.write(DurableFile.read(damaged, limit: Self.segmentReadLimit), to: copyTo, mode: .noReplace)
        let name = Self.segmentName(first: first, last: kept)
        if name == d.file {
            try durable.write(Data(text.utf8), to: damaged, mode: .replace)
        } else {
            try durable.write(Data(text.utf8), to: directory.appending(name), mode: .noReplace)
            guard unlink(damaged.string) == 0 || errno == ENOENT else { throw SpoolError(.io, path: damaged.string, errno: errno, "cannot remove a damaged segment") }
            try DurableFile.fsyncDirectory(directory)
        }
        return name
    }

    /// Removes single files a segment holds (`Contents.redundant`, or the tail just moved
    /// into a segment), then fsyncs the directory. Only the run's owner may call this.
    public func removeRedundant(_ names: [String]) throws {
        guard !names.isEmpty else { return }
        for name in names {
            guard unlink(directory.appending(name).string) == 0 || errno == ENOENT else {
                throw SpoolError(.io, path: directory.appending(name).string, errno: errno, "cannot remove a record a segment holds")
            }
            CrashPoints.reached("compact.after-unlink")
        }
        try DurableFile.fsyncDirectory(directory)
    }

    /// Durably appends `entry` at its position. Fails with `.exists` if the position is
    /// taken: only one writer may own a run (see RunLock).
    public func append(_ entry: JournalEntry) throws {
        try durable.write(json: entry.canonicalJSON(), to: directory.appending(entry.fileName), mode: .noReplace)
    }

    /// The records that count after run-level retries: a `retry` record named `run`
    /// with `resume_from: P` supersedes every record from position P up to itself — or,
    /// when it lists `data.superseded: [SEQ…]` (all ≥ P), exactly those records (the failed
    /// branches of a `parallel`, whose successful siblings keep their records).
    public static func effective(_ entries: [JournalEntry]) -> [JournalEntry] {
        // Most journals have no run-level retry: the same array, not a copy of 100,000 records.
        guard entries.contains(where: { $0.kind == .retry && $0.name == "run" && $0.resumeFrom != nil }) else { return entries }
        var out: [JournalEntry] = []
        for e in entries {
            if e.kind == "retry", e.name == "run", let from = e.resumeFrom {
                if let list = e.data?["superseded"]?.arrayValue {
                    let drop = Set(list.compactMap { $0.intValue.map(Int.init) })
                    out.removeAll { drop.contains($0.seq) }
                } else {
                    out.removeAll { $0.seq >= from }
                }
                continue
            }
            out.append(e)
        }
        return out
    }
}

extension JournalEntry {
    /// The terminal status this record stands for, if it is a terminal record.
    public var terminalStatus: RunStatus? {
        switch (kind, name) {
        case ("complete", _): return .completed
        case ("fail", _): return .failed
        case ("cancel", nil): return .cancelled
        default: return nil
        }
    }

    /// The outcome of an attempted unit of work — a step, a model call, whatever a layer above
    /// records with the attempts it used — as opposed to the bookkeeping around attempts
    /// (`intent`, `retry`, `uncertain`). Told by the record's shape (an `attempt` field), not by
    /// a list of kinds: the spool knows no workflow operation by name.
    public var isOperationOutcome: Bool {
        attempt != nil && kind != .intent && kind != .retry && kind != .uncertain
    }
}
