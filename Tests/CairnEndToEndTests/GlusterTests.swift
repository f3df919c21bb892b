import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// The spool on a real distributed filesystem (SPEC §6): GlusterFS from Debian's packages,
/// one volume on a local brick, FUSE-mounted twice (each mount plays a host), a daemon on
/// each with --rescan-interval, runs submitted through both, one daemon SIGKILLed. Needs
/// root and glusterfs-server (make test installs it when root); skipped with a message
/// otherwise. Cleans up the volume and the mounts.
@Suite(.serialized) struct GlusterTests {
    /// Through system(3), output to a file, every other inherited descriptor closed:
    /// glusterd, the brick and the FUSE client are daemons that would hold open for ever any
    /// pipe of ours — or a lock file descriptor our own caller passed down (`flock FILE
    /// swift test` once left glusterd holding a build lock).
    /// Off Swift Testing's small thread pool (gluster commands take seconds; a blocked pool
    /// thread stalls every other test's waits).
    func sh(_ command: String) async -> Binary.Result {
        await onOwnThread { Self.shBlocking(command) }
    }

    static func shBlocking(_ command: String) -> Binary.Result {
        let log = FileManager.default.temporaryDirectory.path + "/cairn-gluster-\(getpid()).log"
        let closeInherited = "for fd in $(ls /proc/$$/fd); do [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"; done 2>/dev/null"
        let script = "\(closeInherited); (\(command)) > \(log) 2>&1 < /dev/null"
        let status = system("exec bash -c '" + script.replacingOccurrences(of: "'", with: "'\\''") + "'")
        let out = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return Binary.Result(code: status == 0 ? 0 : 1, stdout: out, stderr: out)
    }

    @Test(.enabled(if: getuid() == 0, "needs root to mount GlusterFS (CI runs as root)"))
    func twoHostsOneSpoolOneKilled() async throws {
        guard await sh("command -v glusterd && command -v gluster && test -e /dev/fuse").code == 0 else {
            print("GlusterTests: skipped — glusterfs-server/glusterfs-client or /dev/fuse missing (make test installs them as root)")
            return
        }
        if await sh("pgrep -x glusterd").code != 0 {
            #expect(await sh("glusterd").code == 0, "glusterd starts")
            try await waitUntil("glusterd answers", timeout: 30) { Self.shBlocking("gluster --mode=script volume list").code == 0 }
        }
        let t = try TempSpool()
        let base = t.path.string
        let volume = "cairn" + String(UUID().uuidString.prefix(8)).lowercased()
        let host = await sh("hostname").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let m1 = base + "/m1", m2 = base + "/m2"
        #expect(await sh("mkdir -p \(base)/brick \(m1) \(m2)").code == 0)
        let created = await sh("gluster --mode=script volume create \(volume) \(host):\(base)/brick/b force && gluster --mode=script volume start \(volume)")
        try #require(created.code == 0, "volume: \(created.stdout) \(created.stderr)")
        defer {
            _ = Self.shBlocking("umount -l \(m1); umount -l \(m2); gluster --mode=script volume stop \(volume) force; gluster --mode=script volume delete \(volume)")
        }
        try #require(await sh("mount -t glusterfs \(host):/\(volume) \(m1) && mount -t glusterfs \(host):/\(volume) \(m2)").code == 0)

        // `cairn doctor` finds the FUSE mount and the first-writer-wins fallback.
        let doctor = try Binary.run("cairn", ["doctor", m1])
        #expect(doctor.code == 0, "doctor: \(doctor.stdout) \(doctor.stderr)")
        #expect(doctor.stdout.contains("fuse (shared") && doctor.stdout.contains("fallback") && doctor.stdout.contains("link+unlink"), "doctor: \(doctor.stdout)")
        #expect(doctor.stdout.contains("--rescan-interval"), "doctor tells to rescan: \(doctor.stdout)")

        // A file replaced again and again through one mount, read through the other: ENOENT
        // and ESTALE (seen in 5 of 143,200 such reads) are looked at again, never errors.
        let churn = FilePath(m1 + "/churn.json"), churnSeen = FilePath(m2 + "/churn.json")
        try Data("0".utf8).write(to: URL(fileURLWithPath: churn.string))
        let staging = FilePath(m1)
        let stopChurn = Date().addingTimeInterval(3)
        let writer = Thread {
            var i = 0
            while Date() < stopChurn {
                i += 1
                let tmp = staging.appending(".churn.\(i)")
                try? DurableFile.writeStaged(Data("\(i)".utf8), to: tmp)
                _ = rename(tmp.string, churn.string)
            }
        }
        writer.start()
        let (reads, readErrors) = await onOwnThread { () -> (Int, [String]) in
            var reads = 0, readErrors: [String] = []
            while Date() < stopChurn {
                reads += 1
                do { _ = try DurableFile.read(churnSeen, missingMayBeTransient: true) } catch { readErrors.append("\(error)") }
            }
            return (reads, readErrors)
        }
        #expect(readErrors.isEmpty, "\(readErrors.count) of \(reads) reads failed: \(readErrors.prefix(3))")

        // The spool, made through one mount; a script workflow whose steps leave their
        // idempotency key in a file on local disk (the "effect").
        let effects = base + "/effects", starts = base + "/starts"
        let created1 = try Binary.run("cairn", ["init", m1 + "/spool"])
        try #require(created1.code == 0, "init on GlusterFS: \(created1.stderr)")
        let script = m1 + "/spool/workflows/work"
        try """
            #!/bin/sh
            for i in 1 2 3; do
              cairn step s$i -- sh -c 'echo "$CAIRN_IDEMPOTENCY_KEY" >> \(effects); echo "$CAIRN_IDEMPOTENCY_KEY $(date +%s.%N)" >> \(starts); sleep 0.3; echo $CAIRN_STEP_ATTEMPT' >/dev/null
            done
            echo '"done"' | cairn result -

            """.write(toFile: script, atomically: false, encoding: .utf8)
        chmod(script, 0o755)
        let s1 = try Spool.open(at: FilePath(m1 + "/spool")), s2 = try Spool.open(at: FilePath(m2 + "/spool"))
        let d1 = try await DaemonProcess(spool: s1, args: ["--rescan-interval", "1s"], name: "host1")
        let d2 = try await DaemonProcess(spool: s2, args: ["--rescan-interval", "1s"], name: "host2")
        var runs: [String] = []
        for i in 0..<24 {
            let s = i % 2 == 0 ? s1 : s2
            let r = try Binary.run("cairn", ["submit", "work", "--spool", s.root.string])
            try #require(r.code == 0, "submit: \(r.stderr)")
            runs.append(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        // `cairn wait` through the other mount (no inotify event reaches it from there).
        let waiter = try Binary.start("cairn", ["wait", runs[0], "--timeout", "120s", "--spool", s2.root.string])
        try await Task.sleep(for: .microseconds(800_000))
        let doneBefore = runs.filter { (try? s2.readState($0))??.status == .completed }.count
        let killedAt = Date()
        await d1.kill9()
        try await waitUntil("every run completed through host 2", timeout: 120) {
            runs.allSatisfy { (try? s2.readState($0))??.status == .completed }
        }
        let finished = Date().timeIntervalSince(killedAt)
        let w = await Binary.finish(waiter)
        #expect(w.code == 0, "cairn wait through the other mount: \(w.stderr)")
        await d2.stop()

        // No step recorded twice; every recorded step's effect happened; an effect ran twice
        // only for a step that was in flight when its daemon died (same idempotency key).
        let lines = ((try? String(contentsOfFile: effects, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        var recordedKeys: Set<String> = []
        for r in runs {
            let (entries, damage) = try s2.journal(r).loadPrefix()
            #expect(damage.isEmpty, "\(r): \(damage)")
            let steps = entries.filter { $0.kind == "step" }
            #expect(steps.count == 3, "\(r): \(steps.count) step records")
            for s in steps { if let k = s.idempotencyKey { recordedKeys.insert(k) } }
        }
        #expect(Set(lines) == recordedKeys, "every recorded step ran, and nothing else did")
        let twice = lines.count - Set(lines).count
        #expect(twice <= 8, "\(twice) effects repeated (only steps in flight at the kill may run again)")
        // Takeover: from the kill to the moment a step that was in flight under the dead
        // daemon started again under the other one.
        var firstStart: [String: Double] = [:], takeover: Double?
        for line in ((try? String(contentsOfFile: starts, encoding: .utf8)) ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let t = Double(parts[1]) else { continue }
            let key = String(parts[0])
            if firstStart[key] == nil { firstStart[key] = t } else if t > killedAt.timeIntervalSince1970 {
                takeover = min(takeover ?? .infinity, t - killedAt.timeIntervalSince1970)
            }
        }
        // Right after the last run completed through host 1: fsck through host 2 looks past its
        // FUSE client's 1 s name cache itself (an index entry moved a moment ago is not drift).
        let fsck = try Binary.run("cairn", ["fsck", "--spool", s2.root.string])
        #expect(fsck.code == 0, "fsck through host 2: \(fsck.stdout)")
        print("GlusterTests: \(runs.count) runs (\(doneBefore) done before the kill), 1 daemon SIGKILLed, all completed \(String(format: "%.1f", finished)) s after the kill; \(lines.count) step effects for \(recordedKeys.count) steps (\(twice) repeated); takeover of an in-flight step \(takeover.map { String(format: "%.2f s", $0) } ?? "— (none was in flight)") after the kill; \(reads) reads of a file being replaced through the other mount, 0 failed")
    }
}

/// Runs blocking work on a thread of its own and waits for it without holding one of Swift
/// Testing's cooperative threads.
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { c in
        Thread { c.resume(returning: body()) }.start()
    }
}
