import Cairn
import CairnDaemon
import CairnSpool
import CairnTesting
import Foundation
import Testing

/// The scheduler alone: events in, actions out, time passed in by hand.
struct Harness {
    var s: Scheduler
    var now = Date(timeIntervalSince1970: 1_800_000_000)
    /// Every run the scheduler asked to advance, in order.
    var started: [String] = []
    var timer: Date?
    var idles = 0
    var watches: [String] = []
    var unwatches: [String] = []
    /// Runs whose run.json the scheduler asked to read.
    var reads: [String] = []

    init(_ limits: SchedulerLimits = SchedulerLimits(), busyRecheck: TimeInterval = 1) {
        s = Scheduler(limits: limits, busyRecheck: busyRecheck)
    }

    @discardableResult
    mutating func send(_ e: Scheduler.Event) -> [Scheduler.Action] {
        let actions = s.handle(e, now: now)
        for a in actions {
            switch a {
            case .advance(let id): started.append(id)
            case .setTimer(let t): timer = t
            case .idle: idles += 1
            case .watch(let id): watches.append(id)
            case .unwatch(let id): unwatches.append(id)
            case .read(let id): reads.append(id)
            }
        }
        return actions
    }

    /// Learns and wakes runs, each of `workflow` (and `key`).
    mutating func submit(_ ids: [String], workflow: String = "w", key: String? = nil) {
        for id in ids {
            send(.learned(id, RunInfo(workflow: workflow, concurrencyKey: key)))
            send(.wake(id))
        }
    }

    mutating func finish(_ id: String, _ o: AdvanceOutcome) { send(.advanced(id, .success(o))) }
    mutating func fail(_ id: String) { send(.advanced(id, .failure(Scheduler.SpoolFailure()))) }
    /// Time passes; the timer fires when its deadline came (like `TimerQueue`: once per arming).
    mutating func pass(_ seconds: TimeInterval) {
        now = now.addingTimeInterval(seconds)
        if let t = timer, t <= now {
            timer = nil
            send(.timerFired(t))
        }
    }
}

func waiting(until: Date? = nil, kind: String = "timer", gate: String? = nil) -> AdvanceOutcome {
    var w: [String: JSONValue] = ["kind": .string(kind)]
    if let until { w["until"] = .string(Timestamp.format(until)) }
    if let gate { w["gate"] = .string(gate) }
    return .waiting(WaitingFor(json: .object(w)))
}

@Suite struct SchedulerLimitTests {
    @Test func theGlobalLimitStartsAtMostThatManyInOrder() {
        var h = Harness(SchedulerLimits(concurrency: 2))
        h.submit(["a", "b", "c", "d", "e"])
        #expect(h.started == ["a", "b"])
        #expect(h.s.runningCount == 2 && h.s.readyRuns == ["c", "d", "e"])
        h.finish("b", .completed(.null))
        #expect(h.started == ["a", "b", "c"])
        h.finish("a", .completed(.null))
        h.finish("c", .completed(.null))
        #expect(h.started == ["a", "b", "c", "d", "e"])
        #expect(h.s.runningCount == 2)
    }

    @Test func aWorkflowLimitHoldsBackOnlyThatWorkflow() {
        var h = Harness(SchedulerLimits(concurrency: 8, perWorkflow: ["slow": 1]))
        h.submit(["s1", "s2", "s3"], workflow: "slow")
        h.submit(["f1", "f2"], workflow: "fast")
        #expect(h.started == ["s1", "f1", "f2"])
        #expect(h.s.readyRuns == ["s2", "s3"])
        h.finish("f1", .completed(.null))
        #expect(h.started == ["s1", "f1", "f2"])  // a fast run ending frees no slow slot
        h.finish("s1", waiting())
        #expect(h.started == ["s1", "f1", "f2", "s2"])
        h.finish("s2", .failed(ErrorInfo(type: "x", message: "x")))
        #expect(h.started.last == "s3")
    }

    @Test func aConcurrencyKeyLimitsRunsSharingItWithItsDefault() {
        var h = Harness(SchedulerLimits(concurrency: 8, perKey: ["wide": 2], defaultKeyLimit: 1))
        h.submit(["k1", "k2"], key: "customer-7")
        h.submit(["w1", "w2", "w3"], key: "wide")
        h.submit(["n1", "n2"])  // no key: only the global limit
        #expect(h.started == ["k1", "w1", "w2", "n1", "n2"])
        h.finish("w1", .completed(.null))
        #expect(h.started.last == "w3")
        h.finish("k1", .busy)
        #expect(h.started.last == "k2")
    }

    @Test func aRescanQueuesEverythingBeforeStartingSoKeylessRunsPassHeldOnes() {
        var h = Harness()
        for (id, key) in [("k0", "c"), ("k1", "c"), ("k2", "c"), ("f3", nil), ("f4", nil)] {
            h.send(.learned(id, RunInfo(workflow: "w", concurrencyKey: key)))
        }
        h.send(.wakeAll(["k0", "k1", "k2", "f3", "f4"]))
        #expect(h.started == ["k0", "f3", "f4"] && h.s.readyRuns == ["k1", "k2"])
    }

    @Test func limitsFromCairnJSONAndOptions() throws {
        var options = DaemonOptions()
        options.concurrency = 3
        options.perWorkflow = ["a": 5]
        let config = try JSONValue.parse(#"{"concurrency": {"workflows": {"a": 1, "b": 2}, "keys": {"k": 4}, "default_key_limit": 2}}"#)
        let l = SchedulerLimits(config: config, options: options)
        #expect(l == SchedulerLimits(concurrency: 3, perWorkflow: ["a": 5, "b": 2], perKey: ["k": 4], defaultKeyLimit: 2))
        #expect(SchedulerLimits(config: .object([:]), options: DaemonOptions()) == SchedulerLimits())
    }

    @Test func aHeldBackRunKeepsItsTurnOverLaterOnes() {
        var h = Harness(SchedulerLimits(concurrency: 2, perWorkflow: ["x": 1]))
        h.submit(["x1"], workflow: "x")
        h.submit(["x2"], workflow: "x")  // held back by the workflow limit
        h.submit(["y1"], workflow: "y")  // takes the second slot
        h.submit(["y2", "y3"], workflow: "y")  // queued behind x2
        #expect(h.started == ["x1", "y1"])
        #expect(h.s.readyRuns == ["x2", "y2", "y3"])
        h.finish("x1", .completed(.null))
        #expect(h.started == ["x1", "y1", "x2"])
        h.finish("y1", .completed(.null))
        #expect(h.started == ["x1", "y1", "x2", "y2"])
    }

    @Test func aRunIsQueuedOnceAndAWakeWhileRunningRunsItAgainAfter() {
        var h = Harness(SchedulerLimits(concurrency: 1))
        h.submit(["a", "b"])
        h.send(.wake("b"))
        h.send(.wake("b"))
        #expect(h.s.readyRuns == ["b"])
        h.send(.wake("a"))  // a decision landed while a ran
        h.finish("a", waiting(kind: "approval", gate: "g"))
        #expect(h.started == ["a", "b"])
        h.finish("b", waiting())
        #expect(h.started == ["a", "b", "a"])
        h.send(.wake("a"))
        h.finish("a", .completed(.null))  // finished: the wake while running is moot
        #expect(h.started == ["a", "b", "a"])
        #expect(h.s.readyRuns.isEmpty && h.s.runningCount == 0)
    }
}

@Suite struct SchedulerTimerTests {
    @Test func aDurableSleepWakesTheRunAtItsDueTimeAndNotBefore() {
        var h = Harness()
        h.submit(["a"])
        let due = h.now.addingTimeInterval(90)
        h.finish("a", waiting(until: due))
        #expect(h.timer == due && h.s.pendingTimers == 1)
        h.pass(89.5)
        #expect(h.started == ["a"])
        h.pass(0.5)
        #expect(h.started == ["a", "a"])
        #expect(h.s.pendingTimers == 0 && h.timer == nil)
    }

    @Test func aTimerThatFiresEarlyWakesNothingAndIsSetAgain() {
        var h = Harness()
        h.submit(["a"])
        let due = h.now.addingTimeInterval(10)
        h.finish("a", waiting(until: due))
        h.now = due.addingTimeInterval(-0.25)  // the wall clock reads a little early
        let actions = h.send(.timerFired(due))
        #expect(actions == [.setTimer(due)] && h.started == ["a"])
        h.now = due
        h.send(.timerFired(due))
        #expect(h.started == ["a", "a"])
        // A stale firing (a deadline no longer armed) keeps the armed one.
        h.finish("a", waiting(until: due.addingTimeInterval(60)))
        #expect(h.send(.timerFired(due)).isEmpty && h.s.pendingTimers == 1)
    }

    @Test func theTimerIsTheEarliestDueTimeAndChangesOnlyWithIt() {
        var h = Harness()
        h.submit(["a", "b", "c"])
        let t0 = h.now
        h.finish("a", waiting(until: t0.addingTimeInterval(60)))
        #expect(h.timer == t0.addingTimeInterval(60))
        let later = h.send(.advanced("b", .success(waiting(until: t0.addingTimeInterval(120)))))
        #expect(!later.contains { if case .setTimer = $0 { return true } else { return false } })
        h.finish("c", waiting(until: t0.addingTimeInterval(30)))
        #expect(h.timer == t0.addingTimeInterval(30))
        h.pass(30)
        #expect(h.started.suffix(1) == ["c"] && h.timer == t0.addingTimeInterval(60))
        h.finish("c", .completed(.null))
        h.pass(90)  // both a (60) and b (120) are due by now: earliest first
        #expect(h.started.suffix(2) == ["a", "b"])
        #expect(h.timer == nil)
    }

    @Test func aRunThatEndsLosesItsTimerAndItsWatches() {
        var h = Harness()
        h.send(.learned("a", RunInfo(workflow: "w")))
        h.send(.watch("a"))
        h.send(.wake("a"))
        #expect(h.watches == ["a"])
        h.send(.watch("a"))
        #expect(h.watches == ["a"])  // watched once
        h.finish("a", waiting(until: h.now.addingTimeInterval(60)))
        h.send(.wake("a"))  // a cancel file
        h.finish("a", .cancelled)
        #expect(h.unwatches == ["a"] && h.s.pendingTimers == 0 && h.timer == nil && h.s.watchedCount == 0)
        h.pass(120)
        #expect(h.started == ["a", "a"])
    }

    @Test func aBusyRunIsLookedAtAgainAfterTheRecheck() {
        var h = Harness(busyRecheck: 1)
        h.submit(["a"])
        h.finish("a", .busy)
        #expect(h.timer == h.now.addingTimeInterval(1))
        h.pass(0.75)
        #expect(h.started == ["a"])
        h.pass(0.25)
        #expect(h.started == ["a", "a"])
        h.finish("a", .busy)  // still held by the other daemon
        h.pass(1)
        #expect(h.started == ["a", "a", "a"])
        h.finish("a", waiting())
        h.pass(3600)
        #expect(h.started.count == 3)
    }

    @Test func spoolFailuresBackOffDoublingToAMinuteAndResetOnSuccess() throws {
        var h = Harness()
        h.submit(["a"])
        var delays: [TimeInterval] = []
        for _ in 0..<9 {
            h.fail("a")
            let due = try #require(h.s.dueTime("a"))
            delays.append(due.timeIntervalSince(h.now))
            #expect(h.s.spoolFailureDelay("a") == delays.last)
            h.pass(delays.last! - 0.25)
            let before = h.started.count
            h.pass(0.25)
            #expect(h.started.count == before + 1)
        }
        #expect(delays == [1, 2, 4, 8, 16, 32, 60, 60, 60])
        h.finish("a", waiting())
        #expect(h.s.spoolFailureDelay("a") == nil)
        h.send(.wake("a"))
        h.fail("a")
        #expect(h.s.dueTime("a") == h.now.addingTimeInterval(1))
    }

    @Test func aRunWithoutWatchesIsLookedAtEvery30sAndWatchedAgain() {
        var h = Harness()
        h.send(.learned("a", RunInfo(workflow: "w")))
        h.send(.watch("a"))
        h.send(.watchFailed("a"))
        #expect(h.s.dueTime("a") == h.now.addingTimeInterval(30) && h.s.watchedCount == 0)
        h.send(.wake("a"))
        // It waits for a minute: looked at in 30 s, and its watches tried again.
        h.finish("a", waiting(until: h.now.addingTimeInterval(60)))
        #expect(h.s.dueTime("a") == h.now.addingTimeInterval(30))
        #expect(h.watches == ["a", "a"])
        // It waits 5 s: the earlier time stays, even when the watches fail again.
        h.pass(30)
        h.send(.watchFailed("a"))
        h.finish("a", waiting(until: h.now.addingTimeInterval(5)))
        h.send(.watchFailed("a"))
        #expect(h.s.dueTime("a") == h.now.addingTimeInterval(5))
    }
}

@Suite struct SchedulerWakeTests {
    @Test func onlyWhatTheRunWaitsOnWakesIt() {
        var h = Harness()
        h.submit(["a", "b", "c"])
        // Not known to wait (running): any decision or event wakes it, to be safe.
        #expect(h.s.wakes("a", sub: "approvals", file: "any.approved", arrived: true))
        #expect(h.s.wakes("a", sub: "events", file: "x.json", arrived: true))
        h.finish("a", waiting(kind: "approval", gate: "send"))
        #expect(h.s.wakes("a", sub: "approvals", file: "send.approved", arrived: true))
        #expect(h.s.wakes("a", sub: "approvals", file: "send.rejected", arrived: true))
        #expect(!h.s.wakes("a", sub: "approvals", file: "other.approved", arrived: true))
        #expect(!h.s.wakes("a", sub: "approvals", file: "send.request.json", arrived: true))
        #expect(!h.s.wakes("a", sub: "approvals", file: "send.approved", arrived: false))
        #expect(!h.s.wakes("a", sub: "events", file: "send.json", arrived: true))
        #expect(h.s.wakes("a", sub: "", file: "cancel", arrived: false))
        #expect(!h.s.wakes("a", sub: "", file: "notes", arrived: true))
        h.finish("b", .waiting(["kind": "event", "name": "paid", "drop": "events/paid.json"]))
        #expect(h.s.wakes("b", sub: "events", file: "paid.json", arrived: true))
        #expect(!h.s.wakes("b", sub: "events", file: "paid.error.json", arrived: true))
        #expect(!h.s.wakes("b", sub: "events", file: "shipped.json", arrived: true))
        #expect(!h.s.wakes("b", sub: "events", file: "_child.x.json", arrived: true))
        h.finish("c", .waiting(["kind": "child", "name": "sub", "run": "r"]))
        #expect(h.s.wakes("c", sub: "events", file: "_child.r.json", arrived: true))
        // Advancing again: it may reach another wait, so everything wakes it again.
        h.send(.wake("a"))
        #expect(h.s.wakes("a", sub: "approvals", file: "other.approved", arrived: true))
    }

    @Test func theWaitSummaryReadsKindNameAndDueTime() {
        let until = Date(timeIntervalSince1970: 1_800_000_123)
        let a = WaitSummary(["kind": "approval", "gate": "g", "until": .string(Timestamp.format(until))])
        #expect(a.kind == .approval && a.wake == .decision(gate: "g") && a.due == until)
        let e = WaitSummary(["kind": "event", "name": "e", "gate": "no"])
        #expect(e.kind == .event && e.wake == .event(name: "e") && e.due == nil)
        #expect(WaitSummary(["kind": "pause"]).wake == .resume)
        #expect(WaitSummary(["kind": "budget", "gate": "b"]).wake == .decision(gate: "b"))
    }

    @Test func runsParkedOnAnUnknownWorkflowStartWhenOneIsInstalled() {
        var h = Harness()
        h.submit(["a", "b"], workflow: "missing")
        h.finish("a", .unknownWorkflow("missing"))
        h.finish("b", .unknownWorkflow("missing"))
        #expect(h.s.isParked("a") && h.s.isParked("b"))
        h.pass(3600)
        #expect(h.started == ["a", "b"])
        h.send(.workflowsChanged)
        #expect(h.started == ["a", "b", "a", "b"])
        #expect(!h.s.isParked("a"))
    }

    @Test func aGoneRunIsForgotten() {
        var h = Harness()
        h.send(.learned("a", RunInfo(workflow: "w")))
        h.send(.watch("a"))
        h.send(.wake("a"))
        h.finish("a", waiting(until: h.now.addingTimeInterval(10)))
        h.send(.gone("a"))
        #expect(h.unwatches == ["a"] && h.timer == nil && !h.s.knows("a"))
    }
}

@Suite struct SchedulerShutdownTests {
    @Test func shutdownStartsNothingCancelsTheTimerAndSaysWhenIdle() {
        var h = Harness(SchedulerLimits(concurrency: 2))
        h.submit(["a", "b", "c"])
        h.finish("a", waiting(until: h.now.addingTimeInterval(5)))  // c starts
        #expect(h.timer != nil && h.started == ["a", "b", "c"])
        h.send(.wake("a"))  // queued for a free slot
        let actions = h.send(.shutdown)
        #expect(actions == [.setTimer(nil)] && h.timer == nil)
        h.send(.wake("d"))
        h.pass(10)
        h.finish("b", .completed(.null))  // frees a slot: nothing starts
        #expect(h.started == ["a", "b", "c"] && h.idles == 0)
        h.finish("c", waiting(until: h.now.addingTimeInterval(1)))
        #expect(h.idles == 1 && h.s.runningCount == 0)
        #expect(h.started == ["a", "b", "c"] && h.timer == nil)
    }
}

@Suite struct SchedulerReadTests {
    /// A woken run whose run.json the daemon could not read (EIO, a damaged file) is neither
    /// dropped nor advanced blind: the scheduler asks to read it, backs off while it does not
    /// read, and advances it once it does.
    @Test func aRunWhoseRunJsonDoesNotReadIsReadAgainWithTheBackOffNotDropped() {
        var h = Harness()
        h.send(.wake("r"))
        #expect(h.reads == ["r"] && h.started.isEmpty)
        h.send(.wake("r"))  // a second wake while the read is pending asks nothing more
        #expect(h.reads == ["r"])
        h.send(.unreadable("r"))
        #expect(h.s.dueTime("r") == h.now.addingTimeInterval(1))
        h.pass(0.5)
        #expect(h.reads == ["r"])
        h.pass(0.5)
        #expect(h.reads == ["r", "r"])
        h.send(.unreadable("r"))
        #expect(h.s.dueTime("r") == h.now.addingTimeInterval(2))
        h.pass(2)
        #expect(h.reads == ["r", "r", "r"] && h.started.isEmpty)
        h.send(.learned("r", RunInfo(workflow: "w")))
        #expect(h.started == ["r"])
    }
}
