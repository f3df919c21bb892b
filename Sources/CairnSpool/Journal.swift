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
        /// `FILE: PROBLEM`.
        public var description: String { "\(file): \(problem)" }
    }

    /// Every record, in position order. Throws on the first damaged file, naming it; use
    /// `loadPrefix()` to read up to the damage instead.
    public func load() throws -> [JournalEntry] {
        let (entries, damage) = try loadPrefix()
        if let d = damage.first {
            throw SpoolError(.malformed, path: directory.appending(d.file).string, d.problem + " (run `cairn fsck --repair`)")
        }
        return entries
    }

    /// The longest valid prefix (positions 1, 2, 3… each parsing as a record whose seq
    /// matches its name), and the files after it.
    public func loadPrefix(blobs: BlobStore? = nil) throws -> (entries: [JournalEntry], damage: [Damage]) {
        var files: [(Int, String)] = []
        var damage: [Damage] = []
        for name in try Spool.list(directory) {
            if let (seq, _) = JournalEntry.parseFileName(name) {
                files.append((seq, name))
            } else {
                damage.append(Damage(file: name, problem: "not a journal file name (NNNNNN-KIND[-NAME].json)"))
            }
        }
        files.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        var entries: [JournalEntry] = []
        var broken = false
        for (seq, name) in files {
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
                let path = directory.appending(name)
                let entry = try Spool.decode(JournalEntry.self, from: path)
                guard entry.seq == seq else { throw SpoolError(.malformed, "\"seq\" is \(entry.seq), the file name says \(seq)") }
                if let blobs { try blobs.verifyReferences(in: entry) }
                entries.append(entry)
            } catch let e as SpoolError {
                damage.append(Damage(file: name, problem: e.message))
                broken = true
            }
        }
        return (entries, damage)
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
