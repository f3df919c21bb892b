import Cairn
import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

@Suite struct StepTests {
    @Test func stepsRunOnceAndReplayFromTheJournal() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let wf = workflow("two-steps") { ctx, input in
            let a: Int = try await ctx.step("fetch") { _ in fx.hit("fetch"); return 20 }
            let b: Int = try await ctx.step("double") { _ in fx.hit("double"); return a * 2 }
            try await ctx.sleep("pause", for: .seconds(60))
            return .int(Int64(b) + (input.intValue ?? 0))
        }
        let clock = ManualClock()
        let engine = t.engine([wf], clock: clock)
        let id = try t.submit("two-steps", input: 2)
        let first = try await engine.advance(id)
        guard case .waiting(let w) = first else { Issue.record("expected waiting, got \(first)"); return }
        #expect(w["kind"] == "timer")
        #expect(try t.state(id).status == .waiting)
        clock.advance(by: .seconds(61))
        #expect(try await engine.advance(id) == .completed(42))
        #expect(fx.count("fetch") == 1 && fx.count("double") == 1)
        #expect(try t.journalSummary(id) == ["start", "step:fetch", "step:double", "sleep:pause", "complete"])
        #expect(try DurableFile.readJSON(t.spool.run(id).resultFile) == 42)
        let state = try t.state(id)
        #expect(state.status == .completed && state.counters.steps == 2 && state.counters.executions == 2)
        // A finished run stays finished.
        #expect(try await engine.advance(id) == .completed(42))
        #expect(fx.count("fetch") == 1)
        #expect(try t.partialJSONFiles().isEmpty)
    }

    @Test func idempotencyKeyIsStableAcrossRetries() async throws {
        let t = try TempSpool()
        let keys = KeyLog()
        let wf = workflow("keys") { ctx, _ in
            let v: String = try await ctx.step("charge", retry: RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1))) { key in
                let n = keys.add(key)
                if n < 3 { throw Flaky() }
                return key
            }
            return .string(v)
        }
        let id = try t.submit("keys", input: 0)
        let out = try await t.engine([wf]).drive(id)
        #expect(out == .completed(.string("\(id):2:charge")))
        #expect(Set(keys.all).count == 1 && keys.all.count == 3)
    }

    @Test func backoffIsExponentialWithJitterAndDurable() async throws {
        let t = try TempSpool()
        let clock = ManualClock()
        let policy = RetryPolicy(maxAttempts: 4, initialDelay: .seconds(2), multiplier: 3, maxDelay: .seconds(10), jitter: 0.25)
        let fx = Effects()
        let wf = workflow("backoff") { ctx, _ in
            let v: Int = try await ctx.step("call", retry: policy) { _ in
                fx.hit("call")
                if fx.count("call") < 4 { throw Flaky() }
                return 7
            }
            return .int(Int64(v))
        }
        let engine = t.engine([wf], clock: clock)
        let id = try t.submit("backoff", input: 0)
        var delays: [Double] = []
        for _ in 0..<3 {
            let before = clock.now()
            guard case .waiting(let w) = try await engine.advance(id), w["kind"] == "retry",
                  let until = w["until"]?.stringValue.flatMap(Timestamp.parse) else { Issue.record("expected a retry wait"); return }
            delays.append(until.timeIntervalSince(before))
            // Before the due time, nothing runs: the same wait, and no attempt.
            let calls = fx.count("call")
            let again = try await engine.advance(id)
            #expect(again == .waiting(w), "\(again) is not \(w)")
            #expect(fx.count("call") == calls)
            clock.advance(to: until)
        }
        #expect(try await engine.advance(id) == .completed(7))
        #expect(fx.count("call") == 4)
        // 2s, 6s, 10s (capped), each ±25%.
        for (d, base) in zip(delays, [2.0, 6.0, 10.0]) {
            #expect(d >= base * 0.75 - 0.01 && d <= min(10, base * 1.25) + 0.01, "delay \(d) for base \(base)")
        }
        #expect(policy.baseDelay(afterAttempt: 1) == 2 && policy.baseDelay(afterAttempt: 2) == 6 && policy.baseDelay(afterAttempt: 3) == 10)
        let summary = try t.journalSummary(id)
        #expect(summary == ["start", "retry:call", "retry:call", "retry:call", "step:call", "complete"])
        #expect(try t.state(id).counters.retries == 3)
    }

    @Test func nonRetryableErrorsFailTheRunWithAFailRecord() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let wf = workflow("fails") { ctx, _ in
            let _: Int = try await ctx.step("bad", retry: RetryPolicy(maxAttempts: 5)) { _ in
                fx.hit("bad")
                throw StepError.nonRetryable("card declined", type: "Declined")
            }
            return nil
        }
        let id = try t.submit("fails", input: 0)
        let out = try await t.engine([wf]).drive(id)
        guard case .failed(let info) = out else { Issue.record("expected failure, got \(out)"); return }
        #expect(info.type == "step_failed")
        #expect(info.message.contains("card declined"))
        #expect(fx.count("bad") == 1)
        #expect(try t.journalSummary(id) == ["start", "step:bad", "fail"])
        let state = try t.state(id)
        #expect(state.status == .failed && state.error?.message.contains("card declined") == true)
    }

    @Test func timeoutFailsAnAttempt() async throws {
        let t = try TempSpool()
        let clock = ManualClock()
        let wf = workflow("slow") { ctx, _ in
            let v: Int = try await ctx.step("hang", retry: .none, timeout: .seconds(5)) { _ in
                try await clock.sleep(for: .seconds(3600))
                return 1
            }
            return .int(Int64(v))
        }
        let id = try t.submit("slow", input: 0)
        let engine = t.engine([wf], clock: clock)
        async let outcome = engine.advance(id)
        try await clock.waitForSleepers(2)
        clock.advance(by: .seconds(6))
        guard case .failed(let info) = try await outcome else { Issue.record("expected failure"); return }
        #expect(info.message.contains("timed out"))
    }

    @Test func recordedValuesReplayIdentically() async throws {
        let t = try TempSpool()
        let wf = workflow("values") { ctx, _ in
            let n = ctx.now()
            let u = ctx.uuid()
            let r = ctx.random()
            try await ctx.sleep(for: .seconds(1))
            return ["now": .string(Timestamp.format(n)), "uuid": .string(u.uuidString), "r": .double(r)]
        }
        let clock = ManualClock()
        let engine = t.engine([wf], clock: clock)
        let id = try t.submit("values", input: 0)
        _ = try await engine.advance(id)
        let recorded = try t.spool.journal(id).load()
        clock.advance(by: .seconds(5))
        guard case .completed(let v) = try await engine.advance(id) else { Issue.record("not completed"); return }
        #expect(v["uuid"] == recorded[2].value)
        #expect(v["now"] == recorded[1].value)
        #expect(v["r"] == recorded[3].value)
    }
}

final class KeyLog: Sendable {
    private let keys = Mutex<[String]>([])
    func add(_ k: String) -> Int { keys.withLock { $0.append(k); return $0.count } }
    var all: [String] { keys.withLock { $0 } }
}

import Synchronization

@Suite struct AtMostOnceTests {
    /// Builds the journal a crash between intent and result leaves behind.
    func crashedAfterIntent(_ t: TempSpool, _ wf: AnyWorkflow) async throws -> String {
        let id = try t.submit("amo", input: 0)
        let j = t.spool.journal(id)
        var start = JournalEntry(seq: 1, kind: "start", at: Date())
        start.data = ["workflow": "amo", "version": "1"]
        try j.append(start)
        var intent = JournalEntry(seq: 2, kind: "intent", name: "send-email", at: Date())
        intent.attempt = 1
        try j.append(intent)
        return id
    }

    func amo(_ fx: Effects) -> AnyWorkflow {
        workflow("amo") { ctx, _ in
            let v: String = try await ctx.step("send-email", semantics: .atMostOnce) { _ in
                fx.hit("send")
                return "sent"
            }
            return .string(v)
        }
    }

    @Test func normalRunWritesIntentThenResult() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let id = try t.submit("amo", input: 0)
        #expect(try await t.engine([amo(fx)]).drive(id) == .completed("sent"))
        #expect(try t.journalSummary(id) == ["start", "intent:send-email", "step:send-email", "complete"])
    }

    @Test func uncertainStepStopsAtAGateAndNeverRunsWithoutAPerson() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let wf = amo(fx)
        let id = try await crashedAfterIntent(t, wf)
        let engine = t.engine([wf])
        for _ in 0..<2 {
            guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("expected uncertain wait"); return }
            #expect(w["kind"] == "uncertain")
            #expect(w["gate"] == "uncertain-send-email")
        }
        #expect(fx.count("send") == 0)
        let request = try DurableFile.readJSON(t.spool.run(id).approvalsDirectory.appending("uncertain-send-email.request.json"))
        #expect(request["summary"]?.stringValue?.contains("may or may not have run") == true)
        // The person checked: it was sent. Record it as done.
        try t.drop("approvals/uncertain-send-email.approved", in: id, content: #"{"action": "done", "value": "sent (confirmed by hand)"}"#)
        #expect(try await engine.advance(id) == .completed("sent (confirmed by hand)"))
        #expect(fx.count("send") == 0)
    }

    @Test func uncertainRerunRunsItAgainOnce() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let wf = amo(fx)
        let id = try await crashedAfterIntent(t, wf)
        let engine = t.engine([wf])
        _ = try await engine.advance(id)
        try t.drop("approvals/uncertain-send-email.approved", in: id)
        #expect(try await engine.advance(id) == .completed("sent"))
        #expect(fx.count("send") == 1)
        #expect(try t.journalSummary(id) == ["start", "intent:send-email", "uncertain:send-email", "intent:send-email", "step:send-email", "complete"])
    }

    /// An attack found an approval the gate did not understand (a typo `"Done"`, a bare
    /// `"done"`, a value with no action) read as "run it again": the email went out twice.
    /// Each is refused now (error file, gate open), and nothing runs.
    @Test(arguments: [#"{"action": "Done", "value": "sent"}"#, #""done""#, #"{"action": 1}"#, #"{"value": "sent"}"#, #"{"action": "bogus"}"#, "[1]", #"{"act": "done"}"#])
    func anUncertainDecisionTheGateDoesNotUnderstandIsRefusedNotRerun(_ content: String) async throws {
        let t = try TempSpool()
        let fx = Effects()
        let wf = amo(fx)
        let id = try await crashedAfterIntent(t, wf)
        let engine = t.engine([wf])
        _ = try await engine.advance(id)
        try t.drop("approvals/uncertain-send-email.approved", in: id, content: content)
        guard case .waiting(let w) = try await engine.advance(id) else { Issue.record("\(content): not waiting; sent \(fx.count("send")) time(s)"); return }
        #expect(w["kind"] == "uncertain" && w.refused != nil, "\(content): \(w)")
        #expect(fx.count("send") == 0, "\(content): the step ran again")
        #expect(DurableFile.exists(Drops.errorFile(for: t.spool.run(id).approvalsDirectory.appending("uncertain-send-email.approved"))))
        // A decision it understands then goes through.
        try t.drop("approvals/uncertain-send-email.approved", in: id, content: #"{"comment": "checked: not sent"}"#)
        #expect(try await engine.advance(id) == .completed("sent"))
        #expect(fx.count("send") == 1)
    }

    @Test func uncertainRejectFailsTheStep() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let wf = amo(fx)
        let id = try await crashedAfterIntent(t, wf)
        let engine = t.engine([wf])
        _ = try await engine.advance(id)
        try t.drop("approvals/uncertain-send-email.rejected", in: id, content: #"{"reason": "already sent twice"}"#)
        guard case .failed(let info) = try await engine.advance(id) else { Issue.record("expected failure"); return }
        #expect(info.message.contains("already sent twice"))
        #expect(fx.count("send") == 0)
    }
}

@Suite struct RecordingFailureTests {
    @Test func aBodyWhoseResultCannotBeRecordedDoesNotRunAgain() async throws {
        let t = try TempSpool()
        let fx = Effects()
        let wf = workflow("nan") { ctx, _ in
            let v: Double = try await ctx.step("compute", semantics: .atMostOnce) { _ in
                fx.hit("compute")
                return Double.nan  // JSON cannot hold it: recording fails after the body ran
            }
            return .double(v)
        }
        let id = try t.submit("nan", input: 0)
        let out = try await t.engine([wf]).drive(id)
        guard case .failed(let info) = out else { Issue.record("expected failure, got \(out)"); return }
        #expect(info.message.lowercased().contains("nan") || info.message.contains("JSON"), "\(info)")
        #expect(fx.count("compute") == 1)
        #expect(!(try t.journalSummary(id)).contains("retry:compute"))
    }

    @Test func anAtMostOnceStepThatTimedOutIsNotRetried() async throws {
        let t = try TempSpool()
        let clock = ManualClock()
        let fx = Effects()
        let wf = workflow("slow-pay") { ctx, _ in
            let _: Bool = try await ctx.step("pay", semantics: .atMostOnce, retry: RetryPolicy(maxAttempts: 5), timeout: .seconds(5)) { _ in
                fx.hit("pay")
                try await clock.sleep(for: .seconds(3600))
                return true
            }
            return "paid"
        }
        let id = try t.submit("slow-pay", input: 0)
        let engine = t.engine([wf], clock: clock)
        async let outcome = engine.advance(id)
        try await clock.waitForSleepers(2)
        clock.advance(by: .seconds(6))
        guard case .failed(let info) = try await outcome else { Issue.record("expected failure"); return }
        #expect(info.message.contains("timed out"))
        #expect(fx.count("pay") == 1)
        #expect(try t.journalSummary(id) == ["start", "intent:pay", "step:pay", "fail"])
    }
}
