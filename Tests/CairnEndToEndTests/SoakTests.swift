import CairnSpool
import CairnTesting
import Foundation
import Synchronization
import SystemPackage
import Testing

/// The soak (`make soak DURATION=30m`; docs/reliability.md, "Soak"): a mixed load — the Swift
/// workflow `soak` (step, recorded time, durable sleep, parallel steps, a child run, a call to
/// the fake LLM server, an approval, an event, an at-most-once payment) and a script workflow
/// doing the same through the helpers — on one spool served by three daemons, one of them
/// SIGKILLed every few seconds; approvals dropped by a second process (a shell loop running
/// `cairn approve`); live `rsync` copies taken every few seconds, each restored into a fresh
/// spool, repaired, and finished under a new daemon. Runs only when CAIRN_SOAK_DURATION is set
/// (`90s`, `30m`); it prints its counters and writes them to `.build/soak-report.txt`.
@Suite(.serialized) struct SoakTests {
    static let duration: Double? = ProcessInfo.processInfo.environment["CAIRN_SOAK_DURATION"].flatMap(parseDuration)

    static func parseDuration(_ s: String) -> Double? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600]
        if let u = s.last, let f = units[u], let n = Double(s.dropLast()) { return n * f }
        return Double(s)
    }

    static let script = #"""
        #!/bin/sh
        # The soak's script workflow: the helpers, in the order of the Swift workflow.
        set -e
        fx="$CAIRN_SPOOL/soak-effects.log"
        a=$(cairn step a -- sh -c 'sleep 0.02; echo "sa $CAIRN_IDEMPOTENCY_KEY" >> "$0"; echo 1' "$fx")
        cairn now > /dev/null
        cairn uuid > /dev/null
        cairn sleep 300ms
        b=$(cairn step b --retries 2 -- sh -c 'echo "sb $CAIRN_IDEMPOTENCY_KEY" >> "$0"; echo 2' "$fx")
        answer=$(echo "soak script $CAIRN_RUN_ID" | cairn llm ask --model fake:m --json | jq -r .content)
        cairn approval go > /dev/null
        ping=$(cairn event ping)
        paid=$(cairn step pay --at-most-once -- sh -c 'echo "spay $CAIRN_IDEMPOTENCY_KEY" >> "$0"; echo true' "$fx")
        jq -n --argjson a "$a" --argjson b "$b" --arg answer "$answer" --argjson ping "$ping" --argjson paid "$paid" \
          '{a: $a, b: $b, answer: $answer, ping: $ping, paid: $paid}' | cairn result -
        """#

    /// The second process: approves every pending approval of SPOOL (not the uncertain gates:
    /// those need a person who looks the effect up, which the soak's driver does).
    static let approver = #"""
        #!/bin/sh
        spool="$1"; cairn="$2"; n=0; seen="$spool/../approver.seen"
        while :; do
          for req in "$spool"/runs/*/approvals/*.request.json; do
            [ -e "$req" ] || continue
            dir=${req%/*}; gate=${req##*/}; gate=${gate%.request.json}
            case "$gate" in uncertain-*) continue;; esac
            run=${dir%/approvals}; run=${run##*/}
            grep -qxF "$run/$gate" "$seen" 2>/dev/null && continue
            [ -e "$dir/$gate.approved" ] || [ -e "$dir/$gate.rejected" ] || {
              "$cairn" approve "$run" "$gate" --spool "$spool" > /dev/null 2>&1 && n=$((n + 1)) && echo "$n" > "$spool/../approver.count"
            }
            echo "$run/$gate" >> "$seen"
          done
          sleep 0.1
        done
        """#

    struct Counters: CustomStringConvertible {
        var runs = 0, scriptRuns = 0, childRuns = 0, records = 0, steps = 0, kills = 0
        var copies = 0, copyRuns = 0, copyRunsFinished = 0, reExecutions = 0, paidTwice = 0
        var duplicated = 0, lost = 0, unreadable = 0, llmRequests = 0, llmCalls = 0
        var approvals = 0, events = 0, uncertainDecided = 0, wrongResults = 0
        var description: String {
            "runs \(runs) (\(scriptRuns) script, \(runs - scriptRuns) Swift, plus \(childRuns) child runs); \(records) journal records, \(steps) steps; daemons SIGKILLed \(kills); copies restored \(copies) (\(copyRuns) runs in them, \(copyRunsFinished) finished by the new daemon); re-executions \(reExecutions) (at-least-once steps run again after a kill); at-most-once effects twice \(paidTwice); uncertain gates decided \(uncertainDecided); approvals by the second process \(approvals); events dropped \(events); model requests \(llmRequests) for \(llmCalls) recorded calls; records duplicated \(duplicated); runs lost \(lost); wrong results \(wrongResults); JSON files unreadable \(unreadable)"
        }
    }

    @Test(.enabled(if: duration != nil, "set CAIRN_SOAK_DURATION (make soak DURATION=30m)"))
    func soak() async throws {
        let duration = Self.duration ?? 0
        let started = Date()
        var rng = SeededRandom("soak")
        let fake = try await FakeLLMProcess(queue: [
            ["status": 429, "retry_after": "0"], ["status": 500], ["delay": 1.0, "reply": ["content": "fine", "usage": ["input": 5, "output": 2]]],
        ], defaultStep: ["delay": 0.05, "reply": ["content": "fine", "usage": ["input": 5, "output": 2]]])
        let t = try TempSpool(prefix: "cairn-soak")
        let root = t.spool.root.string
        try Self.configure(t.spool, port: fake.port)
        let env = ["FAKE_KEY": "sk-soak-secret-key"]

        let approverPath = t.path.appending("approver.sh").string
        try Self.approver.write(toFile: approverPath, atomically: true, encoding: .utf8)
        let approver = try Binary.start("/bin/sh", [approverPath, root, Binary.path("cairn")])
        defer { kill(approver.0.processIdentifier, SIGKILL) }

        var daemons = try (0..<3).map { try DaemonProcess(starting: t.spool, env: env, name: "soak-d\($0)") }
        var kills = 0
        var submitted: [String] = []
        var c = Counters()
        let copies = Outcomes()
        var copiesStarted = 0, copiesSeen = 0
        var nextKill = Date().addingTimeInterval(3)
        var nextCopy = Date().addingTimeInterval(4)
        var n = 0
        var unfinished: [String] = []

        while Date().timeIntervalSince(started) < duration {
            // Keep about 12 top-level runs unfinished (only those are looked at: reading every
            // run's state ten times a second would be the soak's own load).
            unfinished = unfinished.filter { !Self.isFinal(t.spool, $0) }
            let open = unfinished
            for _ in open.count..<max(open.count, 12) {
                n += 1
                let script = Int.random(in: 0..<10, using: &rng) < 4
                let id = "\(script ? "s" : "w")-\(String(format: "%06d", n))"
                let input: JSONValue = script ? .null : ["n": .int(Int64(n)), "nap_ms": .int(Int64(Int.random(in: 100..<1000, using: &rng))), "model": "fake:m"]
                let r = await Binary.finish(try Binary.start("cairn-fixtures", ["submit", script ? "soak-script" : "soak", "--id", id, "--input", "-", "--spool", root], stdin: input.compactText()))
                #expect(r.code == 0, "submit \(id): \(r.stderr)")
                submitted.append(id)
                unfinished.append(id)
            }
            // The person: events, and the uncertain gates the approver leaves alone.
            for id in open { try Self.actAsPerson(t.spool, id, counters: &c) }
            if Date() >= nextKill {
                let i = kills % daemons.count
                await daemons[i].kill9()
                kills += 1
                daemons[i] = try DaemonProcess(starting: t.spool, env: env, name: "soak-d\(i)")
                nextKill = Date().addingTimeInterval(2 + Double.random(in: 0..<3, using: &rng))
            }
            // One copy at a time; the next one 3 s after the last was finished.
            let copiesDone = copies.list.withLock { $0.count }
            if copiesDone > copiesSeen {
                copiesSeen = copiesDone
                nextCopy = Date().addingTimeInterval(3)
            }
            if copiesDone == copiesStarted, Date() >= nextCopy {
                let base = t.path.appending("copy-\(copiesStarted)")
                copiesStarted += 1
                Task { [copies] in
                    let outcome = await Self.copyRestoreFinish(from: root, into: base, env: env)
                    copies.list.withLock { $0.append(outcome) }
                }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        try await waitUntil("the last copy restored", timeout: 240) { copies.list.withLock { $0.count } == copiesStarted }

        // Drain: no more kills; everything submitted finishes.
        try await waitUntil("every run finished", timeout: 180) {
            for id in submitted where !Self.isFinal(t.spool, id) { try Self.actAsPerson(t.spool, id, counters: &c) }
            return submitted.allSatisfy { Self.isFinal(t.spool, $0) }
        }
        for d in daemons { #expect(await d.stop() == 0) }
        kill(approver.0.processIdentifier, SIGKILL)

        // Counters over the spool as the soak left it.
        c.runs = submitted.count
        c.scriptRuns = submitted.filter { $0.hasPrefix("s-") }.count
        c.kills = kills
        c.approvals = Int((try? String(contentsOfFile: t.path.appending("approver.count").string, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
        let check = try Self.check(t.spool, runs: submitted)
        c.childRuns = check.childRuns
        c.records = check.records
        c.steps = check.steps
        c.duplicated = check.duplicated
        c.unreadable = check.unreadable
        c.lost = check.notCompleted.count
        c.wrongResults = check.wrong.count
        let effects = Self.effectCounts(root + "/soak-effects.log")
        c.reExecutions = effects.values.filter { $0.label != "pay" && $0.label != "spay" }.map { $0.count - 1 }.reduce(0, +)
        c.paidTwice = effects.values.filter { ($0.label == "pay" || $0.label == "spay") && $0.count > 1 }.count
        c.llmRequests = fake.requests.filter { $0["path"]?.stringValue?.hasSuffix("/chat/completions") == true }.count
        c.llmCalls = check.llmCalls
        for o in copies.list.withLock({ $0 }) {
            c.copies += 1
            c.copyRuns += o.runs
            c.copyRunsFinished += o.finished
            c.duplicated += o.duplicated
            c.unreadable += o.unreadable
            c.lost += o.notCompleted.count
            // A run the original finished ends the same in the copy (same inputs, decisions).
            for (id, value) in o.results {
                if let orig = try? DurableFile.readJSON(t.spool.run(id).resultFile), orig != value {
                    c.wrongResults += 1
                    Issue.record("\(id) restored from copy \(o.name) finished with \(value.compactText()), the original with \(orig.compactText())")
                }
            }
            #expect(o.notCompleted.isEmpty, "copy \(o.name): runs not completed: \(o.notCompleted)")
        }
        let fsck = try Binary.run("cairn", ["fsck", "--spool", root])
        #expect(fsck.code == 0, "fsck: \(fsck.stdout)")
        let report = "soak \(Int(duration)) s (\(String(format: "%.0f", Date().timeIntervalSince(started))) s with the drain), seed \(rng.seed): \(c)"
        print("SoakTests: \(report)")
        try? (report + "\n").write(toFile: FilePath(#filePath).removingLastComponent().removingLastComponent().removingLastComponent().appending(".build/soak-report.txt").string, atomically: true, encoding: .utf8)
        #expect(c.duplicated == 0)
        #expect(c.lost == 0, "not completed: \(check.notCompleted)")
        #expect(c.unreadable == 0)
        #expect(c.paidTwice == 0)
        #expect(check.wrong.isEmpty, "wrong results: \(check.wrong)")
        #expect(kills > 0 || duration < 4)
    }

    static func configure(_ spool: Spool, port: Int) throws {
        var cfg = try DurableFile.readJSON(spool.configFile).objectValue!
        cfg["llm"] = ["providers": ["fake": ["type": "openai", "base_url": .string("http://127.0.0.1:\(port)/v1"), "api_key_env": "FAKE_KEY", "timeout_seconds": 20]]]
        try spool.durable.write(json: .object(cfg), to: spool.configFile)
        let p = spool.workflowsDirectory.appending("soak-script").string
        try script.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
    }

    static func isFinal(_ s: Spool, _ id: String) -> Bool {
        guard let st = (try? s.readState(id))??.status else { return false }
        return st == .completed || st == .failed || st == .cancelled
    }

    /// What a person does for a run: drops the event it waits for (data "ping-RUN"), and at an
    /// uncertain gate looks the idempotency key up in the effects log — "done" when the
    /// payment happened, "run it again" when it did not. (Approvals are the approver's.)
    static func actAsPerson(_ s: Spool, _ id: String, counters: inout Counters) throws {
        guard let state = try? s.readState(id), state.status == .waiting, let w = state.waitingFor else { return }
        let run = s.run(id)
        switch w["kind"]?.stringValue {
        case "event":
            let target = run.directory.appending("events/ping.json")
            let entries: [JournalEntry] = (try? s.journal(id).load()) ?? []
            let received = entries.contains { (e: JournalEntry) -> Bool in e.kind == .event && e.phase == .received }
            if !DurableFile.exists(target), !received {
                try DurableFile.drop(Data("\"ping-\(id)\"".utf8), to: target)
                counters.events += 1
            }
        case "uncertain":
            guard let gate = w["gate"]?.stringValue, let key = w["idempotency_key"]?.stringValue else { return }
            let target = run.approvalsDirectory.appending("\(gate).approved")
            guard !DurableFile.exists(target) else { return }
            let paid = (try? String(contentsOfFile: s.root.appending("soak-effects.log").string, encoding: .utf8))?.contains(" \(key)\n") == true
            let value: JSONValue = id.hasPrefix("s-") ? ["stdout": "true\n", "exit_code": 0] : true
            let decision: JSONValue = paid ? ["action": "done", "value": value] : ["action": "rerun"]
            try DurableFile.drop(Data(decision.compactText().utf8), to: target)
            counters.uncertainDecided += 1
        default: return
        }
    }

    final class Outcomes: Sendable { let list = Mutex<[CopyOutcome]>([]) }

    struct CopyOutcome: Sendable {
        var name: String
        var runs = 0, finished = 0, duplicated = 0, unreadable = 0
        var notCompleted: [String] = []
        var results: [String: JSONValue] = [:]
    }

    /// `rsync -a` of the live spool, restored into a fresh directory as operations.md says
    /// (`rsync -a --delete`, `cairn fsck --repair`), then finished by a new daemon with a person
    /// doing the approvals and events.
    static func copyRestoreFinish(from root: String, into base: FilePath, env: [String: String]) async -> CopyOutcome {
        do { return try await copyRestoreFinishThrowing(from: root, into: base, env: env) } catch {
            Issue.record("copy \(base): \(error)")
            return CopyOutcome(name: base.lastComponent?.string ?? "", notCompleted: ["(the copy failed: \(error))"])
        }
    }

    static func copyRestoreFinishThrowing(from root: String, into base: FilePath, env: [String: String]) async throws -> CopyOutcome {
        var o = CopyOutcome(name: base.lastComponent?.string ?? "")
        mkdir(base.string, 0o755)
        let copy = base.appending("backup").string, fresh = base.appending("spool").string
        let r = await shell("rsync -a '\(root)/' '\(copy)/'")
        #expect(r.code == 0 || r.code == 24, "rsync: \(r.code) \(r.stderr)")
        let repair = await shell("rsync -a --delete '\(copy)/' '\(fresh)/' && '\(Binary.path("cairn"))' fsck --repair --spool '\(fresh)'")
        #expect(repair.code == 0, "restore of \(o.name): \(repair.stdout)\(repair.stderr)")
        let restored = try Spool.open(at: FilePath(fresh))
        let top = try restored.runIDs().filter { !$0.contains(".") }
        o.runs = top.count
        var pending = top.filter { !isFinal(restored, $0) }
        let before = top.count - pending.count
        let d = try await DaemonProcess(spool: restored, env: env, name: "restored")
        var person = Counters()
        do {
            let deadline = Date().addingTimeInterval(120 * testTimeScale)
            while !pending.isEmpty {
                if Date() > deadline { throw TimedOut(what: "copy \(o.name) to finish: \(pending.prefix(10)) still unfinished") }
                pending = pending.filter { !isFinal(restored, $0) }
                for id in pending {
                    try actAsPerson(restored, id, counters: &person)
                    if let st = try? restored.readState(id), st.status == .waiting, st.waitingFor?["kind"] == "approval",
                       let gate = st.waitingFor?["gate"]?.stringValue, !DurableFile.exists(restored.run(id).approvalsDirectory.appending("\(gate).approved")) {
                        try DurableFile.drop(Data(), to: restored.run(id).approvalsDirectory.appending("\(gate).approved"))
                    }
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        } catch {
            Issue.record("copy \(o.name): \(error); daemon log tail: \(d.log.suffix(3000))")
        }
        #expect(await d.stop() == 0)
        let check = try check(restored, runs: top)
        o.finished = top.filter { isFinal(restored, $0) }.count - before
        o.duplicated = check.duplicated
        o.unreadable = check.unreadable
        o.notCompleted = check.notCompleted
        for id in top { if let v = try? DurableFile.readJSON(restored.run(id).resultFile) { o.results[id] = v } }
        #expect(check.wrong.isEmpty, "copy \(o.name): wrong results: \(check.wrong)")
        try? FileManager.default.removeItem(atPath: base.string)
        return o
    }

    struct Check {
        var childRuns = 0, records = 0, steps = 0, duplicated = 0, unreadable = 0, llmCalls = 0
        var notCompleted: [String] = []
        var wrong: [String] = []
    }

    /// Over a spool: every JSON file parses; in every run's effective journal no operation is
    /// recorded twice; every run in `runs` completed with the result its input implies.
    static func check(_ s: Spool, runs: [String]) throws -> Check {
        var c = Check()
        let files = FileManager.default.enumerator(atPath: s.root.string)
        while let f = files?.nextObject() as? String {
            guard f.hasSuffix(".json"), !f.hasPrefix("tmp/") else { continue }
            if (try? JSONValue.parse(Data(contentsOf: URL(fileURLWithPath: s.root.string + "/" + f)))) == nil {
                c.unreadable += 1
                Issue.record("unreadable JSON: \(f)")
            }
        }
        let once: Set<String> = ["start", "retry", "intent", "uncertain", "patch"]
        for id in try s.runIDs() {
            if id.contains(".") { c.childRuns += 1 }
            let entries = Journal.effective(try s.journal(id).load())
            c.records += entries.count
            c.steps += entries.filter { $0.kind == .step }.count
            c.llmCalls += entries.filter { $0.kind.rawValue == "llm" }.count
            var seen: Set<String> = []
            for e in entries where !once.contains(e.kind.rawValue) {
                let key = "\(e.kind.rawValue)|\(e.name ?? "")|\(e.group ?? "")|\(e.index.map(String.init) ?? "")|\(e.phase?.rawValue ?? "")"
                if !seen.insert(key).inserted {
                    c.duplicated += 1
                    Issue.record("\(id): recorded twice: \(key)")
                }
            }
        }
        for id in runs {
            guard (try? s.readState(id))??.status == .completed, let v = try? DurableFile.readJSON(s.run(id).resultFile) else {
                c.notCompleted.append("\(id) (\((try? s.readState(id))??.status.rawValue ?? "no state"))")
                continue
            }
            let expected: JSONValue
            if id.hasPrefix("s-") {
                expected = ["a": 1, "b": 2, "answer": "fine", "ping": .string("ping-\(id)"), "paid": true]
            } else {
                let n = Int64(id.dropFirst(2)) ?? -1
                expected = ["a": .int(n), "parts": .int(6 * n), "kid": .int((n + 1) * 2), "answer": "fine", "approved": true, "ping": .string("ping-\(id)"), "paid": true]
            }
            if v != expected { c.wrong.append("\(id): \(v.compactText())") }
        }
        return c
    }

    /// "LABEL KEY" lines of an effects log, counted by key.
    static func effectCounts(_ path: String) -> [String: (label: String, count: Int)] {
        var counts: [String: (label: String, count: Int)] = [:]
        for line in ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            counts[parts[1], default: (parts[0], 0)].count += 1
        }
        return counts
    }

    static func shell(_ command: String) async -> Binary.Result {
        guard let started = try? Binary.start("/bin/sh", ["-c", command]) else { return Binary.Result(code: -1, stdout: "", stderr: "cannot start /bin/sh") }
        return await Binary.finish(started)
    }
}
