import CairnSpool
import CairnTesting
import Foundation
import Testing

/// `cairn doctor`: each primitive tried for real, the mode said, the scratch removed.
/// (On GlusterFS, where it finds the link+unlink fallback: GlusterTests.)
@Suite struct DoctorTests {
    @Test func aLocalDiskHasEverythingAndTheScratchIsRemoved() throws {
        let t = try TempSpool()
        let r = try Binary.run("cairn", ["doctor", t.path.string, "--json"])
        #expect(r.code == 0, "\(r.stdout) \(r.stderr)")
        let v = try JSONValue.parse(Data(r.stdout.utf8), file: "doctor")
        #expect(v["usable"] == .bool(true))
        #expect(v["first_writer_wins"] == .string("renameat2"))
        #expect(v["wake"] == .string("inotify"))
        let names = v["checks"]?.arrayValue?.compactMap { $0["name"]?.stringValue } ?? []
        #expect(names == ["write and fsync a file", "rename replaces atomically", "first writer wins", "fsync a directory", "flock on a regular file", "long file names", "inotify"], "\(names)")
        let verdicts = v["checks"]?.arrayValue?.compactMap { $0["verdict"]?.stringValue } ?? []
        #expect(verdicts.allSatisfy { $0 == "ok" }, "\(verdicts)")
        let left = try FileManager.default.contentsOfDirectory(atPath: t.path.string).filter { $0.hasPrefix(".cairn-doctor") }
        #expect(left.isEmpty, "scratch left behind: \(left)")
    }

    @Test func aSpoolIsCheckedWhereItStagesItsWritesAndAMissingDirectoryByItsParent() throws {
        let t = try TempSpool()
        _ = try Spool.create(at: t.path.appending("s"))
        let inSpool = try Binary.run("cairn", ["doctor", "--spool", t.path.string + "/s"])
        #expect(inSpool.code == 0)
        #expect(inSpool.stdout.hasPrefix(t.path.string + "/s/tmp: "), "\(inSpool.stdout)")
        #expect(inSpool.stdout.contains("Mode: first writer wins by renameat2(RENAME_NOREPLACE); runs wake by inotify."), "\(inSpool.stdout)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: t.path.string + "/s/tmp").isEmpty)

        let missing = try Binary.run("cairn", ["doctor", t.path.string + "/not/yet"])
        #expect(missing.code == 0)
        #expect(missing.stdout.contains("\(t.path.string)/not/yet does not exist yet: checking \(t.path.string)"), "\(missing.stdout)")
    }

    @Test func aPlaceWhereNothingCanBeWrittenFails() throws {
        let r = try Binary.run("cairn", ["doctor", "/proc/self"])
        #expect(r.code == 1)
        #expect(r.stderr.contains("cannot create a scratch directory"), "\(r.stderr)")
    }
}
