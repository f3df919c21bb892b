import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

@Suite struct CanonicalJSONTests {
    /// Found by `make fuzz` (target config): keys "gaté)" and "gate" + U+0301 sorted one way
    /// in a value and the other way in the value read back from its canonical text — Swift's
    /// String ordering follows Unicode equivalence and is not a consistent order over these
    /// keys, so the order depended on the dictionary's. Keys are sorted by their UTF-8 bytes.
    @Test func canonicalTextIsAFixedPointWithCombiningMarksInKeys() throws {
        let v: JSONValue = ["gat\u{e9})": 1, "gate\u{301}": 2, "gate": 4, "Z": 5]
        let text = v.canonicalText()
        let back = try JSONValue.parse(Data(text.utf8))
        #expect(back == v)
        #expect(back.canonicalText() == text)
        #expect(v.compactText() == #"{"Z":5,"gate":4,"gate\#u{301}":2,"gat\#u{e9})":1}"#)
    }

    @Test func sortedKeysOneFieldPerLineTrailingNewline() throws {
        let v: JSONValue = ["status": "waiting", "a": [1, 2], "empty": [], "obj": [:], "s": "a/b\n\"q\"\u{1}é", "d": 1.5, "n": nil, "t": true]
        let text = v.canonicalText()
        #expect(text == """
        {
          "a": [
            1,
            2
          ],
          "d": 1.5,
          "empty": [],
          "n": null,
          "obj": {},
          "s": "a/b\\n\\"q\\"\\u0001é",
          "status": "waiting",
          "t": true
        }

        """)
        #expect(try JSONValue.parse(text) == v)
        #expect(v.compactText() == #"{"a":[1,2],"d":1.5,"empty":[],"n":null,"obj":{},"s":"a/b\n\"q\"\u0001é","status":"waiting","t":true}"#)
    }

    @Test func malformedJSONNamesTheFile() throws {
        #expect(throws: SpoolError.self) { try JSONValue.parse("{\"a\": ", file: "x.json") }
        let e = try #require(throws: SpoolError.self) { try JSONValue.parse("{", file: "runs/r/x.json") }
        #expect(e.code == .malformed)
        #expect(e.description.hasPrefix("runs/r/x.json: "))
    }
}

@Suite struct TimestampTests {
    /// A time written, read back and written again is the same text (a resumed wait is the
    /// same wait), and it is the time rounded to the millisecond.
    @Test func formatParseFormatIsStable() throws {
        var rng = SeededRandom("formatParseFormatIsStable")
        for _ in 0..<20_000 {
            let t = Double.random(in: 1.6e9..<2.0e9, using: &rng)
            let text = Timestamp.format(Date(timeIntervalSince1970: t))
            let back = try #require(Timestamp.parse(text))
            #expect(Timestamp.format(back) == text, "\(t) (seed \(rng.seed))")
            #expect(abs(back.timeIntervalSince1970 - (t * 1000).rounded() / 1000) < 1e-6, "\(t) → \(text) (seed \(rng.seed))")
            if Timestamp.format(back) != text { return }
        }
        #expect(Timestamp.format(Date(timeIntervalSince1970: 1_764_300_000.123)) == "2025-11-28T03:20:00.123Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: -1.5)) == "1969-12-31T23:59:58.500Z")
    }
}

@Suite struct SHA256Tests {
    @Test func fipsVectors() {
        #expect(ContentHash.sha256Hex(Array("".utf8)) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(ContentHash.sha256Hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(ContentHash.sha256Hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(ContentHash.sha256Hex([UInt8](repeating: 0x61, count: 1_000_000)) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}

@Suite struct DurableFileTests {
    @Test func writeReplaceAndNoReplaceLeaveNoTempFiles() throws {
        let t = try TempSpool()
        let target = t.spool.root.appending("x.json")
        try t.spool.durable.write(json: ["a": 1], to: target)
        try t.spool.durable.write(json: ["a": 2], to: target)
        #expect(try DurableFile.readJSON(target) == ["a": 2])
        #expect(throws: SpoolError.self) { try t.spool.durable.write(json: ["a": 3], to: target, mode: .noReplace) }
        #expect(try DurableFile.readJSON(target) == ["a": 2])
        #expect(try Spool.list(t.spool.tmpDirectory).isEmpty)
    }

    @Test func writeIntoMissingDirectoryFailsNamingTheFile() throws {
        let t = try TempSpool()
        let target = t.spool.root.appending("nope/x.json")
        let e = try #require(throws: SpoolError.self) { try t.spool.durable.write(json: ["a": 1], to: target) }
        #expect(e.code == .io)
        #expect(e.path == target.string)
        #expect(try Spool.list(t.spool.tmpDirectory).isEmpty)
    }
}

@Suite struct SpoolLayoutTests {
    @Test func initCreatesLayoutAndConfig() throws {
        let t = try TempSpool()
        for d in ["runs", "inbox", "rejected", "tmp", "workflows", "keys"] {
            #expect(DurableFile.exists(t.spool.root.appending(d)), "missing \(d)")
        }
        let config = try t.spool.config()
        #expect(config.format == 1)
        #expect(config.blobThreshold == 64 * 1024)
        // Opening again works; creating again leaves the config alone (an edited setting
        // and the file itself: same content, same inode).
        _ = try Spool.open(at: t.spool.root)
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["blob_threshold"] = 1234
        cfg["note"] = "edited by the operator"
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        let before = try String(contentsOfFile: t.spool.configFile.string, encoding: .utf8)
        var st0 = stat(), st1 = stat()
        #expect(stat(t.spool.configFile.string, &st0) == 0)
        let again = try Spool.create(at: t.spool.root)
        #expect(stat(t.spool.configFile.string, &st1) == 0)
        #expect(try String(contentsOfFile: t.spool.configFile.string, encoding: .utf8) == before)
        #expect(st0.st_ino == st1.st_ino, "config.json was rewritten")
        #expect(try again.config().blobThreshold == 1234)
    }

    @Test func openRefusesNonSpoolAndOtherFormats() throws {
        let t = try TempSpool()
        #expect(throws: SpoolError.self) { try Spool.open(at: t.path) }
        try t.spool.durable.write(json: ["format": 2], to: t.spool.configFile)
        let e = try #require(throws: SpoolError.self) { try Spool.open(at: t.spool.root) }
        #expect(e.code == .notASpool)
        #expect(e.description.contains("format 2"))
    }

    @Test func createRunAppearsWholeAndDeduplicates() throws {
        let t = try TempSpool()
        let (id, created) = try t.spool.createRun(.init(workflow: "w", input: ["x": 1]))
        #expect(created)
        #expect(Names.isValidRunID(id))
        let run = try t.spool.readRun(id)
        #expect(run.workflow == "w")
        #expect(run.input == ["x": 1])
        #expect(try t.spool.readState(id)?.status == .queued)
        for d in ["journal", "approvals", "events", "blobs", "logs"] {
            #expect(DurableFile.exists(t.spool.run(id).directory.appending(d)))
        }
        // Same id: one run.
        let again = try t.spool.createRun(.init(workflow: "w", input: ["x": 2], id: id))
        #expect(again.id == id && !again.created)
        #expect(try t.spool.readRun(id).input == ["x": 1])
        // Same idempotency key: one run, whatever id the second asks for.
        let k1 = try t.spool.createRun(.init(workflow: "w", input: 1, idempotencyKey: "order-42"))
        let k2 = try t.spool.createRun(.init(workflow: "w", input: 2, idempotencyKey: "order-42"))
        #expect(k1.created && !k2.created && k1.id == k2.id)
        #expect(try t.spool.runIDs().count == 2)
        #expect(try Spool.list(t.spool.tmpDirectory).isEmpty)
    }

    @Test func generatedIDsSortByTime() {
        let a = RunID.generate(now: Date(timeIntervalSince1970: 1_800_000_000))
        let b = RunID.generate(now: Date(timeIntervalSince1970: 1_800_000_000.5))
        let c = RunID.generate(now: Date(timeIntervalSince1970: 1_900_000_000))
        #expect(a < b && b < c)
        #expect(Names.isValidRunID(a))
        #expect(a.hasPrefix("20270115-"))
    }

    @Test func invalidIDsAndNamesAreRefused() throws {
        let t = try TempSpool()
        for bad in ["", "-x", "a/b", "../x", String(repeating: "a", count: 129), "a b"] {
            #expect(throws: SpoolError.self) { try t.spool.createRun(.init(workflow: "w", input: nil, id: bad)) }
        }
        #expect(throws: SpoolError.self) { try t.spool.createRun(.init(workflow: "../w", input: nil)) }
    }
}

@Suite struct JournalTests {
    func entry(_ seq: Int, _ kind: RecordKind, _ name: String? = nil) -> JournalEntry {
        JournalEntry(seq: seq, kind: kind, name: name, at: Date(timeIntervalSince1970: 1_800_000_000))
    }

    @Test func fileNamesAndAppend() throws {
        let t = try TempSpool()
        let id = try t.submit("w", input: 1)
        let j = t.spool.journal(id)
        try j.append(entry(1, "start"))
        try j.append(entry(2, "step", "fetch ticket/1"))
        // The same file twice is refused outright.
        #expect(throws: SpoolError.self) { try j.append(entry(2, "step", "fetch ticket/1")) }
        #expect(try Spool.list(j.directory).sorted() == ["000001-start.json", "000002-step-fetch_ticket_1.json"])
        let loaded = try j.load()
        #expect(loaded.map(\.name) == [nil, "fetch ticket/1"])
        // A second record at a taken position under another name (only possible without the
        // run lock) is caught when the journal is read.
        try j.append(entry(2, "step", "other"))
        #expect(throws: SpoolError.self) { try j.load() }
        #expect(JournalEntry.parseFileName("000002-step-fetch_ticket_1.json")! == (2, "step"))
        #expect(JournalEntry.parseFileName("2-step.json") == nil)
    }

    @Test func loadPrefixStopsAtDamage() throws {
        let t = try TempSpool()
        let id = try t.submit("w", input: 1)
        let j = t.spool.journal(id)
        try j.append(entry(1, "start"))
        try j.append(entry(2, "step", "a"))
        try "{\"seq\": 3, \"kind\"".write(toFile: j.directory.appending("000003-step-b.json").string, atomically: false, encoding: .utf8)
        try j.append(entry(4, "step", "c"))
        let (entries, damage) = try j.loadPrefix()
        #expect(entries.count == 2)
        #expect(damage.map(\.file) == ["000003-step-b.json", "000004-step-c.json"])
        #expect(throws: SpoolError.self) { try j.load() }
    }

    @Test func runLevelRetrySupersedesRecords() {
        var r = entry(6, "retry", "run")
        r.resumeFrom = 3
        let effective = Journal.effective([entry(1, "start"), entry(2, "step", "a"), entry(3, "step", "b"), entry(4, "compensate", "x"), entry(5, "fail"), r, entry(7, "step", "b")])
        #expect(effective.map(\.seq) == [1, 2, 7])
    }
}

@Suite struct BlobTests {
    @Test func smallValuesInlineLargeValuesByReference() throws {
        let t = try TempSpool()
        let id = try t.submit("w", input: 1)
        let blobs = t.spool.blobs(id, threshold: 100)
        #expect(try blobs.externalize("small") == "small")
        let big = JSONValue.string(String(repeating: "x", count: 500))
        let ref = try blobs.externalize(big)
        let (name, bytes) = try #require(BlobStore.reference(ref))
        #expect(name.hasPrefix("sha256-"))
        #expect(bytes == 503)
        #expect(try blobs.resolve(ref) == big)
        // The file's SHA-256 is its name.
        let data = try DurableFile.read(blobs.directory.appending(name))
        #expect("sha256-" + ContentHash.sha256Hex(data) == name)
        // Identical values are stored once.
        #expect(try blobs.externalize(big) == ref)
        #expect(try Spool.list(blobs.directory).count == 1)
    }

    @Test func growingConversationCostsLinearBytes() throws {
        let t = try TempSpool()
        let id = try t.submit("w", input: 1)
        let blobs = t.spool.blobs(id, threshold: 64 * 1024)
        var messages: [JSONValue] = []
        var refs: [JSONValue] = []
        var sizes: [Int] = []
        for turn in 0..<100 {
            messages.append(["role": "user", "content": .string("question \(turn): " + String(repeating: "q", count: 800))])
            messages.append(["role": "assistant", "content": .string("answer \(turn): " + String(repeating: "a", count: 800))])
            refs.append(try blobs.externalize(.array(messages), force: true))
            sizes.append([9, 49, 89, 99].contains(turn) ? try directoryBytes(blobs.directory) : 0)
        }
        #expect(try blobs.resolve(refs[99]) == .array(messages))
        #expect(try blobs.resolve(refs[10]) == .array(Array(messages.prefix(22))))
        let raw = messages.reduce(0) { $0 + $1.canonicalText().utf8.count }
        // O(n): the store is within a small factor of the messages themselves, and the
        // last ten turns cost what the first ten did.
        #expect(sizes[99] < raw * 2, "stored \(sizes[99]) bytes for \(raw) bytes of messages")
        let first10 = sizes[9]
        let last10 = sizes[99] - sizes[89]
        #expect(Double(last10) < Double(first10) * 1.2)
        let sizesOfMessages = messages.map { $0.canonicalText().utf8.count }
        var copied = 0
        for turn in 0..<100 { copied += sizesOfMessages.prefix(2 * (turn + 1)).reduce(0, +) }
        print("100-turn conversation: \(raw) bytes of messages, \(sizes[99]) bytes of blobs (turn 10: \(sizes[9]), turn 50: \(sizes[49])); copying the list into every record would take \(copied) bytes")
    }

    /// A blob directory is the runtime's, but a damaged or crafted one must give an error,
    /// never a loop or a stack overflow: a list node whose `prev` comes back to itself, and
    /// a blob holding a reference to itself (found by the `blob` fuzz target).
    @Test func aBlobThatComesBackToItselfIsAnErrorNotALoop() throws {
        let t = try TempSpool()
        let id = try t.submit("w", input: 1)
        let blobs = t.spool.blobs(id, threshold: 64)
        try DurableFile.makeDirectory(blobs.directory)
        let a = "sha256-" + String(repeating: "a", count: 64), b = "sha256-" + String(repeating: "b", count: 64)
        func put(_ name: String, _ v: JSONValue) throws { try t.spool.durable.write(v.canonicalData(), to: blobs.directory.appending(name)) }
        func ref(_ name: String) -> JSONValue { ["$blob": .string(name), "bytes": 1] }
        // A chain a → b → a.
        try put(a, ["$list": ["items": [1], "prev": ref(b)]])
        try put(b, ["$list": ["items": [2], "prev": ref(a)]])
        #expect(throws: SpoolError.self) { try blobs.resolve(ref(a)) }
        // A value inside a blob referring to the blob (directly, and through another one).
        let c = "sha256-" + String(repeating: "c", count: 64), d = "sha256-" + String(repeating: "d", count: 64)
        try put(c, ["again": ref(c)])
        try put(d, [ref(c), "x"])
        #expect(throws: SpoolError.self) { try blobs.resolve(ref(c)) }
        #expect(throws: SpoolError.self) { try blobs.resolve(["v": ref(d)]) }
        // The same blob twice side by side is no cycle.
        let e = "sha256-" + String(repeating: "e", count: 64)
        try put(e, ["leaf": true])
        #expect(try blobs.resolve([ref(e), ["k": ref(e)]]) == [["leaf": true], ["k": ["leaf": true]]])
    }

    func directoryBytes(_ dir: FilePath) throws -> Int {
        try Spool.list(dir).reduce(0) { total, name in
            var st = stat()
            _ = stat(dir.appending(name).string, &st)
            return total + Int(st.st_size)
        }
    }
}

@Suite struct DropTests {
    @Test func refusesSymlinksFIFOsOversizedAndBadJSON() throws {
        let t = try TempSpool()
        let dir = t.spool.root.appending("inbox")
        let target = t.spool.root.appending("cairn.json")
        #expect(symlink(target.string, dir.appending("link.approved").string) == 0)
        #expect(mkfifo(dir.appending("fifo.approved").string, 0o644) == 0)
        try String(repeating: "x", count: 2000).write(toFile: dir.appending("big.approved").string, atomically: true, encoding: .utf8)
        try "{not json".write(toFile: dir.appending("bad.approved").string, atomically: true, encoding: .utf8)
        try "".write(toFile: dir.appending("empty.approved").string, atomically: true, encoding: .utf8)
        try #"{"value": {"draft": "hi"}}"#.write(toFile: dir.appending("ok.approved").string, atomically: true, encoding: .utf8)

        func reason(_ name: String) -> String? {
            if case .refused(_, let r, _) = Drops.read(dir.appending(name), limit: 1000) { return r }
            return nil
        }
        #expect(reason("link.approved")?.contains("symbolic link") == true)
        #expect(reason("fifo.approved")?.contains("not a regular file") == true)
        #expect(reason("big.approved")?.contains("over the limit") == true)
        #expect(reason("bad.approved")?.contains("not valid JSON") == true)
        guard case .valid(let empty) = Drops.read(dir.appending("empty.approved"), limit: 1000) else { Issue.record("empty refused"); return }
        #expect(empty.json == nil)
        #expect(empty.owner.uid == getuid())
        guard case .valid(let ok) = Drops.read(dir.appending("ok.approved"), limit: 1000) else { Issue.record("ok refused"); return }
        #expect(ok.json?["value"]?["draft"] == "hi")
        if case .absent = Drops.read(dir.appending("missing"), limit: 1000) {} else { Issue.record("missing not absent") }
        // Unauthorized owner.
        let policy = SpoolConfig.Approvers(users: ["somebody-else"], groups: [])
        if case .refused(_, let r, _) = Drops.read(dir.appending("ok.approved"), limit: 1000, policy: policy) {
            #expect(r.contains("not allowed"))
        } else { Issue.record("unauthorized drop accepted") }
    }

    @Test func refusalWritesOneErrorFileAndKeepsTheDrop() throws {
        let t = try TempSpool()
        let p = t.spool.root.appending("inbox/x.approved")
        try "nope".write(toFile: p.string, atomically: true, encoding: .utf8)
        guard case .refused(_, let reason, let identity) = Drops.read(p, limit: 100) else { Issue.record("accepted"); return }
        #expect(try Drops.refuse(p, reason: reason, identity: identity, durable: t.spool.durable))
        #expect(try !Drops.refuse(p, reason: reason, identity: identity, durable: t.spool.durable))
        #expect(DurableFile.exists(p))
        let err = try DurableFile.readJSON(FilePath(p.string + ".error.json"))
        #expect(err["error"]?.stringValue?.contains("x.approved is not valid JSON") == true)
    }
}

@Suite struct LockTests {
    @Test func oneHolderAtATime() throws {
        let t = try TempSpool()
        let id = try t.submit("w", input: 1)
        let dir = t.spool.runDirectory(id)
        var first = try RunLock.tryAcquire(dir)
        #expect(first != nil)
        #expect(try RunLock.tryAcquire(dir) == nil)
        #expect(RunLock.isHeld(dir) == true)
        first = nil
        #expect(RunLock.isHeld(dir) == false)
        #expect(try RunLock.tryAcquire(dir) != nil)
    }
}

/// A script execution's files in tmp/ live as long as its run is held, however old: fsck
/// --repair removed `exec-RUN.json.spool-works` (the full-disk marker) of a script running
/// for over an hour, because the run id was read off the name as if it ended in `.json`.
@Suite struct ExecTempFileTests {
    @Test func repairKeepsEveryExecFileOfAHeldRunAndRemovesAFreeOnes() throws {
        let t = try TempSpool()
        let run = try t.submit("w", input: 0)
        let names = ["exec-\(run).json", "exec-\(run).json.lock", "exec-\(run).json.spool-works"]
        let hourAgo = Date().addingTimeInterval(-7200)
        for n in names {
            let p = t.spool.tmpDirectory.appending(n).string
            _ = FileManager.default.createFile(atPath: p, contents: Data())
            try FileManager.default.setAttributes([.modificationDate: hourAgo], ofItemAtPath: p)
        }
        do {
            let lock = try RunLock.tryAcquire(t.spool.runDirectory(run))
            _ = try Repair.run(t.spool, repair: true)
            withExtendedLifetime(lock) {}
            for n in names { #expect(FileManager.default.fileExists(atPath: t.spool.tmpDirectory.appending(n).string), "\(n) removed while its run was held") }
        }
        _ = try Repair.run(t.spool, repair: true)
        for n in names { #expect(!FileManager.default.fileExists(atPath: t.spool.tmpDirectory.appending(n).string), "\(n) kept after its run was free") }
    }
}


/// Issue 15's attack: a staging directory another user can write (a report's, a metrics
/// file's) let them create the next `PID.N.NAME.tmp` names first, and every write failed
/// from then on, the file kept stale without a word.
@Suite struct StagingNameTests {
    @Test func writesSucceedWhenTheNextPredictableStagingNamesAreTaken() throws {
        let dir = FilePath(NSTemporaryDirectory()).appending("cairn-staging-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: dir.string, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir.string) }
        let writer = DurableFile(tmpDirectory: dir)
        // The counter now: the second field of a name.
        let probe = writer.tempPath(hint: "probe").lastComponent!.string.split(separator: ".")
        let n = try #require(Int(probe[1]))
        for k in 1...500 {
            _ = FileManager.default.createFile(atPath: dir.appending("\(getpid()).\(n + k).index.html.tmp").string, contents: Data())
        }
        for i in 0..<20 { try writer.write(Data("page \(i)\n".utf8), to: dir.appending("index.html")) }
        #expect(try String(contentsOfFile: dir.appending("index.html").string, encoding: .utf8) == "page 19\n")
        // Two names for the same file share nothing another user could count on.
        let a = writer.tempPath(hint: "x").lastComponent!.string, b = writer.tempPath(hint: "x").lastComponent!.string
        #expect(a.split(separator: ".")[2] != b.split(separator: ".")[2])
    }
}
