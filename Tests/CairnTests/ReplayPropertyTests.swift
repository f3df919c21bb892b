import Cairn
import CairnSpool
import CairnTesting
import Foundation
import PropertyBased
import Synchronization
import Testing

// Property tests of the replay engine (docs/reliability.md, "Property tests"): a random
// workflow — a list of operations, run by one registered interpreter workflow — is driven
// once uninterrupted, and once with the process dying at a random durable write and a fresh
// engine resuming it on the same spool. Both must end with the same journal (modulo what
// `Normalized` says), the same result, and no body run more often than its semantics allow.

// MARK: - the workflow as data

/// One operation of a generated workflow. Names come from the operation's position
/// (`o3`, gate `g3`, event `e3`, child `k3`, compensation `c3`).
indirect enum PropOp: Codable, Hashable, Sendable {
    /// `ctx.stepWithAttempts`: attempts up to `failing` throw a retryable error; `permanent`
    /// throws a non-retryable one on every attempt; `caught`: the workflow catches the
    /// step's final failure and goes on.
    case step(atMostOnce: Bool, failing: Int, maxAttempts: Int, permanent: Bool, caught: Bool)
    case sleep(seconds: Int)
    case now, uuid, random
    /// `ctx.approval`; the person approves, rejects, or cancels the run instead.
    case approval(PropDecision)
    /// `ctx.waitForEvent`; the event comes from the run itself (`ctx.send`) or from a person.
    case event(viaSend: Bool)
    /// `ctx.child` running `ops` with the same interpreter.
    case child([PropOp], caught: Bool)
    /// `ctx.parallel` over `branches` items; every branch fails its first attempt when
    /// `flaky`; branch `failing` fails for good.
    case parallel(branches: Int, flaky: Bool, failing: Int?, caught: Bool)
    /// `ctx.compensate`: an undo that runs if the run fails or is cancelled later.
    case compensate
}

enum PropDecision: String, Codable, Hashable, Sendable { case approve, reject, cancel }

extension PropOp: CustomStringConvertible {
    var description: String {
        switch self {
        case .step(let amo, let f, let m, let p, let c):
            return "step(\(amo ? "atMostOnce" : "atLeastOnce"), failing: \(f), maxAttempts: \(m)\(p ? ", permanent" : "")\(c ? ", caught" : ""))"
        case .sleep(let s): return "sleep(\(s)s)"
        case .now: return "now"
        case .uuid: return "uuid"
        case .random: return "random"
        case .approval(let d): return "approval(\(d.rawValue))"
        case .event(let s): return s ? "send+waitForEvent" : "waitForEvent(person)"
        case .child(let ops, let c): return "child\(c ? "(caught)" : "")[" + ops.map(\.description).joined(separator: ", ") + "]"
        case .parallel(let n, let fl, let f, let c):
            return "parallel(\(n)\(fl ? ", flaky" : "")\(f.map { ", failing: \($0)" } ?? "")\(c ? ", caught" : ""))"
        case .compensate: return "compensate"
        }
    }

    var children: [PropOp] { if case .child(let ops, _) = self { return ops } else { return [] } }
}

/// One generated case: the workflow and where the crash comes (`crashPick` modulo the
/// durable writes the uninterrupted run made, + 1), before or after that write lands.
struct PropCase: Sendable, CustomStringConvertible {
    var ops: [PropOp]
    var crashPick: Int
    var lands: Bool
    var label: String

    var description: String {
        "\(label): crash at durable write #(\(crashPick) mod writes)+1, \(lands ? "after it lands" : "before it lands"); ops:\n"
            + ops.enumerated().map { "  o\($0.offset): \($0.element)" }.joined(separator: "\n")
    }

    /// Smaller cases, most shrunk first: one op removed (at any depth), one op made simpler,
    /// the crash earlier.
    var shrinks: [PropCase] {
        var out: [PropCase] = []
        for ops in Self.smaller(ops) { out.append(propModify(self) { $0.ops = ops }) }
        if crashPick > 0 { out.append(propModify(self) { $0.crashPick = 0 }) }
        if crashPick > 1 { out.append(propModify(self) { $0.crashPick = crashPick / 2 }) }
        if lands { out.append(propModify(self) { $0.lands = false }) }
        return out
    }

    static func smaller(_ ops: [PropOp]) -> [[PropOp]] {
        var out: [[PropOp]] = []
        for i in ops.indices { out.append(Array(ops[..<i] + ops[(i + 1)...])) }
        for i in ops.indices {
            for simpler in simpler(ops[i]) { out.append(propModify(ops) { $0[i] = simpler }) }
        }
        return out
    }

    static func simpler(_ op: PropOp) -> [PropOp] {
        switch op {
        case .step(let amo, let f, let m, let p, let c):
            var out: [PropOp] = []
            if p { out.append(.step(atMostOnce: amo, failing: f, maxAttempts: m, permanent: false, caught: c)) }
            if f > 0 { out.append(.step(atMostOnce: amo, failing: f - 1, maxAttempts: m, permanent: p, caught: c)) }
            if amo { out.append(.step(atMostOnce: false, failing: f, maxAttempts: m, permanent: p, caught: c)) }
            return out
        case .child(let ops, let c):
            return ops + smaller(ops).map { .child($0, caught: c) }
        case .parallel(let n, let fl, let f, let c):
            var out: [PropOp] = []
            if f != nil { out.append(.parallel(branches: n, flaky: fl, failing: nil, caught: c)) }
            if fl { out.append(.parallel(branches: n, flaky: false, failing: f, caught: c)) }
            if n > 1, (f ?? 0) < n - 1 { out.append(.parallel(branches: n - 1, flaky: fl, failing: f, caught: c)) }
            return out
        case .approval(let d) where d != .approve: return [.approval(.approve)]
        case .event(true): return [.event(viaSend: false)]
        case .sleep(let s) where s > 1: return [.sleep(seconds: 1)]
        default: return []
        }
    }
}

func propModify<T>(_ value: T, _ f: (inout T) -> Void) -> T {
    var v = value
    f(&v)
    return v
}

// MARK: - the generator

/// Operations from the library's generators; each case from a stream seeded by
/// `CAIRN_TEST_SEED` (`SeededRandom`), so a seed reproduces every case of a run in order.
enum PropGen {
    typealias OpGen = Generator<PropOp, AnySequence<Any>>

    static func leaf() -> OpGen {
        let step: OpGen = zip(Gen.bool(0.3), Gen.int(in: 0...2), Gen.int(in: 1...4), Gen.bool(0.15), Gen.bool(0.5))
            .map { t in
                // An at-most-once step whose attempts all fail transiently is left out
                // (docs/reliability.md, "Property tests", found 2).
                PropOp.step(atMostOnce: t.0, failing: t.0 ? min(t.1, t.2 - 1) : t.1, maxAttempts: t.2, permanent: t.3, caught: t.4)
            }.eraseToAny()
        let sleep: OpGen = Gen.int(in: 1...90).map { PropOp.sleep(seconds: $0) }.eraseToAny()
        let recorded: OpGen = Gen.element(of: [PropOp.now, .uuid, .random]).map { $0! }.eraseToAny()
        let approval: OpGen = Gen.element(of: [PropDecision.approve, .approve, .approve, .reject, .cancel]).map { PropOp.approval($0!) }.eraseToAny()
        let event: OpGen = Gen.bool.map { PropOp.event(viaSend: $0) }.eraseToAny()
        let parallel: OpGen = zip(Gen.int(in: 1...4), Gen.bool(0.4), Gen.int(in: 0...5), Gen.bool(0.5))
            .map { t in PropOp.parallel(branches: t.0, flaky: t.1, failing: t.2 < t.0 ? t.2 : nil, caught: t.3) }.eraseToAny()
        let compensate: OpGen = Gen.always(PropOp.compensate).eraseToAny()
        return Gen<PropOp>.frequency([
            (weight: 5, gen: step), (weight: 1, gen: sleep), (weight: 1, gen: recorded), (weight: 2, gen: approval),
            (weight: 2, gen: event), (weight: 2, gen: parallel), (weight: 2, gen: compensate),
        ]).eraseToAny()
    }

    static func op() -> Generator<PropOp, AnySequence<(index: Int, value: Any)>> {
        let child: OpGen = zip(leaf().array(of: 1...4), Gen.bool).map { t in PropOp.child(t.0, caught: t.1) }.eraseToAny()
        return Gen<PropOp>.frequency([(weight: 8, gen: leaf()), (weight: 1, gen: child)])
    }

    /// Cases of 1…`maxOps` top-level operations, shrunk by `PropCase.shrinks`.
    static func cases(_ label: String, maxOps: Int) -> Generator<PropCase, [PropCase]> {
        let inner = zip(op().array(of: 1...maxOps), Gen.int(in: 0...1_000_000), Gen.bool)
        let stream = Mutex((SeededRandom(label), 0))
        return Generator(
            run: { _ in
                let (seed, n, s) = stream.withLock { st -> ((UInt64, UInt64, UInt64, UInt64), Int, UInt64) in
                    st.1 += 1
                    return ((st.0.next(), st.0.next(), st.0.next(), st.0.next()), st.1, st.0.seed)
                }
                var rng = Xoshiro(seed: seed)
                let t = inner.run(using: &rng)
                return PropCase(ops: t.0, crashPick: t.1, lands: t.2, label: "case \(n) of \(label) with CAIRN_TEST_SEED=\(s)")
            },
            shrink: { $0.shrinks }
        )
    }
}

// MARK: - the interpreter and what its bodies did

/// Side effects, counted per body and attempt (`RUN/NAME#ATTEMPT`). A body does nothing
/// once the process it runs in is dead (`WriteFault.current` crashed): after a real crash
/// no code runs.
final class PropLedger: Sendable {
    struct State {
        var runs: [String: Int] = [:]
        var atMostOnce: Set<String> = []
        /// The value each body's successful execution produced (`RUN/NAME`): what a person
        /// checking the effect finds.
        var effects: [String: String] = [:]
    }
    let state = Mutex(State())

    struct Dead: Error {}

    func ran(_ run: String, _ name: String, attempt: Int, atMostOnce: Bool = false) throws {
        if WriteFault.current?.crashed == true { throw Dead() }
        state.withLock { s in
            let key = "\(run)/\(name)#\(attempt)"
            s.runs[key, default: 0] += 1
            if atMostOnce { s.atMostOnce.insert(key) }
        }
    }

    func effect(_ run: String, _ name: String, _ value: String) {
        state.withLock { $0.effects["\(run)/\(name)"] = value }
    }

    var runs: [String: Int] { state.withLock { $0.runs } }
    var atMostOnce: Set<String> { state.withLock { $0.atMostOnce } }
    func effect(_ run: String, _ name: String) -> String? { state.withLock { $0.effects["\(run)/\(name)"] } }
}

struct PropTransient: Error, CustomStringConvertible { var description: String { "transient failure" } }

/// The one registered workflow: runs a list of `PropOp`, returning one value per operation.
struct PropInterpreter: Workflow {
    static let name = "prop"
    let ledger: PropLedger
    /// This process's memory (a fresh one after a crash).
    let process = PropProcess()

    static func policy(_ maxAttempts: Int) -> RetryPolicy {
        RetryPolicy(maxAttempts: maxAttempts, initialDelay: .seconds(2), multiplier: 2, jitter: 0)
    }

    func run(_ ctx: WorkflowContext, input: [PropOp]) async throws -> [JSONValue] {
        var out: [JSONValue] = []
        let run = ctx.runID
        let ledger = self.ledger
        let process = self.process
        for (i, op) in input.enumerated() {
            let name = "o\(i)"
            switch op {
            case .step(let amo, let failing, let maxAttempts, let permanent, let caught):
                do {
                    let v: String = try await ctx.stepWithAttempts(name, semantics: amo ? .atMostOnce : .atLeastOnce, retry: Self.policy(maxAttempts)) { attempt in
                        try ledger.ran(run, name, attempt: attempt.number, atMostOnce: amo)
                        if permanent { throw StepError.nonRetryable("\(name) fails for good") }
                        if attempt.number <= failing { throw PropTransient() }
                        ledger.effect(run, name, "v-\(name)")
                        return "v-\(name)"
                    }
                    out.append(.string(v))
                } catch let e as StepFailedError where caught {
                    out.append(.string("caught: \(e.error.type)"))
                }
            case .sleep(let s):
                try await ctx.sleep(name, for: .seconds(s))
                out.append("slept")
            case .now:
                out.append(.string("now:" + Timestamp.format(ctx.now(name))))
            case .uuid:
                out.append(.string("uuid:" + ctx.uuid(name).uuidString))
            case .random:
                out.append(.string("random:\(ctx.random(name))"))
            case .approval:
                let d = try await ctx.approval("g\(i)", request: ApprovalRequest(summary: "op \(i)"))
                out.append(.string(d.approved ? "approved" : "rejected: \(d.reason ?? "")"))
            case .event(let viaSend):
                if viaSend { try await ctx.send(to: run, event: "e\(i)", data: "sent-\(i)") }
                let v = try await ctx.waitForEvent("e\(i)", as: String.self)
                out.append(.string("event: \(v ?? "none")"))
            case .child(let ops, let caught):
                do {
                    let r = try await ctx.child("k\(i)", PropInterpreter.self, input: ops)
                    out.append(.array(r))
                } catch let e as StepFailedError where caught {
                    out.append(.string("caught: \(e.error.type)"))
                }
            case .parallel(let n, let flaky, let failing, let caught):
                do {
                    let r: [String] = try await ctx.parallel(name, Array(0..<n), retry: Self.policy(2)) { b, _ in
                        let attempt = process.attempts.withLock { a -> Int in
                            a["\(run)/\(name)[\(b)]", default: 0] += 1
                            return a["\(run)/\(name)[\(b)]"]!
                        }
                        try ledger.ran(run, "\(name)[\(b)]", attempt: attempt)
                        if b == failing { throw StepError.nonRetryable("branch \(b) fails for good") }
                        if flaky && attempt == 1 { throw PropTransient() }
                        return "b\(b)"
                    }
                    out.append(.array(r.map { .string($0) }))
                } catch let e as StepFailedError where caught {
                    out.append(.string("caught: \(e.error.type)"))
                }
            case .compensate:
                ctx.compensate("c\(i)") { try ledger.ran(run, "c\(i)", attempt: 1) }
                out.append("registered")
            }
        }
        return out
    }
}

/// What a process keeps in memory: its parallel branches' attempts (in-process retries are
/// not journaled, and start again at 1 in a new process).
final class PropProcess: Sendable {
    let attempts = Mutex<[String: Int]>([:])
}

// MARK: - driving a run as a person would

/// One spool, its clock and what the bodies run against it did.
final class PropWorld: Sendable {
    let temp: TempSpool
    let clock = ManualClock(autoAdvance: true)
    let ledger = PropLedger()
    static let run = "p"

    init(_ ops: [PropOp]) throws {
        // A tmpfs when there is one: a case makes hundreds of fsyncs.
        let shm = FileManager.default.isWritableFile(atPath: "/dev/shm") ? "/dev/shm" : nil
        temp = try TempSpool(prefix: "cairn-prop", in: shm)
        _ = try temp.submit(PropInterpreter.name, input: ops, id: Self.run)
    }

    /// A fresh engine: a new process (after a crash, nothing of the old one's memory).
    func engine() -> Engine {
        temp.engine([AnyWorkflow(PropInterpreter(ledger: ledger))], clock: clock, logLevel: .critical)
    }

    struct Stuck: Error, CustomStringConvertible { var description: String }

    /// Drives `run` to its end, deciding every wait as the operation says (approve, reject,
    /// cancel, drop the event, settle an uncertain at-most-once step by its effect) and
    /// driving children. Throws `PropLedger.Dead` once `fault` crashed the process.
    func settle(_ engine: Engine, _ run: String, _ ops: [PropOp], fault: WriteFault?) async throws -> AdvanceOutcome {
        for _ in 0..<100 {
            let out = try await engine.drive(run)
            if fault?.crashed == true { throw PropLedger.Dead() }
            guard case .waiting(let w) = out else { return out }
            let kind = w["kind"]?.stringValue ?? ""
            let name = w["gate"]?.stringValue ?? w["name"]?.stringValue ?? w["step"]?.stringValue ?? ""
            switch kind {
            case "approval":
                guard let i = Int(name.dropFirst()), i < ops.count, case .approval(let d) = ops[i] else { throw Stuck(description: "\(run) waits on unknown gate \(w)") }
                switch d {
                case .approve: try drop("approvals/\(name).approved", in: run, "")
                case .reject: try drop("approvals/\(name).rejected", in: run, #"{"reason": "no"}"#)
                case .cancel: try drop("cancel", in: run, "")
                }
            case "event":
                guard let i = Int(name.dropFirst()), i < ops.count, case .event(false) = ops[i] else { throw Stuck(description: "\(run) waits on an event nobody drops: \(w)") }
                try drop("events/\(name).json", in: run, "\"person-\(i)\"")
            case "uncertain":
                // The person checks the effect: the value it had, or none (run it again).
                let gate = w["gate"]?.stringValue ?? ""
                if let v = ledger.effect(run, name) {
                    try drop("approvals/\(gate).approved", in: run, #"{"action": "done", "value": "\#(v)"}"#)
                } else {
                    try drop("approvals/\(gate).approved", in: run, #"{"action": "rerun"}"#)
                }
            case "child":
                guard let child = w["run"]?.stringValue, let i = Int(name.dropFirst()), i < ops.count else { throw Stuck(description: "\(run): \(w)") }
                let c = try await settle(engine, child, ops[i].children, fault: fault)
                if !c.isTerminal { throw Stuck(description: "child \(child) ended \(c)") }
            default:
                throw Stuck(description: "\(run) waits on \(w)")
            }
        }
        throw Stuck(description: "\(run) did not finish in 100 drives")
    }

    /// A person's drop; one already there means the run waits on a thing that happened.
    func drop(_ relative: String, in run: String, _ content: String) throws {
        let path = temp.spool.run(run).directory.appending(relative)
        if DurableFile.exists(path) { throw Stuck(description: "\(run) waits although \(relative) is there") }
        try temp.drop(relative, in: run, content: content)
    }
}

// MARK: - what must be equal

enum Normalized {
    static let recordedValues: Set<String> = ["now", "uuid", "random"]

    /// Values drawn fresh by each execution (`now`, `uuid`, `random`) masked: they are checked
    /// instead against the run's own journal (`recordedValuesMatch`).
    static func mask(_ v: JSONValue) -> JSONValue {
        switch v {
        case .string(let s):
            for k in recordedValues where s.hasPrefix(k + ":") { return .string(k + ":*") }
            return v
        case .array(let a): return .array(a.map(mask))
        case .object(let o): return .object(o.mapValues(mask))
        default: return v
        }
    }

    /// A record as compared: kind, name, phase, value, error, attempt, decision, status,
    /// group, index, semantics, file, comment, data and position. Left out: times (`at`,
    /// `started_at`, `duration_ms`, `until` — the clock went on while the process was dead),
    /// `decided_by` (the file's owner), a decision file's inode, the start record's pid.
    /// `settled`: steps a person settled after the crash (an `uncertain` gate): their intent,
    /// retry and uncertain records, attempts and decision fields, and every position (those
    /// records shift what follows) are left out on both sides.
    /// A parallel group's records come in completion order, which differs from run to run
    /// (documented): each contiguous group is put in index order, keeping its positions.
    static func records(_ entries: [JournalEntry], settled: Set<String>, anySettled: Bool) -> [String] {
        var ordered: [JournalEntry] = []
        var i = 0
        while i < entries.count {
            var j = i + 1
            if let g = entries[i].group { while j < entries.count, entries[j].group == g { j += 1 } }
            let block = entries[i..<j]
            for (e, seq) in zip(block.sorted { ($0.index ?? 0) < ($1.index ?? 0) }, block.map(\.seq)) {
                ordered.append(propModify(e) { $0.seq = seq })
            }
            i = j
        }
        return ordered.compactMap { e -> String? in
            let isSettled = e.name.map { settled.contains($0) } ?? false
            if isSettled, ["intent", "retry", "uncertain"].contains(e.kind) { return nil }
            var o: [String: JSONValue] = ["kind": .string(e.kind.rawValue)]
            o["name"] = e.name.map { .string($0) }
            o["phase"] = e.phase.map { .string($0.rawValue) }
            o["value"] = e.value.map { recordedValues.contains(e.kind.rawValue) ? "*" : mask($0) }
            o["error"] = e.error.map { .string(attempts("\($0.type): \($0.message)", anySettled)) }
            o["status"] = e.status.map { .string($0.rawValue) }
            o["group"] = e.group.map { .string($0) }
            o["index"] = e.index.map { .int(Int64($0)) }
            if var d = e.data?.objectValue {
                d["inode"] = nil
                d["pid"] = nil
                if !settled.isEmpty { d["consumed"] = nil; d["file"] = nil }
                o["data"] = .object(d)
            }
            if !isSettled {
                o["attempt"] = e.attempt.map { .int(Int64($0)) }
                o["decision"] = e.decision.map { .string($0.rawValue) }
                o["semantics"] = e.semantics.map { .string($0) }
                o["comment"] = e.comment.map { .string($0) }
            }
            if settled.isEmpty {
                o["seq"] = .int(Int64(e.seq))
                o["key"] = e.idempotencyKey.map { .string($0) }
                o["file"] = e.file.map { .string($0) }
            }
            return JSONValue.object(o).canonicalText()
        }
    }

    /// Steps whose at-most-once window a person settled.
    static func settled(_ entries: [JournalEntry]) -> Set<String> {
        Set(entries.filter { $0.kind == "uncertain" || ($0.kind == "step" && $0.decision != nil) }.compactMap(\.name))
    }

    /// The values a completed run returned for `now`/`uuid`/`random` are the ones its journal
    /// recorded (replay gave back the recorded value, not a fresh one).
    static func recordedValuesMatch(_ entries: [JournalEntry], result: JSONValue) -> Bool {
        let returned = (result.arrayValue ?? []).compactMap { v -> String? in
            guard let s = v.stringValue, recordedValues.contains(where: { s.hasPrefix($0 + ":") }) else { return nil }
            return s
        }
        let recorded = entries.filter { recordedValues.contains($0.kind.rawValue) }.map { e -> String in
            switch e.value {
            case .string(let s)?: return "\(e.kind):\(s)"
            case .double(let d)?: return "\(e.kind):\(d)"
            case .int(let n)?: return "\(e.kind):\(Double(n))"
            default: return "\(e.kind):?"
            }
        }
        return returned == recorded
    }

    /// A person's rerun of an uncertain step is an attempt of its own: when one was settled
    /// anywhere, "failed after N attempt(s)" (in a parent's and a child's errors too) is not compared.
    static func attempts(_ message: String, _ anySettled: Bool) -> String {
        anySettled ? message.replacing(/after \d+ attempt/, with: "after * attempt") : message
    }

    static func outcome(_ o: AdvanceOutcome, anySettled: Bool) -> String {
        switch o {
        case .completed(let v): return "completed " + mask(v).canonicalText()
        case .failed(let e): return attempts("failed \(e.type): \(e.message)", anySettled)
        default: return "\(o)"
        }
    }
}

// MARK: - the property

@Suite struct ReplayPropertyTests {
    /// `CAIRN_PROP_CASES` (default 200; `make test-props-long` runs 3000).
    static let count = ProcessInfo.processInfo.environment["CAIRN_PROP_CASES"].flatMap(Int.init) ?? 200

    @Test func aCrashAtAnyDurableWriteThenResumingEqualsAnUninterruptedRun() async {
        await propertyCheck(count: Self.count, input: PropGen.cases("replay-property", maxOps: 8)) { c in
            await Self.check(c)
        }
    }

    // Cases the property found, kept as they were shrunk (docs/reliability.md, "Property tests").

    @Test func parallelsInAChildResumedAfterACrash() async {
        await Self.check(PropCase(ops: [.child([.parallel(branches: 2, flaky: false, failing: 1, caught: true), .parallel(branches: 1, flaky: false, failing: nil, caught: true), .parallel(branches: 3, flaky: false, failing: 2, caught: true)], caught: true)], crashPick: 783682, lands: false, label: "regression"))
    }

    /// Found by the property (seed 16068020776005921057, case 28): the process dies at the
    /// child run's last durable write (its state.json, after its `complete` record). The
    /// resumed parent reads the child's journal, records it finished and completes; nothing
    /// advances the child again, so its state.json says `running` for good under
    /// `Engine.drive` (a daemon fixes it at its next start). Not fixed here: see the report.
    @Test func aChildsStateAfterACrashAtItsLastWrite() async {
        await withKnownIssue("a child's state.json stays stale when the process died at its last write") {
            await Self.check(PropCase(ops: [.child([.event(viaSend: false)], caught: false), .parallel(branches: 4, flaky: false, failing: 2, caught: false)], crashPick: 181061, lands: false, label: "regression"), wakeChildren: false)
        }
    }

    /// One case: uninterrupted on one spool; on another, dead at a durable write, resumed.
    static func check(_ c: PropCase, wakeChildren: Bool = true) async {
        do {
            try await checkThrowing(c, wakeChildren: wakeChildren)
        } catch {
            Issue.record("\(c.label): \(error)")
        }
    }

    /// `wakeChildren`: advance every child run once more before comparing state.json, as a
    /// daemon does at start with every run not finished (see `aChildsStateAfterACrashAtItsLastWrite`).
    static func checkThrowing(_ c: PropCase, wakeChildren: Bool) async throws {
        let a = try PropWorld(c.ops)
        let counting = WriteFault()
        let outA = try await WriteFault.$current.withValue(counting) { try await a.settle(a.engine(), PropWorld.run, c.ops, fault: nil) }
        let writes = counting.writes

        let b = try PropWorld(c.ops)
        let fault = WriteFault(failAt: c.crashPick % max(1, writes) + 1, lands: c.lands)
        do {
            _ = try await WriteFault.$current.withValue(fault) { try await b.settle(b.engine(), PropWorld.run, c.ops, fault: fault) }
        } catch where fault.crashed {
        }
        #expect(fault.crashed, "the run made \(writes) durable writes uninterrupted, but did not reach write \(fault.failAt) in the crashed run")
        let crash = "died at durable write \(fault.failAt) of \(writes) (\(fault.crashedAt ?? "-"), \(c.lands ? "after" : "before") it landed)"
        let outB: AdvanceOutcome
        do {
            outB = try await b.settle(b.engine(), PropWorld.run, c.ops, fault: nil)
        } catch {
            Issue.record("resuming after the crash: \(error) (\(crash))")
            return
        }

        let runsA = try a.temp.spool.runIDs(), runsB = try b.temp.spool.runIDs()
        let anySettled = try runsB.contains { !Normalized.settled(try b.temp.spool.journal($0).load()).isEmpty }
        #expect(Normalized.outcome(outA, anySettled: anySettled) == Normalized.outcome(outB, anySettled: anySettled), "\(crash)")
        #expect(runsA == runsB, "\(crash)")
        for run in runsA where runsB.contains(run) {
            let ja = try a.temp.spool.journal(run).load(), jb = try b.temp.spool.journal(run).load()
            let settled = Normalized.settled(jb)
            let na = Normalized.records(ja, settled: settled, anySettled: anySettled), nb = Normalized.records(jb, settled: settled, anySettled: anySettled)
            if na != nb {
                let i = (0..<min(na.count, nb.count)).first { na[$0] != nb[$0] } ?? min(na.count, nb.count)
                Issue.record("""
                    run \(run): journals differ at record \(i + 1) (\(crash))
                      uninterrupted: \(i < na.count ? na[i] : "(none)")
                      crashed:       \(i < nb.count ? nb[i] : "(none)")
                    uninterrupted: \(ja.map { "\($0.kind):\($0.name ?? "")" })
                    crashed:       \(jb.map { "\($0.kind):\($0.name ?? "")" })
                    """)
            }
            #expect(jb.map(\.seq) == Array(1...max(1, jb.count)).prefix(jb.count).map { $0 }, "run \(run): positions with a gap or twice (\(crash))")
            if wakeChildren, run != PropWorld.run {
                _ = try await a.engine().advance(run)
                _ = try await b.engine().advance(run)
            }
            #expect(try a.temp.state(run).status == b.temp.state(run).status, "run \(run): state.json (\(crash))")
            for (w, j) in [(a, ja), (b, jb)] {
                if let last = j.last, last.kind == "complete" {
                    let result = try w.temp.spool.blobs(run).resolve(last.value ?? .null)
                    #expect(Normalized.recordedValuesMatch(j, result: result), "run \(run): now/uuid/random returned \(result) but the journal recorded others (\(crash))")
                }
            }
        }
        let ranA = a.ledger.runs, ranB = b.ledger.runs
        for (body, n) in ranB.sorted(by: { $0.key < $1.key }) {
            if b.ledger.atMostOnce.contains(body) {
                #expect(n <= 1, "at-most-once body \(body) ran \(n) times (\(crash))")
            } else {
                #expect(n <= (ranA[body] ?? 0) + 1, "at-least-once body \(body) ran \(n) times, \(ranA[body] ?? 0) uninterrupted (\(crash))")
            }
        }
    }
}
