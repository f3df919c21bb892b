import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// A workflow process killed with SIGKILL at named points inside the durable write (and at
/// random moments), then resumed, until it completes. After every kill: no JSON file in the
/// spool is partial, no step whose record was written runs again, the at-most-once step
/// never runs twice; at the end every step's effect happened.
@Suite(.serialized) struct CrashTests {
    static let steps = 6
    static let stepNames = (0..<steps).map { "s-\($0)" } + ["big", "pay"]

    enum Kill: CustomStringConvertible {
        case at(String, Int)
        case randomly(maxMs: Int)
        var description: String {
            switch self {
            case .at(let p, let n): return "\(p):\(n)"
            case .randomly(let ms): return "random<\(ms)ms"
            }
        }
    }

    static let plans: [Kill] = [
        .at("write.before-fsync", 3), .at("write.before-rename", 4), .at("write.before-dirsync", 5), .at("write.after-dirsync", 6),
        .at("write.before-fsync", 9), .at("write.before-rename", 11), .at("write.before-dirsync", 12), .at("write.after-dirsync", 13),
        .at("step.after-body", 1), .at("step.after-body", 4), .at("step.after-body", 5), .at("step.after-body", 6),
        .randomly(maxMs: 15), .randomly(maxMs: 30), .randomly(maxMs: 60), .randomly(maxMs: 120),
        // Compaction (every 4 records here): before the segment, after it, between the
        // removals of the single files it holds.
        .at("compact.before-segment", 1), .at("compact.after-segment", 1), .at("compact.after-segment", 2),
        .at("compact.after-unlink", 1), .at("compact.after-unlink", 3), .at("compact.after-unlink", 6),
    ]

    @Test(arguments: plans)
    func killedAndResumedUntilDone(_ plan: Kill) async throws {
        let t = try TempSpool()
        // The journal's tail moves into a segment every 4 records: every plan crosses compactions.
        try t.setConfig("journal_segment_records", 4)
        let effects = t.path.appending("effects.log").string
        var input: [String: JSONValue] = ["steps": .int(Int64(Self.steps)), "effects": .string(effects)]
        // Random kills: a seeded moment (printed; CAIRN_TEST_SEED reproduces it), and steps
        // slow enough that the first advance outlives the latest moment, so a kill lands.
        var rng: SeededRandom? = nil
        if case .randomly(let ms) = plan {
            rng = SeededRandom("crash plan \(plan)")
            // Each step at least 20 ms: a loaded machine oversleeps the test's short sleep
            // by tens of milliseconds, and a run that fit in the window finished unkilled.
            input["delay_ms"] = .int(Int64(2 * ms / Self.steps + 20))
        }
        let seed = rng.map { ", seed \($0.seed)" } ?? ""
        let id = try t.submit("crashy", input: JSONValue.object(input))
        var frozen: [String: Int] = [:]  // step → effect count when its record was first seen
        var kills = 0
        var uncertainSeen = false
        var done = false
        for round in 0..<60 {
            var env: [String: String] = [:]
            if case .at(let point, let n) = plan, round < 4 { env["CAIRN_CRASH_AT"] = "\(point):\(n)" }
            let proc = try Binary.start("cairn-fixtures", ["advance", id, "--spool", t.spool.root.string], env: env)
            if case .randomly(let ms) = plan, round < 6 {
                try await Task.sleep(for: .milliseconds(Int.random(in: 1...ms, using: &rng!)))
                kill(proc.0.processIdentifier, SIGKILL)
            }
            let r = await Binary.finish(proc)
            if r.signal == SIGKILL { kills += 1 }
            // Invariants after every exit, killed or not.
            #expect(try t.partialJSONFiles().isEmpty, "partial JSON after \(plan) round \(round)\(seed)")
            let counts = Self.effectCounts(effects)
            #expect(counts["pay", default: 0] <= 1, "at-most-once step ran twice (\(plan)\(seed))")
            for (step, n) in frozen { #expect(counts[step, default: 0] == n, "\(step) ran again after its record was written (\(plan)\(seed))") }
            let recorded = Set(try t.spool.journal(id).load().filter { $0.kind == "step" && $0.error == nil }.compactMap(\.name))
            for step in recorded where frozen[step] == nil { frozen[step] = counts[step, default: 0] }

            guard let state = try t.spool.readState(id) else { continue }
            if state.status == .completed {
                done = true
                break
            }
            if state.status == .waiting, state.waitingFor?["kind"] == "uncertain" {
                uncertainSeen = true
                // A person checks the outbox: record what really happened.
                let paid = counts["pay", default: 0] == 1
                try t.drop("approvals/uncertain-pay.approved", in: id, content: paid ? #"{"action": "done", "value": true}"# : "")
            }
            if r.signal == nil && r.code != 0 && state.status != .waiting {
                Issue.record("advance failed without a kill: \(r.stderr)")
                break
            }
        }
        print("crash plan \(plan)\(seed): \(kills) kill(s)\(uncertainSeen ? ", stopped at the uncertain gate" : "")")
        if case .at("step.after-body", 6) = plan {
            // Killed after the at-most-once payment ran, before its record: a person decides.
            #expect(uncertainSeen)
        }
        #expect(done, "run did not complete under \(plan)\(seed)")
        if case .at = plan { #expect(kills >= 1, "the crash point \(plan) was never reached") }
        if case .randomly = plan { #expect(kills >= 1, "no random kill landed (\(plan)\(seed))") }
        let counts = Self.effectCounts(effects)
        for step in Self.stepNames { #expect(counts[step, default: 0] >= 1, "\(step) never ran (\(plan))") }
        #expect(counts["pay"] == 1)
        let result = try DurableFile.readJSON(t.spool.run(id).resultFile)
        #expect(result == .int(Int64((0..<Self.steps).reduce(0, +) + 70_000)))
        // A kill between state.json and the index (derived, written after it) may leave the
        // run listed as running; the next look at the run — a daemon's start lists
        // index/running/ — puts it right.
        let again = try Binary.run("cairn-fixtures", ["advance", id, "--spool", t.spool.root.string])
        #expect(again.code == 0, "\(again.stderr)")
        let findings = try Repair.run(t.spool, repair: false).findings.filter { !$0.file.hasPrefix("tmp/") }
        #expect(findings.isEmpty, "\(plan): \(findings)")
    }

    static func effectCounts(_ path: String) -> [String: Int] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [:] }
        var counts: [String: Int] = [:]
        for line in text.split(separator: "\n") {
            counts[String(line.split(separator: " ")[0]), default: 0] += 1
        }
        return counts
    }
}
