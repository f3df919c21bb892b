import CairnSpool
import CairnTesting
import Foundation
import Testing

/// The permission model (SPEC §3) with real Unix users, as CI runs it (as root): a service
/// user runs the daemon, `cairnalice` may approve, `cairnbob` is in the spool's group but
/// may not. Every forgery bob tries is refused and, where it left a file, `fsck` reports it.
/// Skipped (with a message) when not running as root, since it creates users.
@Suite(.serialized) struct AuthorizationTests {
    static let service = "cairnsvc", alice = "cairnalice", bob = "cairnbob", group = "cairnteam"

    struct Shell {
        var code: Int32
        var out: String
        var err: String
    }

    /// Runs `command` with sh as `user` (setpriv: real and effective ids, its groups).
    @discardableResult
    static func sh(_ user: String, _ command: String, env: [String: String] = [:]) throws -> Shell {
        let r = try Binary.run("/usr/bin/setpriv", ["--reuid=\(user)", "--regid=\(user)", "--init-groups", "--", "/bin/sh", "-c", command], env: env)
        return Shell(code: r.code, out: r.stdout, err: r.stderr)
    }

    static func root(_ command: String) throws -> Shell {
        let r = try Binary.run("/bin/sh", ["-c", command])
        return Shell(code: r.code, out: r.stdout, err: r.stderr)
    }

    static func ensureUsers() throws {
        _ = try root("getent group \(group) >/dev/null || groupadd \(group)")
        for u in [service, alice, bob] {
            let r = try root("id -u \(u) >/dev/null 2>&1 || useradd -M -U -G \(group) -s /usr/sbin/nologin \(u)")
            #expect(r.code == 0, "useradd \(u): \(r.err)")
        }
    }

    /// A spool owned by the service user, chgrp'd to the team, gate "go" narrowed to alice —
    /// set up as docs/operations.md says.
    static func serviceSpool() throws -> (TempSpool, String) {
        try ensureUsers()
        let t = try TempSpool()
        let cairn = Binary.path("cairn-fixtures")
        let spool = t.spool.root.string
        chmod(t.path.string, 0o755)
        try #require(try root("rm -rf \(spool) && mkdir -p \(spool) && chown \(service) \(spool)").code == 0)
        try #require(try sh(service, "\(cairn) init \(spool)").code == 0)
        try #require(try root("chgrp -R \(group) \(spool)").code == 0)
        let cfg = try sh(service, """
            jq '.approvers = {"go": {"users": ["\(alice)"]}}' \(spool)/cairn.json > \(spool)/.c && mv \(spool)/.c \(spool)/cairn.json
            """)
        try #require(cfg.code == 0, "\(cfg.err)")
        return (t, spool)
    }

    @Test(.enabled(if: getuid() == 0, "needs root to create the users cairnsvc, cairnalice and cairnbob (CI runs as root)"))
    func threeUsersEveryForgeryRefusedAndReported() async throws {
        let (t, spool) = try Self.serviceSpool()
        let cairn = Binary.path("cairn-fixtures")
        let d = try await DaemonProcess(spool: t.spool, asUser: Self.service)
        defer { d.stopBlocking() }

        // Submissions: the service user's own, and bob's through the inbox (not runs/).
        try #require(try Self.sh(Self.service, "echo '{\"who\": \"a\"}' | \(cairn) submit gate --spool \(spool) --id run-a --input -").code == 0)
        let bobSubmit = try Self.sh(Self.bob, "echo '{\"who\": \"b\"}' | \(cairn) submit gate --spool \(spool) --id run-b --input -")
        #expect(bobSubmit.code == 0, "bob submits through the inbox: \(bobSubmit.err)")
        try await t.waitFor("run-a", .waiting)
        try await t.waitFor("run-b", .waiting)
        #expect(try t.spool.readRun("run-b").submittedBy.user == Self.bob)
        let runA = "\(spool)/runs/run-a", runB = "\(spool)/runs/run-b"

        // Group inheritance: the run's drop directories have the spool's group, and are sticky.
        for dir in [runA, runA + "/approvals", runA + "/events", spool + "/inbox"] {
            var st = stat()
            #expect(lstat(dir, &st) == 0)
            #expect(st.st_gid == getgrnam(Self.group).pointee.gr_gid, "\(dir) group")
            #expect(st.st_mode & 0o7777 == 0o3775, "\(dir) mode \(String(st.st_mode & 0o7777, radix: 8))")
        }

        // 1. Bob approves by touch, and with `cairn approve`: refused, error file, run waits.
        #expect(try Self.sh(Self.bob, "touch \(runA)/approvals/go.approved").code == 0)
        try await waitUntil("bob's touch refused") { FileManager.default.fileExists(atPath: runA + "/approvals/go.approved.error.json") }
        #expect(try String(contentsOfFile: runA + "/approvals/go.approved.error.json", encoding: .utf8).contains("not allowed"))
        #expect(!FileManager.default.fileExists(atPath: runA + "/approvals/go.approved"), "a refused drop is set aside: it does not occupy the gate's name")
        let firstRefusal = try String(contentsOfFile: runA + "/approvals/go.approved.error.json", encoding: .utf8)
        // `cairn approve` refuses what the daemon would refuse, instead of saying "approved".
        let bobApprove = try Self.sh(Self.bob, "\(cairn) approve run-a go --spool \(spool)")
        #expect(bobApprove.code == 1 && bobApprove.err.contains("may not decide"), "\(bobApprove.out) \(bobApprove.err)")
        #expect(try String(contentsOfFile: runA + "/approvals/go.approved.error.json", encoding: .utf8) == firstRefusal)
        #expect(t.status("run-a") == .waiting)

        // 2. Bob rewrites history: the journal, state, run.json, the index, tmp/, runs/.
        let forgeries = [
            "mv \(runA)/journal \(runA)/journal.old",
            "mkdir \(runA)/journal/x",
            "echo '{}' > \(runA)/journal/000009-approval-go.json",
            "echo '{}' > \(runA)/state.json",
            "mv \(runA)/state.json \(runA)/s",
            "rm -f \(runA)/run.json",
            "touch \(spool)/index/completed/run-a",
            "touch \(spool)/tmp/x",
            "mkdir \(spool)/runs/forged",
            "echo x >> \(spool)/cairn.json",
            "touch \(spool)/workflows/gate",
            "mv \(runA)/decisions \(runA)/d",
        ]
        for f in forgeries {
            let r = try Self.sh(Self.bob, f)
            #expect(r.code != 0, "bob could: \(f)")
        }

        // 3. Alice approves run A (by touch): recorded as alice, with the rule that allowed it,
        //    and the file leaves approvals/ for decisions/, which only the runtime writes.
        #expect(try Self.sh(Self.alice, "touch \(runA)/approvals/go.approved").code == 0)
        try await t.waitFor("run-a", .completed)
        let decided = try #require(try t.spool.journal("run-a").load().last { $0.kind == "approval" && $0.phase == "decided" })
        #expect(decided.decidedBy?.user == Self.alice)
        #expect(decided.data?["authorization"] == .string("user \(Self.alice)"))
        let consumed = try #require(decided.data?["consumed"]?.stringValue)
        #expect(FileManager.default.fileExists(atPath: runA + "/" + consumed))
        #expect(!FileManager.default.fileExists(atPath: runA + "/approvals/go.approved"))

        // 4. Bob replays alice's decision into run B: move, link or copy it.
        #expect(try Self.sh(Self.bob, "mv \(runA)/\(consumed) \(runB)/approvals/go.approved").code != 0)
        _ = try Self.sh(Self.bob, "ln \(runA)/\(consumed) \(runB)/approvals/go.approved")  // EPERM (protected_hardlinks) or refused below
        _ = try Self.sh(Self.bob, "cp \(runA)/\(consumed) \(runB)/approvals/.x && mv -n \(runB)/approvals/.x \(runB)/approvals/go.approved")
        try await waitUntil("bob's replay refused") { FileManager.default.fileExists(atPath: runB + "/approvals/go.approved.error.json") }
        #expect(t.status("run-b") == .waiting)

        // 5. Bob removes or replaces what alice dropped (sticky: he cannot).
        #expect(try Self.sh(Self.alice, "echo '{\"x\": 1}' > \(runB)/events/.e && mv \(runB)/events/.e \(runB)/events/note.json").code == 0)
        #expect(try Self.sh(Self.bob, "rm -f \(runB)/events/note.json").code != 0)
        #expect(try Self.sh(Self.bob, "echo '{}' > \(runB)/events/.f && mv -f \(runB)/events/.f \(runB)/events/note.json").code != 0)
        #expect(FileManager.default.fileExists(atPath: runB + "/events/note.json"))

        // 6. What bob could leave behind is reported by fsck.
        #expect(try Self.sh(Self.bob, "echo '\"forged\"' > \(runB)/result.json").code == 0)
        let fsck = try Self.sh(Self.service, "\(cairn) fsck --spool \(spool)")
        #expect(fsck.code == 1)
        #expect(fsck.out.contains("runs/run-b/result.json: is owned by \(Self.bob)"), "\(fsck.out)")

        // Alice approves B; the run completes (the forged result.json is replaced).
        try? FileManager.default.removeItem(atPath: runB + "/approvals/go.approved")
        #expect(try Self.sh(Self.alice, "\(cairn) approve run-b go --spool \(spool)").code == 0)
        try await t.waitFor("run-b", .completed)
        #expect(try t.result("run-b")["by"] == .string(Self.alice))
    }

    /// What an attacker in the group found next (all refused now): a group-writable drop
    /// rewritten under its owner's name, a symlink planted in a script's working directory,
    /// flocks that hold runs hostage, a forged request file, a squatted id, a directory
    /// planted where the runtime writes.
    @Test(.enabled(if: getuid() == 0, "needs root to create users (CI runs as root)"))
    func groupMembersCannotRewriteHijackOrWedge() async throws {
        let (t, spool) = try Self.serviceSpool()
        let cairn = Binary.path("cairn-fixtures")
        // A script that writes a scratch file in its working directory.
        try #require(try Self.sh(Self.service, "printf '#!/bin/sh\\ncairn approval go >/dev/null\\necho scratch > scratch.txt\\npwd | cairn result --text -\\n' > \(spool)/workflows/scratchy && chmod 755 \(spool)/workflows/scratchy").code == 0)
        let d = try await DaemonProcess(spool: t.spool, asUser: Self.service)
        defer { d.stopBlocking() }
        try #require(try Self.sh(Self.service, "echo null | \(cairn) submit scratchy --spool \(spool) --id s1 --input -").code == 0)
        try await t.waitFor("s1", .waiting)
        let run = "\(spool)/runs/s1"

        // 1. Alice's touch under umask 002 (group-writable) is refused: bob could rewrite it.
        #expect(try Self.sh(Self.alice, "umask 002; touch \(run)/approvals/go.approved").code == 0)
        try await waitUntil("group-writable drop refused") { ((try? String(contentsOfFile: run + "/approvals/go.approved.error.json", encoding: .utf8)) ?? "").contains("writable by group") }
        try await t.waitFor("s1", .waiting)

        // 2. The script's working directory is not the group-writable run directory.
        #expect(try Self.sh(Self.bob, "ln -s \(spool)/cairn.json \(run)/work/scratch.txt").code != 0)
        #expect(try Self.sh(Self.bob, "ln -s \(spool)/cairn.json \(run)/scratch.txt").code == 0)  // allowed, and harmless:

        // 3. Bob cannot hold the run's lock (nor does a flock on the directory matter).
        #expect(try Self.sh(Self.bob, "exec 3<\(run)/.lock").code != 0)
        let holder = try Binary.start("/usr/bin/setpriv", ["--reuid=\(Self.bob)", "--regid=\(Self.bob)", "--init-groups", "--", "python3", "-c",
            "import os,fcntl,time; fd=os.open('\(run)', os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); time.sleep(8)"])
        try await Task.sleep(for: .microseconds(300_000))
        #expect(try Self.sh(Self.alice, "\(cairn) approve s1 go --spool \(spool)").code == 0)
        try await t.waitFor("s1", .completed, timeout: 6)
        holder.0.terminate()
        let cwd = try t.result("s1").stringValue?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        #expect(cwd.hasSuffix("/runs/s1/work"), "the script ran in \(cwd)")
        #expect(try String(contentsOfFile: run + "/work/scratch.txt", encoding: .utf8) == "scratch\n")
        #expect(try DurableFile.readJSON(t.spool.configFile)["format"] == 1, "cairn.json intact")

        // 4. A request file bob forged before the run asks is not something to approve.
        try #require(try Self.sh(Self.service, "echo '{\"who\": \"x\"}' | \(cairn) submit gate --spool \(spool) --id g2 --input -").code == 0)
        try await t.waitFor("g2", .waiting)
        let forged = "\(spool)/runs/g2/approvals/go2.request.json"
        #expect(try Self.sh(Self.bob, "echo '{\"summary\": \"harmless\"}' > \(spool)/runs/g2/approvals/.r && mv \(spool)/runs/g2/approvals/.r \(forged)").code == 0)
        let early = try Self.sh(Self.alice, "\(cairn) approve g2 go2 --spool \(spool)")
        #expect(early.code == 3 && early.err.contains("not the run's request"), "\(early.err)")

        // 5. Bob squats an id; alice's submission with it is rejected, not swallowed.
        #expect(try Self.sh(Self.bob, "echo '{\"who\": \"bob\"}' | \(cairn) submit gate --spool \(spool) --id order-1 --input -").code == 0)
        try await t.waitFor("order-1", .waiting)
        // `cairn submit` refuses it itself; an inbox file dropped by hand is rejected by the daemon.
        let squatted = try Self.sh(Self.alice, "echo '{\"who\": \"alice\"}' | \(cairn) submit gate --spool \(spool) --id order-1 --input -")
        #expect(squatted.code == 1 && squatted.out.isEmpty && squatted.err.contains("already used"), "\(squatted.out) \(squatted.err)")
        #expect(try Self.sh(Self.alice, "umask 022; echo '{\"workflow\": \"gate\", \"input\": {\"who\": \"alice\"}, \"id\": \"order-1\"}' > \(spool)/inbox/.o && mv \(spool)/inbox/.o \(spool)/inbox/order-1.json").code == 0)
        try await waitUntil("alice's squatted submission rejected") {
            ((try? String(contentsOfFile: spool + "/rejected/order-1.error.json", encoding: .utf8)) ?? "").contains("submitted by \(Self.bob)")
        }

        // 6. A directory planted where the runtime writes result.json does not wedge the run.
        #expect(try Self.sh(Self.bob, "mkdir -p \(spool)/runs/g2/result.json/x").code == 0)
        #expect(try Self.sh(Self.alice, "umask 022; touch \(spool)/runs/g2/approvals/go.approved").code == 0)
        try await t.waitFor("g2", .completed, timeout: 10)
        let fsck = try Self.sh(Self.service, "\(cairn) fsck --spool \(spool)")
        #expect(fsck.out.contains("foreign.result.json"), "\(fsck.out)")
    }
}
