import Cairn
import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Long runs: the journal's settled part moves into segments while the run goes on, replay
/// reads them, and `continueAsNew` ends a run into a linked new one.
@Suite struct LongRunTests {
    @Test func aRunCompactsAsItGoesAndResumesFromItsSegments() async throws {
        let t = try TempSpool()
        try t.setConfig("journal_segment_records", 10)
        let effects = Effects()
        let wf = workflow("long") { ctx, _ in
            var total = 0
            for i in 0..<30 { total += try await ctx.step("s\(i)") { _ in effects.hit("s\(i)"); return i } }
            _ = try await ctx.approval("go", request: .init(summary: "go?"))
            for i in 30..<35 { total += try await ctx.step("s\(i)") { _ in effects.hit("s\(i)"); return i } }
            return .int(Int64(total))
        }
        let engine = t.engine([wf])
        let id = try t.submit("long", input: JSONValue.null)
        guard case .waiting = try await engine.advance(id) else { Issue.record("not waiting"); return }
        // start + 30 steps + approval requested = 32 records: three segments of 10, two files.
        let journal = t.spool.journal(id)
        #expect(try Spool.list(journal.directory).sorted() == ["000001-000010.jsonl", "000011-000020.jsonl", "000021-000030.jsonl", "000031-step-s29.json", "000032-approval-go.json"])
        #expect(try t.state(id).counters.journalEntries == 32)
        // Woken without a decision: replays from the segments, runs nothing.
        _ = try await engine.advance(id)
        try t.drop("approvals/go.approved", in: id)
        #expect(try await engine.advance(id) == AdvanceOutcome.completed(JSONValue.int(Int64((0..<35).reduce(0, +)))))
        for i in 0..<35 { #expect(effects.count("s\(i)") == 1, "s\(i)") }
        let c = try journal.read()
        #expect(c.entries.count == 39)
        #expect(c.segmentEnd == 30)
        #expect(c.entries.last?.kind == .complete)
        #expect(try Repair.run(t.spool, repair: false).findings.isEmpty)
    }

    @Test func scriptLikeWorkflowsCompactOnlyBetweenExecutions() async throws {
        let t = try TempSpool()
        try t.setConfig("journal_segment_records", 4)
        var wf = workflow("outside") { ctx, _ in
            for i in 0..<9 { let _: Int = try await ctx.step("s\(i)") { _ in i } }
            return .null
        }
        wf.recordsFromOtherProcesses = true
        let engine = t.engine([wf])
        let id = try t.submit("outside", input: JSONValue.null)
        #expect(try await engine.advance(id) == .completed(.null))
        let names = try Spool.list(t.spool.journal(id).directory).sorted()
        #expect(names == ["000001-000011.jsonl"])
    }

    /// Found by an outside attack: a nondeterminism error named `journal/000003-step-s1.json`,
    /// a file that no longer existed (the record was in a segment).
    @Test func aNondeterminismErrorNamesTheSegmentAndLine() async throws {
        let t = try TempSpool()
        try t.setConfig("journal_segment_records", 5)
        let before = workflow("drift") { ctx, _ in
            for i in 0..<8 { let _: Int = try await ctx.step("s\(i)") { _ in i } }
            _ = try await ctx.approval("go", request: .init(summary: "go?"))
            return .null
        }
        let id = try t.submit("drift", input: JSONValue.null)
        guard case .waiting = try await t.engine([before]).advance(id) else { Issue.record("not waiting"); return }
        let after = workflow("drift") { ctx, _ in
            let _: Int = try await ctx.step("s0") { _ in 0 }
            let _: Int = try await ctx.step("renamed") { _ in 1 }
            return .null
        }
        guard case .failed(let e) = try await t.engine([after]).advance(id) else { Issue.record("not failed"); return }
        #expect(e.type == "nondeterminism")
        #expect(e.file == "journal/000001-000005.jsonl")
        #expect(e.message.contains("journal/000001-000005.jsonl line 3 (written as 000003-step-s1.json)"), "\(e.message)")
    }

    @Test func continueAsNewEndsTheRunIntoALinkedNewOne() async throws {
        let t = try TempSpool()
        let effects = Effects()
        let wf = workflow("relay") { ctx, input in
            let left = input["left"]?.intValue ?? 0
            let _: Int = try await ctx.step("work") { _ in effects.hit("work \(left)"); return Int(left) }
            if left > 0 {
                do {
                    try await ctx.continueAsNew(["left": .int(left - 1)] as JSONValue)
                } catch {
                    // Code that swallows the signal reaches nothing durable after it.
                    let _: Int = try await ctx.step("after") { _ in effects.hit("after"); return 0 }
                }
            }
            return .string("done at \(left)")
        }
        let engine = t.engine([wf])
        var id = try t.submit("relay", input: ["left": 2] as JSONValue)
        var chain = [id]
        for _ in 0..<2 {
            guard case .completed(let v) = try await engine.advance(id), let next = v["continued_as"]?.stringValue else {
                Issue.record("run \(id) did not continue as new")
                return
            }
            #expect(try t.spool.readRun(next).continuedFrom == id)
            #expect(try t.spool.readRun(next).input == ["left": .int(Int64(2 - chain.count))])
            #expect(try t.state(id).status == .completed)
            #expect(try t.journalSummary(id) == ["start", "step:work", "continue", "complete"])
            // Advancing the ended run again starts nothing new.
            #expect(try await engine.advance(id) == .completed(["continued_as": .string(next)]))
            id = next
            chain.append(id)
        }
        #expect(try await engine.advance(id) == .completed(.string("done at 0")))
        #expect(effects.count("work 2") == 1 && effects.count("work 1") == 1 && effects.count("work 0") == 1)
        #expect(effects.count("after") == 0)
        #expect(try Spool.list(t.spool.runsDirectory).count == 3)
    }
}
