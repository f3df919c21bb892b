import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// The daemon with real inotify, from the outside: files dropped as a person would.
@Suite(.serialized) struct DaemonTests {
    @Test func approvalByTouchByMovedJSONEarlyAndRejection() throws {
        let t = try TempSpool()
        let d = try DaemonProcess(spool: t.spool)
        // touch
        let a = try t.submit("gate", input: ["who": "a"] as JSONValue)
        try t.waitFor(a, .waiting)
        #expect(try t.state(a).waitingFor?["gate"] == "go")
        try t.drop("approvals/go.approved", in: a)
        try t.waitFor(a, .completed)
        #expect(try t.result(a)["approved"] == true)
        #expect(try t.result(a)["by"] == .string(Principal.current.user ?? ""))
        // mv of a JSON value
        let b = try t.submit("gate", input: ["who": "b"] as JSONValue)
        try t.waitFor(b, .waiting)
        try t.drop("approvals/go.approved", in: b, content: #"{"comment": "edited", "value": {"draft": "better"}}"#)
        try t.waitFor(b, .completed)
        #expect(try t.result(b)["value"] == ["draft": "better"])
        // rejection with a reason
        let c = try t.submit("gate", input: ["who": "c"] as JSONValue)
        try t.waitFor(c, .waiting)
        try t.drop("approvals/go.rejected", in: c, content: #"{"reason": "no"}"#)
        try t.waitFor(c, .completed)
        #expect(try t.result(c)["approved"] == false)
        #expect(try t.result(c)["reason"] == "no")
        d.stop()
    }

    @Test func earlyDecisionCountsWhenTheRunGetsThere() throws {
        let t = try TempSpool()
        // Submit, drop the decision, and only then start a daemon.
        let r = try t.submit("gate", input: ["who": "x"] as JSONValue)
        try t.drop("approvals/go.approved", in: r, content: #""yes""#)
        let d = try DaemonProcess(spool: t.spool)
        try t.waitFor(r, .completed)
        #expect(try t.result(r)["value"] == "yes")
        d.stop()
    }

    @Test func refusedDropsGetErrorFilesAndTheRunKeepsWaiting() throws {
        let t = try TempSpool()
        var cfg = try DurableFile.readJSON(t.spool.configFile).objectValue!
        cfg["approvers"] = ["go": ["users": .array([.string(Principal.current.user ?? "root")])]]
        cfg["drop_size_limit"] = 1000
        try t.spool.durable.write(json: .object(cfg), to: t.spool.configFile)
        let d = try DaemonProcess(spool: t.spool)
        let r = try t.submit("gate", input: ["who": "x"] as JSONValue)
        try t.waitFor(r, .waiting)
        let approvals = t.spool.run(r).approvalsDirectory.string
        func expectError(_ name: String, _ fragment: String) throws {
            let err = approvals + "/" + name + ".error.json"
            try waitUntil("\(err)") { FileManager.default.fileExists(atPath: err) }
            let text = try String(contentsOfFile: err, encoding: .utf8)
            #expect(text.contains(fragment), "\(name): \(text)")
            // Never deleted: set aside in refused/ (so it does not occupy the name), or left.
            let moved = (try? JSONValue.parse(text))?["moved_to"]?.stringValue.map { t.spool.run(r).directory.string + "/" + $0 }
            let kept = moved ?? (approvals + "/" + name)
            var st = stat()
            #expect(lstat(kept, &st) == 0, "the drop must not be deleted: \(kept)")
        }
        // A symlink.
        #expect(symlink("/etc/passwd", approvals + "/go.approved") == 0)
        try expectError("go.approved", "symbolic link")
        try t.waitFor(r, .waiting)
        unlink(approvals + "/go.approved")
        // A FIFO (must not block the daemon).
        #expect(mkfifo(approvals + "/go.approved", 0o644) == 0)
        let fifoErr = approvals + "/go.approved.error.json"
        try waitUntil("fifo refusal") { ((try? String(contentsOfFile: fifoErr, encoding: .utf8)) ?? "").contains("not a regular file") }
        unlink(approvals + "/go.approved")
        // Oversized.
        try t.drop("approvals/go.approved", in: r, content: String(repeating: "x", count: 5000))
        try waitUntil("oversize refusal") { ((try? String(contentsOfFile: fifoErr, encoding: .utf8)) ?? "").contains("over the limit") }
        // Unauthorized owner (uid 1 is not an approver; giving a file away needs root).
        let p = approvals + "/go.approved"
        unlink(p)
        if getuid() == 0 {
            let tmp = t.path.appending("drop").string
            try "".write(toFile: tmp, atomically: false, encoding: .utf8)
            #expect(chown(tmp, 1, 1) == 0)
            #expect(rename(tmp, p) == 0)
            try waitUntil("unauthorized refusal") { ((try? String(contentsOfFile: fifoErr, encoding: .utf8)) ?? "").contains("not allowed") }
            try t.waitFor(r, .waiting)
        }
        // Another run keeps going meanwhile.
        let other = try t.submit("nap", input: 0.05)
        try t.waitFor(other, .completed)
        // A good drop (replacing the bad one) is accepted.
        unlink(p)
        try t.drop("approvals/go.approved", in: r)
        try t.waitFor(r, .completed)
        d.stop()
    }

    @Test func inboxSubmissionsAndRejections() throws {
        let t = try TempSpool()
        let d = try DaemonProcess(spool: t.spool)
        func dropInbox(_ name: String, _ content: String) throws {
            let tmp = t.spool.tmpDirectory.appending("x-\(name)").string
            try content.write(toFile: tmp, atomically: false, encoding: .utf8)
            #expect(rename(tmp, t.spool.inboxDirectory.appending(name).string) == 0)
        }
        try dropInbox("one.json", #"{"workflow": "nap", "input": 0.01, "id": "from-inbox", "idempotency_key": "k-1"}"#)
        try dropInbox("two.json", #"{"workflow": "nap", "input": 0.01, "idempotency_key": "k-1"}"#)
        try dropInbox("bad.json", #"{"workflow": "no-such-thing"}"#)
        try dropInbox("worse.json", "not json")
        try t.waitFor("from-inbox", .completed)
        try waitUntil("rejections") { (try Spool.list(t.spool.rejectedDirectory)).count == 4 }
        #expect(try Spool.list(t.spool.inboxDirectory).isEmpty)
        #expect(try t.spool.runIDs() == ["from-inbox"])
        let err = try DurableFile.readJSON(t.spool.rejectedDirectory.appending("bad.error.json"))
        #expect(err["error"]?.stringValue?.contains("no workflow 'no-such-thing'") == true)
        #expect(try DurableFile.readJSON(t.spool.rejectedDirectory.appending("worse.error.json"))["error"]?.stringValue?.contains("not valid JSON") == true)
        d.stop()
    }

    @Test func timersFireAfterARestart() throws {
        let t = try TempSpool()
        var d = try DaemonProcess(spool: t.spool)
        let r = try t.submit("nap", input: 1.5)
        try t.waitFor(r, .waiting)
        #expect(d.stop() == 0)
        usleep(2_000_000)  // the timer comes due while no daemon runs
        #expect(t.status(r) == .waiting)
        d = try DaemonProcess(spool: t.spool)
        try t.waitFor(r, .completed, timeout: 5)
        #expect(try t.result(r) == "woke")
        d.stop()
    }

    @Test func simulatedOverflowLeadsToARescanThatLosesNothing() throws {
        let t = try TempSpool()
        let d = try DaemonProcess(spool: t.spool, env: ["CAIRN_SIMULATE_OVERFLOW_EVERY": "3"])
        var runs: [String] = []
        for i in 0..<8 {
            let r = try t.submit("gate", input: ["who": .string("r\(i)")] as JSONValue)
            runs.append(r)
        }
        for r in runs { try t.waitFor(r, .waiting) }
        for r in runs { try t.drop("approvals/go.approved", in: r) }
        for r in runs { try t.waitFor(r, .completed) }
        #expect(d.log.contains("overflowed"))
        d.stop()
    }

    @Test func aKilledDaemonsRunsAreFinishedByAnotherWithNoStepRecordedTwice() throws {
        let t = try TempSpool()
        let effects = t.path.appending("effects.log").string
        let a = try DaemonProcess(spool: t.spool, name: "a")
        let b = try DaemonProcess(spool: t.spool, name: "b")
        var runs: [String] = []
        for _ in 0..<4 {
            runs.append(try t.submit("crashy", input: ["steps": 8, "effects": .string(effects), "delay_ms": 60] as JSONValue))
        }
        // Let both daemons get going, then kill A with SIGKILL.
        try waitUntil("some progress") { (try? String(contentsOfFile: effects, encoding: .utf8))?.split(separator: "\n").count ?? 0 >= 6 }
        a.kill9()
        // B finishes everything. The at-most-once "pay" step stops at its uncertain gate if A
        // died inside it; a person decides (here: run it again).
        try waitUntil("all runs completed by B", timeout: 40) {
            for r in runs where t.status(r) == .waiting {
                if (try? t.state(r).waitingFor?["kind"]) == "uncertain",
                   !FileManager.default.fileExists(atPath: t.spool.run(r).approvalsDirectory.appending("uncertain-pay.approved").string) {
                    try t.drop("approvals/uncertain-pay.approved", in: r)
                }
            }
            return runs.allSatisfy { t.status($0) == .completed }
        }
        for r in runs {
            let steps = try t.spool.journal(r).load().filter { $0.kind == "step" && $0.error == nil }.compactMap(\.name)
            #expect(Set(steps).count == steps.count, "a step was recorded twice in \(r): \(steps)")
        }
        b.stop()
    }

    @Test func twoDaemonsTakeEachInboxFileOnce() throws {
        let t = try TempSpool()
        let a = try DaemonProcess(spool: t.spool, name: "a")
        let b = try DaemonProcess(spool: t.spool, name: "b")
        for i in 0..<12 {
            let tmp = t.spool.tmpDirectory.appending("sub-\(i)").string
            try #"{"workflow": "nap", "input": 0.01}"#.write(toFile: tmp, atomically: false, encoding: .utf8)
            #expect(rename(tmp, t.spool.inboxDirectory.appending("s\(i).json").string) == 0)
        }
        try waitUntil("inbox drained") { try Spool.list(t.spool.inboxDirectory).isEmpty }
        usleep(300_000)
        #expect(try t.spool.runIDs().count == 12)
        for r in try t.spool.runIDs() { try t.waitFor(r, .completed) }
        a.stop()
        b.stop()
    }

    @Test func retryDroppedWhileNoDaemonRanIsHonouredAtStart() throws {
        let t = try TempSpool()
        // A run that fails: the gate workflow with bad input fails to decode.
        let r = try t.spool.createRun(.init(workflow: "nap", input: "not a number")).id
        var d = try DaemonProcess(spool: t.spool)
        try t.waitFor(r, .failed)
        d.stop()
        try t.drop("retry", in: r)
        d = try DaemonProcess(spool: t.spool)
        // It fails again (same input), but it was picked up: the retry file is consumed.
        try waitUntil("retry consumed") { !FileManager.default.fileExists(atPath: t.spool.run(r).retryFile.string) }
        d.stop()
    }

    @Test func sharedFilesystemSimulationFindsWorkByRescanning() throws {
        // Several daemons that see no inotify events (as for other hosts' writes on NFS or
        // CephFS): --rescan-interval alone finds submissions and decisions.
        let t = try TempSpool()
        let env = ["CAIRN_SIMULATE_REMOTE_WRITES": "1"]
        let a = try DaemonProcess(spool: t.spool, env: env, args: ["--rescan-interval", "300ms"], name: "a")
        let b = try DaemonProcess(spool: t.spool, env: env, args: ["--rescan-interval", "300ms"], name: "b")
        var runs: [String] = []
        for i in 0..<4 { runs.append(try t.submit("gate", input: ["who": .string("h\(i)")] as JSONValue)) }
        for r in runs { try t.waitFor(r, .waiting, timeout: 10) }
        for r in runs { try t.drop("approvals/go.approved", in: r) }
        for r in runs { try t.waitFor(r, .completed, timeout: 10) }
        for r in runs {
            let decided = try t.spool.journal(r).load().filter { $0.kind == "approval" && $0.phase == "decided" }
            #expect(decided.count == 1)
        }
        a.stop()
        b.stop()
    }

    @Test func runsSharingAConcurrencyKeyAreAdvancedOneAtATime() throws {
        let t = try TempSpool()
        let fx = t.path.appending("fx").string
        // Three runs with the key "cust-1" (default limit 1), two without a key.
        // Ids that sort keyed runs first (the daemon starts ready runs in id order), so that
        // the unkeyed ones start while a keyed one runs — deterministically, not by the luck
        // of generated ids made in the same millisecond.
        for (i, key) in ["cust-1", "cust-1", "cust-1", nil, nil].enumerated() {
            _ = try t.spool.createRun(.init(workflow: "hold", input: ["effects": .string(fx), "tag": .string(key.map { "\($0)-\(i)" } ?? "free-\(i)"), "ms": 300], id: "run-\(i)", concurrencyKey: key))
        }
        let d = try DaemonProcess(spool: t.spool)
        try waitUntil("all done", timeout: 20) { try t.spool.runIDs().allSatisfy { t.status($0) == .completed } }
        d.stop()
        let lines = try String(contentsOfFile: fx, encoding: .utf8).split(separator: "\n").map(String.init)
        // Keyed runs never overlap: between a keyed start and its end, no other keyed start.
        var open: String? = nil
        var overlappedFree = false
        for l in lines {
            let parts = l.split(separator: " ").map(String.init)
            guard parts[1].hasPrefix("cust-1") else {
                if parts[0] == "start" && open != nil { overlappedFree = true }
                continue
            }
            if parts[0] == "start" {
                #expect(open == nil, "keyed runs overlapped: \(lines)")
                open = parts[1]
            } else {
                open = nil
            }
        }
        // And the key does not hold up runs without one.
        #expect(overlappedFree, "unkeyed runs waited for keyed ones: \(lines)")
    }
}
