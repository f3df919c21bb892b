import CairnLLMWire
import CairnSpool
import Foundation
import SystemPackage

/// The fuzz targets: every parser of bytes from outside, each with invariants that a wrong
/// answer breaks (not only a crash). An invariant that does not hold ends the process with
/// `fatalError`, which libFuzzer reports as a crash and saves the input.
enum FuzzTarget: String, CaseIterable {
    /// Inbox submissions, decisions and events: `JSONValue.parseUntrusted`, the 64-level
    /// limit, the duplicate-key refusal and `Drops.read` over a real file.
    case drop
    /// `cairn.json`: `parseRejectingDuplicateKeys` and `SpoolConfig`.
    case config
    /// Journal records: `JournalEntry` decoding and `Journal.loadPrefix` over a file.
    case journal
    /// Blob references: `BlobStore.resolve` over a crafted blob directory, and
    /// `externalize` → `resolve` over an honest one.
    case blob
    /// The LLM stream: SSE framing in any chunking, both providers' stream events and bodies.
    case sse

    func run(_ data: Data) {
        switch self {
        case .drop: DropTarget.run(data)
        case .config: ConfigTarget.run(data)
        case .journal: JournalTarget.run(data)
        case .blob: BlobTarget.run(data)
        case .sse: SSETarget.run(data)
        }
    }
}

/// Ends the process naming the invariant (libFuzzer keeps the input as a crash).
func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("invariant broken: " + message()) }
}

func fail(_ message: String) -> Never { fatalError("invariant broken: " + message) }

/// A scratch directory of this process (tmpfs when there is one), emptied per input.
enum Scratch {
    static let root: String = {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let dir = base + "/cairn-fuzz-\(getpid())"
        mkdir(dir, 0o755)
        atexit { Scratch.removeAll() }
        return dir
    }()

    /// A fresh, empty directory `name` under the scratch root.
    static func directory(_ name: String) -> String {
        let path = root + "/" + name
        removeTree(path)
        mkdir(path, 0o755)
        return path
    }

    static func write(_ data: Data, to path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { fail("cannot create \(path): errno \(errno)") }
        defer { close(fd) }
        fchmod(fd, 0o644)
        var off = 0
        data.withUnsafeBytes { buf in
            while off < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + off, buf.count - off)
                guard n > 0 else { fail("cannot write \(path): errno \(errno)") }
                off += n
            }
        }
    }

    static func removeTree(_ path: String) { try? FileManager.default.removeItem(atPath: path) }
    static func removeAll() { removeTree(root) }
}

// MARK: - Shared oracles

extension JSONValue {
    /// Members of every object, at any depth.
    var memberCount: Int {
        switch self {
        case .array(let a): return a.reduce(0) { $0 + $1.memberCount }
        case .object(let o): return o.count + o.values.reduce(0) { $0 + $1.memberCount }
        default: return 0
        }
    }

    /// Whether an object anywhere in it looks like a blob reference or a list node.
    var hasBlobShape: Bool {
        switch self {
        case .array(let a): return a.contains { $0.hasBlobShape }
        case .object(let o):
            if BlobStore.reference(self) != nil || (o.count == 1 && o["$list"] != nil) { return true }
            return o.values.contains { $0.hasBlobShape }
        default: return false
        }
    }

    var isObject: Bool { if case .object = self { return true } else { return false } }
}

/// Colons outside strings: in valid JSON, exactly one per object member as written.
func membersAsWritten(_ data: Data) -> Int {
    var n = 0, inString = false, escaped = false
    for b in data {
        if inString {
            if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
        } else if b == UInt8(ascii: "\"") {
            inString = true
        } else if b == UInt8(ascii: ":") {
            n += 1
        }
    }
    return n
}

/// What a parsed value and the text it came from must agree on: the canonical text parses
/// back (with the exact parser) to the same value and is a fixed point; and the value has
/// as many object members as the text wrote unless the text has a duplicate key (a member
/// lost without a duplicate key is a key the reader merged with another).
func checkAccepted(_ v: JSONValue, from data: Data, parser: String) {
    let text = v.canonicalText()
    let back: JSONValue
    do { back = try JSONValue.parse(Data(text.utf8)) } catch { fail("\(parser): the canonical text of an accepted value does not parse (\(error)): \(text)") }
    check(back == v, "\(parser): canonical text re-parses to another value: \(v) → \(text) → \(back)")
    check(back.canonicalText() == text, "\(parser): canonical text is not a fixed point: \(text)")
    check(v.compactText() == back.compactText(), "\(parser): compact text differs after a round trip")
    let duplicate = JSONValue.duplicateKey(in: data)
    let written = membersAsWritten(data), read = v.memberCount
    if duplicate == nil {
        check(read == written, "\(parser): \(written) object members written, \(read) read, and no duplicate key reported: a key was merged with another (\(String(decoding: data.prefix(200), as: UTF8.self)))")
    } else {
        check(read < written, "\(parser): duplicate key \"\(duplicate!)\" reported, yet every member was read")
    }
}

// MARK: - drop

enum DropTarget {
    static let limit = 4096

    static func run(_ data: Data) {
        let overDeep = JSONValue.nestingDepth(data, above: JSONValue.dropDepthLimit)
        var parsed: JSONValue? = nil
        do {
            parsed = try JSONValue.parseUntrusted(data, maxDepth: JSONValue.dropDepthLimit)
        } catch let e as SpoolError {
            check(e.code == .malformed, "parseUntrusted refused with \(e.code), not malformed")
        } catch {
            fail("parseUntrusted threw something other than a SpoolError: \(error)")
        }
        if let overDeep { check(parsed == nil, "a value nested \(overDeep) deep was accepted with maxDepth \(JSONValue.dropDepthLimit)") }
        if let v = parsed {
            checkAccepted(v, from: data, parser: "parseUntrusted")
            // Accepted once, accepted again: its own canonical text is a drop too.
            let again = try? JSONValue.parseUntrusted(Data(v.canonicalText().utf8), maxDepth: JSONValue.dropDepthLimit)
            check(again != nil, "parseUntrusted refuses the canonical text of a value it accepted: \(v.canonicalText())")
        }

        // The whole drop, from a real file: valid exactly when every rule passes.
        let requireObject = data.count % 2 == 1
        let dir = Scratch.directory("drop")
        let path = dir + "/gate.approved"
        Scratch.write(data, to: path)
        let blank = data.allSatisfy { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
        let duplicate = parsed == nil ? nil : JSONValue.duplicateKey(in: data)
        let shouldPass = data.count <= limit && (blank || (parsed != nil && duplicate == nil && (!requireObject || parsed!.isObject)))
        switch Drops.read(FilePath(path), limit: limit, requireObject: requireObject) {
        case .absent:
            fail("Drops.read says a file that exists is absent")
        case .valid(let f):
            check(shouldPass, "Drops.read accepted what a rule refuses (size \(data.count), duplicate \(duplicate ?? "none"), parsed \(parsed != nil))")
            check(f.json == (blank ? nil : parsed), "Drops.read returned \(f.json.map { "\($0)" } ?? "nil"), parseUntrusted \(parsed.map { "\($0)" } ?? "nil")")
        case .refused(_, let reason, _):
            check(!shouldPass, "Drops.read refused a valid drop: \(reason)")
            check(!reason.isEmpty, "a refusal without a reason")
            let err = Drops.errorFileName("gate.approved")
            check(err.utf8.count <= Names.nameMax, "error file name too long")
        }
    }
}

// MARK: - config

enum ConfigTarget {
    static let nobody = Principal(uid: 4_000_000_000, user: "cairn-fuzz-nobody")

    static func run(_ data: Data) {
        let v: JSONValue
        do {
            v = try JSONValue.parseRejectingDuplicateKeys(data, file: "cairn.json")
        } catch let e as SpoolError {
            check(e.code == .malformed, "cairn.json refused with \(e.code), not malformed")
            return
        } catch {
            fail("parseRejectingDuplicateKeys threw something other than a SpoolError: \(error)")
        }
        check(JSONValue.duplicateKey(in: data) == nil, "cairn.json with a duplicate key was accepted")
        checkAccepted(v, from: data, parser: "parse")
        let config: SpoolConfig
        do {
            config = try SpoolConfig(v, file: "cairn.json")
        } catch let e as SpoolError {
            check(e.code == .malformed || e.code == .notASpool, "SpoolConfig refused with \(e.code)")
            return
        } catch {
            fail("SpoolConfig threw something other than a SpoolError: \(error)")
        }
        check(config.format == 1, "format \(config.format) accepted")
        check(config.blobThreshold >= 64, "blob_threshold \(config.blobThreshold) accepted")
        check(config.dropSizeLimit >= 1, "drop_size_limit \(config.dropSizeLimit) accepted")
        check(config.raw == v, "raw is not the file's value")
        // Approvers fail closed: a malformed rule or block lets nobody through; a valid rule
        // lets through exactly the users it names.
        let gates = Array(config.approvers.keys) + ["*", "cairn-fuzz-unlisted"]
        for gate in gates {
            guard let policy = config.approvalPolicy(gate: gate) else {
                check(config.approversProblem == nil && config.approvers[gate] == nil && config.approvers["*"] == nil, "no policy for \(gate) although a rule exists")
                continue
            }
            if policy.invalid != nil {
                check(Drops.allowed(Principal(uid: 0, user: "root"), policy) == nil, "a malformed rule for \(gate) lets root decide")
                for u in policy.users { check(Drops.allowed(Principal(uid: 4_000_000_001, user: u), policy) == nil, "a malformed rule for \(gate) lets \(u) decide") }
            } else {
                check(!(policy.users.isEmpty && policy.groups.isEmpty), "a valid rule for \(gate) names nobody")
                for u in policy.users where !u.isEmpty {
                    check(Drops.allowed(Principal(uid: 4_000_000_001, user: u), policy) != nil, "user \(u) named for \(gate) is not allowed")
                }
                if !policy.users.contains(nobody.user!) && !policy.users.contains(String(nobody.uid)) {
                    check(Drops.allowed(nobody, policy) == nil, "a user no rule names may decide \(gate)")
                }
            }
        }
    }
}

// MARK: - journal

enum JournalTarget {
    static func run(_ data: Data) {
        var entry: JournalEntry? = nil
        do {
            let v = try JSONValue.parse(data, maxDepth: 64)
            checkAccepted(v, from: data, parser: "parse")
            entry = try v.decode(as: JournalEntry.self)
        } catch is SpoolError {
        } catch is DecodingError {
        } catch {
            fail("a journal record was refused with \(type(of: error)): \(error)")
        }
        if let e = entry {
            // Re-encoding is stable: the canonical record decodes to a record whose canonical
            // form is the same (dates to the millisecond, as the runtime writes them).
            let c1: JSONValue
            do { c1 = try e.canonicalJSON() } catch { fail("a decoded record does not encode: \(error)") }
            let e2: JournalEntry
            do { e2 = try c1.decode(as: JournalEntry.self) } catch { fail("a record's canonical JSON does not decode: \(error): \(c1)") }
            let c2: JSONValue
            do { c2 = try e2.canonicalJSON() } catch { fail("a re-decoded record does not encode: \(error)") }
            check(c1 == c2, "canonical record is not stable: \(c1) → \(c2)")
            check(e2.seq == e.seq && e2.kind == e.kind && e2.name == e.name && e2.value == e.value && e2.data == e.data, "a round trip changed the record")
            // (Kinds are the runtime's own words: checked for those, not for any text.)
            if e.seq >= 0, !e.kind.rawValue.isEmpty, e.kind.rawValue.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || $0 == "_") }) {
                let parsed = JournalEntry.parseFileName(e.fileName)
                check(parsed?.seq == e.seq && parsed?.kind == e.kind.rawValue, "fileName \(e.fileName) parses to \(String(describing: parsed)), not seq \(e.seq) kind \(e.kind)")
            }
            _ = Journal.effective([e])
            _ = e.terminalStatus
        }
        // The same bytes as record 1 of a journal directory.
        let dir = Scratch.directory("journal")
        Scratch.write(data, to: dir + "/000001-step-x.json")
        let journal = Journal(directory: FilePath(dir), durable: DurableFile(tmpDirectory: FilePath(Scratch.root)))
        do {
            let (entries, damage) = try journal.loadPrefix()
            check(entries.count + damage.count == 1, "one file, \(entries.count) records and \(damage.count) damaged")
            if let first = entries.first {
                check(first.seq == 1, "record with seq \(first.seq) accepted at position 1")
                // The loader reads with the exact parser without a depth limit; the target's
                // own reading above has one, so compare only when it read the record.
                if let e = entry { check(first == e, "loadPrefix read another record than the decoder") }
                check(entry == nil || entry?.seq == 1, "loadPrefix accepted a record whose seq is not its position")
            } else if let e = entry, e.seq == 1, JSONValue.nestingDepth(data, above: 64) == nil,
                      (try? JournalEntry.decode(data, file: "000001-step-x.json")) != nil {
                // (JSONValue.parse keeps the last of a key given twice; a journal record with a
                // key twice is damage, as the runtime's own record decoder says.)
                fail("loadPrefix refused a record that decodes: \(damage)")
            }
        } catch {
            fail("loadPrefix threw \(error)")
        }
    }
}

// MARK: - blob

/// Input: segments separated by 0xFF (never in UTF-8 JSON). Segment 0 is a record's value,
/// the others blob files. Each file is named `sha256-` + the hash of its segment as given;
/// `@N` in any segment is then replaced by the name of segment N. So a crafted directory
/// can hold blobs under names that are not their hash, referring to each other or to
/// themselves, and list chains whose `prev` loops.
enum BlobTarget {
    static func run(_ data: Data) {
        let segments = data.split(separator: 0xFF, omittingEmptySubsequences: false).prefix(9).map { Data($0) }
        let names = segments.map { "sha256-" + ContentHash.sha256Hex($0) }
        func rewrite(_ d: Data) -> Data {
            var out = Data()
            var i = d.startIndex
            while i < d.endIndex {
                if d[i] == UInt8(ascii: "@"), d.index(after: i) < d.endIndex, let n = Int(String(UnicodeScalar(d[d.index(after: i)]))), n < names.count {
                    out.append(contentsOf: names[n].utf8)
                    i = d.index(i, offsetBy: 2)
                } else {
                    out.append(d[i])
                    i = d.index(after: i)
                }
            }
            return out
        }
        let dir = Scratch.directory("blobs")
        for (i, s) in segments.enumerated().dropFirst() { Scratch.write(rewrite(s), to: dir + "/" + names[i]) }
        let store = BlobStore(directory: FilePath(dir), durable: DurableFile(tmpDirectory: FilePath(Scratch.root)), threshold: 64)
        let record = rewrite(segments[0])
        // Blob files are read with the exact parser, whose cost grows fast with nesting depth
        // (the runtime writes them; see docs/reliability.md): crafted ones stay within 64 levels.
        let shallow = segments.allSatisfy { JSONValue.nestingDepth($0, above: 64) == nil }
        if shallow, let v = try? JSONValue.parseUntrusted(record, maxDepth: 64) {
            // Crafted: an answer or a SpoolError, in bounded time, never a trap or a loop.
            do {
                _ = try store.resolve(v)
            } catch let e as SpoolError {
                check([SpoolError.Code.malformed, .notFound, .io, .tooLarge].contains(e.code), "resolve failed with \(e.code)")
            } catch {
                fail("resolve threw something other than a SpoolError: \(error)")
            }
            do { _ = try store.referencedBlobs(in: v) } catch is SpoolError {} catch { fail("referencedBlobs threw \(error)") }
        }
        // Honest: what externalize stores, resolve gives back, and every blob is verified.
        // (A value that itself has the shape of a reference or a list node is read back as
        // what that shape means: a known ambiguity of the format, see docs/reliability.md.)
        if let v = try? JSONValue.parseUntrusted(segments[0], maxDepth: 64), !v.hasBlobShape {
            let honestDir = Scratch.directory("honest")
            let honest = BlobStore(directory: FilePath(honestDir), durable: DurableFile(tmpDirectory: FilePath(honestDir)), threshold: 64)
            do {
                let ref = try honest.externalize(v, force: true, staged: true)
                let back = try honest.resolve(ref)
                check(back == v, "externalize → resolve changed the value: \(v) → \(back)")
                let referenced = try honest.referencedBlobs(in: ref)
                check(!referenced.isEmpty, "a forced externalize stored nothing")
            } catch {
                fail("externalize/resolve of an honest store failed: \(error)")
            }
        }
    }
}

// MARK: - sse

/// Input: byte 0 seeds the chunking; the rest is the body of a `text/event-stream`.
enum SSETarget {
    static func run(_ data: Data) {
        guard let seed = data.first else { return }
        let bytes = Array(data.dropFirst())
        var whole = SSEParser()
        let events = whole.feed(bytes)
        check(events == reference(bytes), "SSEParser disagrees with the reference reading")
        // Any chunking gives the same events.
        var rng = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 | 1
        var chunked = SSEParser()
        var got: [SSEEvent] = []
        var i = 0
        while i < bytes.count {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
            let n = 1 + Int(rng % 17)
            got += chunked.feed(bytes[i..<min(bytes.count, i + n)])
            i += n
        }
        check(got == events, "a chunking of the same bytes gave other events")
        var single = SSEParser()
        check(bytes.flatMap { single.feed([$0]) } == events, "byte-by-byte feeding gave other events")

        decode(events, with: OpenAIStream(), refusalAware: true)
        decode(events, with: AnthropicStream(), refusalAware: false)
        for e in events {
            guard let j = try? JSONValue.parse(e.data, file: nil), case .object = j else { continue }
            for parse in [OpenAIWire.parse, AnthropicWire.parse] {
                do { _ = try parse(j, "p:m") } catch is LLMError {} catch { fail("a body parser threw \(error)") }
            }
        }
    }

    /// Feeds events to a decoder as the transport does (the first error ends the call) and
    /// checks the answer: complete, or an incomplete-response error; and the text shown as
    /// it arrived is the answer's text.
    static func decode(_ events: [SSEEvent], with decoder: some StreamDecoder, refusalAware: Bool) {
        var shown = ""
        for e in events {
            do {
                if let d = try decoder.handle(e) { shown += d }
            } catch is LLMError {
                return
            } catch {
                fail("a stream decoder threw \(error)")
            }
        }
        do {
            let r = try decoder.response(model: "p:m")
            if !refusalAware || r.finishReason != "refusal" {
                check(r.content == shown, "the answer's text differs from the text shown while streaming: \(r.content.debugDescription) vs \(shown.debugDescription)")
            }
            for c in r.toolCalls { check(!c.arguments.isEmpty, "a tool call with empty arguments") }
        } catch let e as LLMError {
            check(e.kind == .incomplete, "response() failed with \(e.kind) after every event was accepted")
        } catch {
            fail("response() threw \(error)")
        }
    }

    /// The WHATWG event-stream reading, written plainly: split into lines at CRLF, LF or CR;
    /// a blank line dispatches the event when it has data.
    static func reference(_ bytes: [UInt8]) -> [SSEEvent] {
        var lines: [[UInt8]] = []
        var cur: [UInt8] = []
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b == 0x0D || b == 0x0A {
                lines.append(cur)
                cur = []
                if b == 0x0D, i + 1 < bytes.count, bytes[i + 1] == 0x0A { i += 1 }
            } else {
                cur.append(b)
            }
            i += 1
        }
        // (`cur`, an unterminated last line, is never processed.)
        var out: [SSEEvent] = []
        var name: String? = nil
        var data: [String] = []
        for line in lines {
            if line.isEmpty {
                if !data.isEmpty { out.append(SSEEvent(name: name, data: data.joined(separator: "\n"))) }
                name = nil
                data = []
                continue
            }
            if line.first == UInt8(ascii: ":") { continue }
            let field: [UInt8], value: [UInt8]
            if let c = line.firstIndex(of: UInt8(ascii: ":")) {
                field = Array(line[..<c])
                var v = Array(line[(c + 1)...])
                if v.first == 0x20 { v.removeFirst() }
                value = v
            } else {
                field = line
                value = []
            }
            switch String(decoding: field, as: UTF8.self) {
            case "event": name = String(decoding: value, as: UTF8.self)
            case "data": data.append(String(decoding: value, as: UTF8.self))
            default: break
            }
        }
        return out
    }
}
