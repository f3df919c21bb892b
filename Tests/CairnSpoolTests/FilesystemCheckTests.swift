import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// `cairn doctor` may be run (as root) in a directory others can write: its scratch
/// directory can be renamed away and its name pointed elsewhere meanwhile. Removing the
/// scratch must never unlink anything outside the directory it made.
@Suite struct FilesystemCheckTests {
    @Test func removingAScratchThatWasSwappedForASymlinkTouchesNothingOutside() throws {
        let t = try TempSpool()
        let victim = t.path.appending("victim")
        #expect(mkdir(victim.string, 0o755) == 0)
        for n in ["a", "b", "keep.json"] { try Data("x".utf8).write(to: URL(fileURLWithPath: victim.appending(n).string)) }

        let scratch = try FilesystemCheck.makeScratch(in: t.path)
        try Data("1".utf8).write(to: URL(fileURLWithPath: scratch.path.appending("a").string))
        // The swap: the scratch renamed away, a symlink to the victim at its name.
        let moved = t.path.appending("moved-away")
        #expect(rename(scratch.path.string, moved.string) == 0)
        #expect(symlink(victim.string, scratch.path.string) == 0)
        FilesystemCheck.removeTree(scratch)
        #expect(try FileManager.default.contentsOfDirectory(atPath: victim.string).sorted() == ["a", "b", "keep.json"], "files outside the scratch were removed")
        #expect(DurableFile.exists(scratch.path), "the symlink someone else put there is not the scratch: left alone")

        // Unswapped, it is removed whole.
        let clean = try FilesystemCheck.makeScratch(in: t.path)
        try Data("1".utf8).write(to: URL(fileURLWithPath: clean.path.appending("a").string))
        FilesystemCheck.removeTree(clean)
        #expect(!DurableFile.exists(clean.path))
    }

    @Test func aDirectoryOthersCanRenameInIsRefused() throws {
        let t = try TempSpool()
        let open = t.path.appending("open"), sticky = t.path.appending("sticky")
        #expect(mkdir(open.string, 0o777) == 0 && chmod(open.string, 0o777) == 0)
        #expect(mkdir(sticky.string, 0o777) == 0 && chmod(sticky.string, 0o1777) == 0)
        #expect(throws: SpoolError.self) { try FilesystemCheck.run(in: open) }
        #expect(try FilesystemCheck.run(in: sticky).usable)
    }

    @Test func aRealRunLeavesNoScratchBehind() throws {
        let t = try TempSpool()
        let report = try FilesystemCheck.run(in: t.path)
        #expect(report.usable, "\(report.items.filter { $0.verdict == .failed })")
        #expect(try FileManager.default.contentsOfDirectory(atPath: t.path.string).filter { $0.hasPrefix(".cairn-doctor") }.isEmpty)
    }
}
