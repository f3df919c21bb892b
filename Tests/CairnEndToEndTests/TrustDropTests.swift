import CairnSpool
import CairnTesting
import Foundation
import Testing

/// What an outside attacker in the spool's group did with names the runtime uses later
/// (findings F2–F6 of the second attack): a symlink at `repair/`, an error file or a
/// directory at a gate's name, a set-aside name taken in advance, a planted `refused/`,
/// names too long for a derived name. Real users (see AuthorizationTests), real binaries.
/// Skipped (with a message) when not running as root, since it creates users.
@Suite(.serialized) struct TrustDropTests {
    typealias A = AuthorizationTests
    let cairn = Binary.path("cairn-fixtures")

    static func skipped(_ test: String) -> Bool {
        guard getuid() != 0 else { return false }
        print("TrustDropTests.\(test): skipped — needs root to create the users \(A.service), \(A.alice), \(A.bob) (CI runs as root)")
        return true
    }

    func submit(_ spool: String, _ workflow: String, id: String, input: String) throws {
        let r = try A.sh(A.service, "echo '\(input)' | \(cairn) submit \(workflow) --spool \(spool) --id \(id) --input -")
        try #require(r.code == 0, "submit \(id): \(r.err)")
    }

    func lstatOf(_ path: String) -> stat? {
        var st = stat()
        return lstat(path, &st) == 0 ? st : nil
    }

    func isServiceDirectory(_ path: String) -> Bool {
        guard let st = lstatOf(path) else { return false }
        return (st.st_mode & S_IFMT) == S_IFDIR && st.st_uid == getpwnam(A.service).pointee.pw_uid
    }

    func names(_ dir: String) -> [String] { (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] }

    /// F2: fsck --repair moved damaged records into whatever a member had put at `repair`.
    @Test func fsckRepairNeverFollowsARepairEntryAMemberPlanted() async throws {
        if Self.skipped(#function) { return }
        let (t, spool) = try A.serviceSpool()
        let d = try await DaemonProcess(spool: t.spool, asUser: A.service)
        for id in ["vandal", "vandal2", "victim"] { try submit(spool, "gate", id: id, input: "{}") }
        for id in ["vandal", "vandal2", "victim"] { try await t.waitFor(id, .waiting) }
        await d.stop()
        let runs = spool + "/runs"
        for id in ["vandal", "vandal2"] {
            try #require(try A.sh(A.service, "echo garbage > \(runs)/\(id)/journal/000099-bogus.json").code == 0)
        }
        let victimJournal = names(runs + "/victim/journal").sorted()
        // A symlink into another run's journal; a directory of bob's, open to all.
        try #require(try A.sh(A.bob, "ln -s \(runs)/victim/journal \(runs)/vandal/repair").code == 0)
        try #require(try A.sh(A.bob, "mkdir \(runs)/vandal2/repair && chmod 777 \(runs)/vandal2/repair").code == 0)

        let fsck = try A.sh(A.service, "\(cairn) fsck --repair --spool \(spool)")
        #expect(names(runs + "/victim/journal").sorted() == victimJournal, "the victim's journal is untouched: \(fsck.out) \(fsck.err)")
        // (Before, fsck made a directory in the victim's journal through the link, then found
        // it there and "repaired" the victim too.)
        #expect(lstatOf(runs + "/victim/repair") == nil, "the victim needed no repair: \(fsck.out)")
        for id in ["vandal", "vandal2"] {
            let repair = "\(runs)/\(id)/repair"
            #expect(isServiceDirectory(repair), "\(id)/repair is the service user's own directory now")
            let stamps = names(repair)
            #expect(stamps.count == 1 && names(repair + "/" + (stamps.first ?? "")) == ["000099-bogus.json"], "\(id): the bad record is in repair/: \(fsck.out) \(fsck.err)")
            #expect(!FileManager.default.fileExists(atPath: "\(runs)/\(id)/journal/000099-bogus.json"))
            #expect(names("\(runs)/\(id)").contains { $0.hasPrefix("foreign.repair.") }, "bob's entry is set aside, kept")
        }
        #expect(names(runs).sorted() == ["vandal", "vandal2", "victim"], "no run directory was made by following a link")
    }

    /// F3: bob's own error file at GATE.approved.error.json, or a directory at the gate's
    /// decision names, kept his refused drop at the name, and alice could never decide.
    @Test func aMemberCannotBlockAGateTheyMayNotDecide() async throws {
        if Self.skipped(#function) { return }
        let (t, spool) = try A.serviceSpool()
        let d = try await DaemonProcess(spool: t.spool, asUser: A.service)
        defer { d.stopBlocking() }
        let plants = [
            "g-a-error": "umask 022; echo '{}' > D/.e && mv D/.e D/go.approved.error.json && : > D/.g && mv D/.g D/go.approved",
            "g-dir-approved": "mkdir D/go.approved",
            "g-dir-rejected": "mkdir D/go.rejected && touch D/go.rejected/x",
        ]
        for id in plants.keys.sorted() { try submit(spool, "gate", id: id, input: "{}") }
        for (id, plant) in plants.sorted(by: { $0.key < $1.key }) {
            try await t.waitFor(id, .waiting)
            let dir = "\(spool)/runs/\(id)/approvals"
            try #require(try A.sh(A.bob, plant.replacingOccurrences(of: "D/", with: dir + "/")).code == 0, "\(id): bob plants")
            try await waitUntil("\(id): what bob planted at the gate's names is set aside", timeout: 10) {
                lstatOf(dir + "/go.approved") == nil && lstatOf(dir + "/go.rejected") == nil
            }
            let approve = try A.sh(A.alice, "\(cairn) approve \(id) go --spool \(spool)")
            #expect(approve.code == 0, "\(id): alice approves: \(approve.err)")
            try await t.waitFor(id, .completed)
            #expect(try t.result(id)["by"] == .string(A.alice))
            #expect(try t.result(id)["approved"] == true)
            // Nothing bob put there was deleted: it is kept under a set-aside name.
            #expect(names(dir).contains { $0.hasPrefix("foreign.") } || names(dir).contains { $0.hasPrefix("refused.") } || !names("\(spool)/runs/\(id)/refused").isEmpty, "\(id): \(names(dir))")
        }
    }

    /// F4: the set-aside name `foreign.NAME.INODE` could be taken in advance; the write of
    /// result.json or GATE.request.json then failed for ever (EISDIR).
    @Test func aSetAsideNameTakenInAdvanceDoesNotWedgeARun() async throws {
        if Self.skipped(#function) { return }
        let (t, spool) = try A.serviceSpool()
        try submit(spool, "gate", id: "g", input: "{}")  // queued: no daemon yet
        let run = "\(spool)/runs/g"
        for path in ["\(run)/result.json", "\(run)/approvals/go.request.json"] {
            try #require(try A.sh(A.bob, "mkdir \(path)").code == 0)
            let inode = try #require(lstatOf(path)).st_ino
            let dir = (path as NSString).deletingLastPathComponent, name = (path as NSString).lastPathComponent
            try #require(try A.sh(A.bob, "touch \(dir)/foreign.\(name).\(inode)").code == 0)
        }
        let d = try await DaemonProcess(spool: t.spool, asUser: A.service)
        defer { d.stopBlocking() }
        try await t.waitFor("g", .waiting, timeout: 10)
        let request = try #require(lstatOf("\(run)/approvals/go.request.json"))
        #expect((request.st_mode & S_IFMT) == S_IFREG)
        let approve = try A.sh(A.alice, "\(cairn) approve g go --spool \(spool)")
        #expect(approve.code == 0, "\(approve.err)")
        try await t.waitFor("g", .completed, timeout: 10)
        #expect(try t.result("g")["by"] == .string(A.alice))
        #expect(names(run).filter { $0.hasPrefix("foreign.result.json.") }.count == 2, "bob's directory set aside beside his decoy: \(names(run))")
    }

    /// F5: `refused/` was made at the first refusal, so a member could put a symlink or a
    /// directory of theirs there first, and the run froze (cancel included).
    @Test func aPlantedRefusedEntryNeitherFreezesARunNorReceivesDrops() async throws {
        if Self.skipped(#function) { return }
        let (t, spool) = try A.serviceSpool()
        for id in ["new", "old-link", "old-dir"] { try submit(spool, "gate", id: id, input: "{}") }
        #expect(isServiceDirectory("\(spool)/runs/new/refused"), "a new run has refused/ from the start")
        // Runs made by an older version have no refused/ until their first refusal.
        let elsewhere = t.path.string + "/elsewhere"
        try #require(try A.root("mkdir -m 1777 \(elsewhere)").code == 0)
        for id in ["old-link", "old-dir"] { try #require(try A.sh(A.service, "[ ! -d \(spool)/runs/\(id)/refused ] || rmdir \(spool)/runs/\(id)/refused").code == 0) }
        try #require(try A.sh(A.bob, "ln -s \(elsewhere) \(spool)/runs/old-link/refused").code == 0)
        try #require(try A.sh(A.bob, "mkdir \(spool)/runs/old-dir/refused && chmod 777 \(spool)/runs/old-dir/refused").code == 0)
        // Older still: no lock file either, and bob puts his own at its name.
        try #require(try A.sh(A.service, "rm \(spool)/runs/old-dir/.lock").code == 0)
        try #require(try A.sh(A.bob, "umask 077; touch \(spool)/runs/old-dir/.lock").code == 0)
        let d = try await DaemonProcess(spool: t.spool, asUser: A.service)
        defer { d.stopBlocking() }
        for id in ["old-link", "old-dir"] {
            try await t.waitFor(id, .waiting, timeout: 10)
            let run = "\(spool)/runs/\(id)"
            // A refused drop goes to the runtime's refused/, not into bob's directory.
            try #require(try A.sh(A.bob, "touch \(run)/approvals/go.approved").code == 0)
            try await waitUntil("\(id): bob's drop refused and set aside") { lstatOf(run + "/approvals/go.approved") == nil }
            #expect(isServiceDirectory(run + "/refused"))
            #expect(names(run + "/refused").contains { $0.hasPrefix("go.approved.") })
            #expect(names(run).contains { $0.hasPrefix("foreign.refused.") }, "bob's entry kept aside: \(names(run))")
        }
        #expect(names("\(spool)/runs/old-dir").contains { $0.hasPrefix("foreign..lock.") }, "bob's lock file set aside")
        #expect(names(elsewhere).isEmpty, "nothing written through bob's symlink")
        let aside = try #require(names("\(spool)/runs/old-dir").first { $0.hasPrefix("foreign.refused.") })
        #expect(names("\(spool)/runs/old-dir/\(aside)").isEmpty, "nothing written into bob's directory")
        let cancel = try A.sh(A.alice, "\(cairn) cancel old-link --spool \(spool)")
        #expect(cancel.code == 0, "\(cancel.err)")
        try await t.waitFor("old-link", .cancelled, timeout: 10)
    }

    /// F6: for a drop name of 245+ characters, NAME.error.json and the refused name exceeded
    /// NAME_MAX: the run stopped advancing, and a bad inbox file stayed in inbox/ for ever.
    @Test func longDropNamesAreRefusedAndSetAsideNotWedging() async throws {
        if Self.skipped(#function) { return }
        let (t, spool) = try A.serviceSpool()
        let d = try await DaemonProcess(spool: t.spool, asUser: A.service)
        defer { d.stopBlocking() }
        try submit(spool, "listen", id: "l", input: "\"ev\"")
        try await t.waitFor("l", .waiting)
        let events = "\(spool)/runs/l/events"
        let long = "ev." + String(repeating: "x", count: 245) + ".json"
        try #require(long.utf8.count <= 255)
        try #require(try A.sh(A.bob, "umask 022; printf 'not json' > \(events)/.x && mv \(events)/.x \(events)/\(long)").code == 0)
        try await waitUntil("the long-named bad event is set aside, with its error file") {
            lstatOf(events + "/" + long) == nil && names(events).contains { $0.hasPrefix("ev.xxxx") && $0.hasSuffix(".error.json") }
        }
        let errorFile = events + "/" + (names(events).first { $0.hasPrefix("ev.xxxx") && $0.hasSuffix(".error.json") } ?? "?")
        #expect(((try? String(contentsOfFile: errorFile, encoding: .utf8)) ?? "").contains("not valid JSON"), "error file \(errorFile)")
        let signal = try A.sh(A.alice, "echo 1 | \(cairn) signal l ev --data - --spool \(spool)")
        #expect(signal.code == 0, "\(signal.err)")
        try await t.waitFor("l", .completed, timeout: 10)
        #expect(try t.result("l") == 1)

        // The inbox: a bad submission with a long name moves to rejected/ with its reason.
        let inbox = "\(spool)/inbox", bad = String(repeating: "s", count: 245) + ".json"
        try #require(try A.sh(A.bob, "umask 022; printf 'not json' > \(inbox)/.y && mv \(inbox)/.y \(inbox)/\(bad)").code == 0)
        try await waitUntil("the long-named bad submission leaves inbox/") { lstatOf(inbox + "/" + bad) == nil }
        let rejected = names("\(spool)/rejected")
        #expect(rejected.contains(bad), "\(rejected)")
        #expect(rejected.contains { $0.hasSuffix(".error.json") && $0.hasPrefix("sssss") }, "\(rejected)")
    }

    /// Names derived from a dropped file's name always fit NAME_MAX, stay distinct, and keep
    /// their prefix and suffix (what readers match on).
    @Test func derivedNamesFitNameMax() {
        #expect(Names.fitting("foreign.", "result.json", ".12.ab") == "foreign.result.json.12.ab")
        let a = String(repeating: "x", count: 250) + "a.json", b = String(repeating: "x", count: 250) + "b.json"
        for (prefix, suffix) in [("", ".error.json"), ("foreign.", ".123456789.deadbeef"), ("refused.", ".1.2")] {
            let fa = Names.fitting(prefix, a, suffix), fb = Names.fitting(prefix, b, suffix)
            #expect(fa.utf8.count <= 255 && fb.utf8.count <= 255)
            #expect(fa != fb)
            #expect(fa.hasPrefix(prefix + "xxxx") && fa.hasSuffix(suffix))
            #expect(fa == Names.fitting(prefix, a, suffix))
        }
        let wide = String(repeating: "é", count: 200)  // 400 bytes: cut on a character boundary
        let fw = Names.fitting("", wide, ".error.json")
        #expect(fw.utf8.count <= 255 && fw.hasSuffix(".error.json") && fw.hasPrefix("éé"))
    }
}
