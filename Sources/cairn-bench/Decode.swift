import CairnSpool
import Foundation
import SystemPackage

/// `cairn-bench decode JOURNAL_DIR`: how long reading a journal takes, and its parts (the
/// long-run resume's profile said: decoding).
func benchDecode(_ dir: String) throws {
    let journal = Journal(directory: FilePath(dir), durable: DurableFile(tmpDirectory: FilePath("/tmp")))
    var t0 = now()
    let c = try journal.read()
    print("Journal.read: \(c.entries.count) records in \(ms(now() - t0)) (\(String(format: "%.2f", (now() - t0) / Double(c.entries.count) * 1e6)) µs per record)")
    let segs = try Spool.list(FilePath(dir)).filter { $0.hasSuffix(".jsonl") }.sorted()
    var datas: [Data] = []
    t0 = now()
    for s in segs { datas.append(try DurableFile.read(FilePath(dir + "/" + s), limit: 1 << 30)) }
    print("  read \(segs.count) segment files: \(ms(now() - t0))")
    // Line splitting alone, with memchr.
    t0 = now()
    var lines: [Data] = []
    for d in datas {
        let bytes = [UInt8](d)
        var start = 0
        while start < bytes.count {
            let end: Int = bytes.withUnsafeBufferPointer { b in
                guard let p = memchr(b.baseAddress! + start, 0x0A, b.count - start) else { return b.count }
                return UnsafeRawPointer(p) - UnsafeRawPointer(b.baseAddress!)
            }
            lines.append(Data(bytes[start..<end]))
            start = end + 1
        }
    }
    print("  split into \(lines.count) lines (memchr): \(ms(now() - t0))")
    t0 = now()
    for l in lines { _ = try JournalEntry.decode(l, file: nil) }
    print("  JournalEntry.decode per line: \(ms(now() - t0))")
    let decoder = JSONCoding.decoder
    t0 = now()
    for l in lines { _ = try decoder.decode(JournalEntry.self, from: l) }
    print("  one shared JSONDecoder per line: \(ms(now() - t0))")
    t0 = now()
    for d in datas {
        var a = Data("[".utf8)
        a.append(d)
        a[a.count - 1] = UInt8(ascii: "]")
        // Lines joined by "\n" are not an array; the commas go in:
        let text = String(decoding: a, as: UTF8.self).replacingOccurrences(of: "}\n{", with: "},{")
        _ = try decoder.decode([JournalEntry].self, from: Data(text.utf8))
    }
    print("  one JSONDecoder call per segment (as an array): \(ms(now() - t0))")
    t0 = now()
    for l in lines { _ = try JSONSerialization.jsonObject(with: l) }
    print("  JSONSerialization per line (to Foundation objects only): \(ms(now() - t0))")
    t0 = now()
    for l in lines { _ = try JSONValue.parse(l) }
    print("  JSONValue.parse per line: \(ms(now() - t0))")
}
