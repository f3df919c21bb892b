import CairnSpool
import Foundation
import SystemPackage

extension WorkflowContext {
    // MARK: recorded values

    /// The current time, recorded: the same on replay.
    public func now(_ name: String? = nil) throws -> Date {
        if let e = try replay("now", name) { return try load(e.value, as: Date.self, file: "journal/" + e.fileName) }
        try beforeLive()
        let t = clock.now()
        try record("now", name) { $0.value = .string(Timestamp.format(t)) }
        return Timestamp.parse(Timestamp.format(t))!
    }

    /// A random UUID, recorded.
    public func uuid(_ name: String? = nil) throws -> UUID {
        if let e = try replay("uuid", name) { return try load(e.value, as: UUID.self, file: "journal/" + e.fileName) }
        try beforeLive()
        let u = UUID()
        try record("uuid", name) { $0.value = .string(u.uuidString) }
        return u
    }

    /// A random number in [0, 1), recorded.
    public func random(_ name: String? = nil) throws -> Double {
        if let e = try replay("random", name) { return try load(e.value, as: Double.self, file: "journal/" + e.fileName) }
        try beforeLive()
        let r = Double.random(in: 0..<1)
        try record("random", name) { $0.value = .double(r) }
        return r
    }

    // MARK: timers

    /// A durable sleep of any length: the journal holds the absolute due time, so a
    /// restart (or a restore on another machine) wakes the run when it is due.
    public func sleep(_ name: String = "sleep", for duration: Duration) async throws {
        try await sleep(name, until: nil, duration: duration)
    }

    /// A durable sleep until a point in time.
    public func sleep(_ name: String = "sleep", until deadline: Date) async throws {
        try await sleep(name, until: deadline, duration: nil)
    }

    private func sleep(_ name: String, until deadline: Date?, duration: Duration?) async throws {
        var until: Date
        if let e = try replay("sleep", name) {
            until = e.until ?? e.at
        } else {
            try beforeLive()
            until = deadline ?? clock.now().addingTimeInterval(duration?.seconds ?? 0)
            let u = until
            try record("sleep", name) { $0.until = u }
        }
        if clock.now() < until {
            if peek() == nil { try beforeLive() }
            throw suspend(["kind": "timer", "name": .string(name), "until": .string(Timestamp.format(until))])
        }
    }

    // MARK: events

    /// Waits for `events/NAME.json` or `events/NAME.SUFFIX.json` (dropped by a program, a
    /// person, `cairn signal` or another run's `send`), and returns its data. Each call
    /// consumes one event file, oldest first. Returns nil if `timeout` passes first.
    public func waitForEvent<T: Decodable & Sendable>(_ name: String, as type: T.Type = JSONValue.self, timeout: Duration? = nil) async throws -> T? {
        guard Names.isValidName(name) else { throw StepError.nonRetryable("invalid event name '\(name)'") }
        var requested = try replayPhase("event", name, phase: "requested")
        if requested == nil {
            try beforeLive()
            let deadline = timeout.map { clock.now().addingTimeInterval($0.seconds) }
            requested = try record("event", name) {
                $0.phase = "requested"
                $0.until = deadline
            }
        }
        if let e = peek() {
            let r = try replay("event", name)!
            if r.decision == "timed_out" { return nil }
            if let err = r.error { throw StepFailedError(step: name, attempts: 1, error: err) }
            return try load(r.value, as: T.self, file: "journal/" + e.fileName)
        }
        try beforeLive()
        if let (file, value) = try nextEventFile(name) {
            // An event that does not decode is consumed with its error (so a `cairn retry`
            // supersedes exactly this record and waits for a new event).
            var decoded: T? = nil
            var invalid: ErrorInfo? = nil
            do { decoded = try value.decode(as: T.self) } catch {
                invalid = ErrorInfo(type: "invalid_event", message: "events/\(file) does not decode as \(T.self): \(JSONValue.describe(error))", file: "events/" + file, retryable: false)
            }
            try record("event", name) {
                $0.phase = "received"
                $0.decision = "received"
                $0.value = try blobs.externalize(value)
                $0.file = "events/" + file
                $0.error = invalid
            }
            if let invalid { throw StepFailedError(step: name, attempts: 1, error: invalid) }
            return decoded!
        }
        if let deadline = requested?.until, clock.now() >= deadline {
            try record("event", name) {
                $0.phase = "received"
                $0.decision = "timed_out"
            }
            return nil
        }
        var waiting: [String: JSONValue] = ["kind": "event", "name": .string(name), "drop": .string("events/\(name).json")]
        if let until = requested?.until { waiting["until"] = .string(Timestamp.format(until)) }
        throw suspend(.object(waiting))
    }

    /// The oldest event file for `name` that no record consumed yet.
    func nextEventFile(_ name: String) throws -> (String, JSONValue)? {
        // Files consumed by any record, superseded ones included: an event a retry skipped
        // (one that did not decode) is not taken again.
        let consumed = Set(state.withLock { ($0.entries + $0.superseded).filter { $0.kind == "event" }.compactMap(\.file) })
        var candidates: [(Date, String, JSONValue)] = []
        for file in try Spool.list(paths.eventsDirectory) {
            guard file == "\(name).json" || (file.hasPrefix("\(name).") && file.hasSuffix(".json") && !file.hasSuffix(".error.json")) else { continue }
            guard !consumed.contains("events/" + file) else { continue }
            let path = paths.eventsDirectory.appending(file)
            switch Drops.read(path, limit: config.dropSizeLimit) {
            case .absent: continue
            case .refused(let p, let reason, let identity):
                try Drops.refuse(p, reason: reason, identity: identity, durable: spool.durable, now: clock.now(), setAsideIn: paths.refusedDirectory)
            case .valid(let f):
                candidates.append((f.modified, file, f.json ?? .null))
            }
        }
        guard let first = candidates.min(by: { ($0.0, $0.1) < ($1.0, $1.1) }) else { return nil }
        return (first.1, first.2)
    }

    /// Sends an event to another run, exactly once: the file name
    /// `events/EVENT.FROMRUN-POSITION.json` is deterministic, so a resend after a crash
    /// finds the first one in place.
    public func send<T: Encodable & Sendable>(to run: String, event: String, data: T) async throws {
        guard Names.isValidName(event) else { throw StepError.nonRetryable("invalid event name '\(event)'") }
        if try replay("send", event) != nil { return }
        try beforeLive()
        guard spool.runExists(run) else {
            throw StepFailedError(step: event, attempts: 1, error: ErrorInfo(type: "no_such_run", message: "send: no run '\(run)' to send '\(event)' to", retryable: false))
        }
        let seq = currentPosition()
        // Fits NAME_MAX however long the event name and run id (both up to 128 characters).
        let file = Names.fitting("\(event).", "\(runID)-\(seq)", ".json")
        let target = spool.run(run).eventsDirectory.appending(file)
        // The name can be foreseen: whatever a member put there first is set aside (kept),
        // so that it neither stands in for this event nor stops it. Ours (a resend after a
        // crash) stays.
        Spool.setAsideForeign(target)
        do {
            try spool.durable.write(json: JSONValue(encoding: data), to: target, mode: .noReplace)
        } catch let e as SpoolError where e.code == .exists {}
        try record("send", event) { $0.data = ["to": .string(run), "file": .string("events/" + file)] }
    }

    // MARK: children

    /// The id a child operation gives its run: `PARENT.NAME` (hashed when too long).
    public func childRunID(_ name: String) -> String {
        let id = "\(runID).\(Names.fileSafe(name))"
        if id.count <= 128 { return id }
        return String(runID.prefix(50)) + ".c-" + String(ContentHash.sha256Hex(Array(id.utf8)).prefix(32))
    }

    /// Starts a child run of workflow `W` (registered in the same registry) and waits for
    /// its result. The child's id is deterministic, so it is created once.
    public func child<W: Workflow>(_ name: String, _ workflow: W.Type, input: W.Input) async throws -> W.Output {
        var childID = childRunID(name)
        if let started = try replayPhase("child", name, phase: "started") {
            childID = started.data?["run"]?.stringValue ?? childID
        } else {
            // After a run-level retry superseded this child's records, a fresh child run
            // (`PARENT.NAME.rN`): the failed one is history, not reused.
            let used = state.withLock { $0.superseded.filter { $0.kind == "child" && $0.phase == "started" && $0.name == name }.count }
            if used > 0 { childID = childRunID("\(name).r\(used + 1)") }
            try beforeLive()
            _ = try spool.createRun(.init(workflow: W.name, input: JSONValue(encoding: input), id: childID, workflowVersion: W.version, parent: .init(run: runID, name: name)), now: clock.now())
            try record("child", name) {
                $0.phase = "started"
                $0.data = ["run": .string(childID), "workflow": .string(W.name)]
            }
        }
        if let e = peek() {
            let r = try replay("child", name)!
            if let err = r.error { throw StepFailedError(step: name, attempts: 1, error: err) }
            return try load(r.value, as: W.Output.self, file: "journal/" + e.fileName)
        }
        try beforeLive()
        let childJournal = Journal.effective(try spool.journal(childID).load())
        if let last = childJournal.last, let status = last.terminalStatus {
            if status == .completed {
                let value = try spool.blobs(childID).resolve(last.value ?? .null)
                try record("child", name) {
                    $0.phase = "finished"
                    $0.status = status.rawValue
                    $0.value = try blobs.externalize(value)
                    $0.data = ["run": .string(childID)]
                }
                return try load(value, as: W.Output.self, file: "runs/\(childID)/journal/" + last.fileName)
            }
            let info = ErrorInfo(type: "child_\(status.rawValue)", message: "child run \(childID) \(status.rawValue)" + (last.error.map { ": \($0.message)" } ?? ""), retryable: false)
            try record("child", name) {
                $0.phase = "finished"
                $0.status = status.rawValue
                $0.error = info
                $0.data = ["run": .string(childID)]
            }
            throw StepFailedError(step: name, attempts: 1, error: info)
        }
        throw suspend(["kind": "child", "name": .string(name), "run": .string(childID)])
    }

    // MARK: parallel steps

    /// Runs `body` for every item, at most `maxConcurrency` at a time, each as its own
    /// durable step named `NAME[i]` (at-least-once, with a stable idempotency key).
    /// Branch retries back off in process with the injected clock. Records are appended
    /// in completion order and carry `group` and `index`; after a crash only the branches
    /// without a record run again. Throws the first failed branch's error (by index) once
    /// every branch has finished.
    public func parallel<Item: Sendable, Output: Codable & Sendable>(
        _ name: String,
        _ items: [Item],
        maxConcurrency: Int = 4,
        retry: RetryPolicy = .default,
        _ body: @escaping @Sendable (_ item: Item, _ idempotencyKey: String) async throws -> Output
    ) async throws -> [Output] {
        let base = currentPosition()
        var results: [Int: Result<Output, StepFailedError>] = [:]
        while let e = peek(), e.kind == "step", e.group == name, let i = e.index, i < items.count {
            consume()
            if let err = e.error {
                results[i] = .failure(StepFailedError(step: "\(name)[\(i)]", attempts: e.attempt ?? 1, error: err))
            } else {
                results[i] = .success(try load(e.value, as: Output.self, file: "journal/" + e.fileName))
            }
        }
        let missing = items.indices.filter { results[$0] == nil }
        if !missing.isEmpty {
            if let e = peek() { throw mismatch(e, kind: "step", name: "\(name)[\(missing[0])]") }
            try beforeLive()
            let clock = self.clock
            try await withThrowingTaskGroup(of: Void.self) { group in
                var next = missing.makeIterator()
                func launch(_ i: Int) {
                    let item = items[i]
                    let key = Self.key(run: runID, seq: base, name: "\(name)[\(i)]")
                    group.addTask {
                        var attempt = 1
                        let started = clock.now()
                        while true {
                            do {
                                let v = try await WorkflowContext.$enclosingStep.withValue("\(name)[\(i)]") { try await body(item, key) }
                                let stored = try self.store(v)
                                try self.record("step", "\(name)[\(i)]") {
                                    $0.group = name
                                    $0.index = i
                                    $0.value = stored
                                    $0.attempt = attempt
                                    $0.idempotencyKey = key
                                    $0.startedAt = started
                                    $0.durationMs = Int(clock.now().timeIntervalSince(started) * 1000)
                                }
                                return
                            } catch {
                                if Task.isCancelled { throw CancellationError() }
                                if retry.shouldRetry(error, attempt: attempt) {
                                    try await clock.sleep(for: .milliseconds(Int64(retry.delay(afterAttempt: attempt, unit: Double.random(in: 0..<1)) * 1000)))
                                    attempt += 1
                                    continue
                                }
                                try self.record("step", "\(name)[\(i)]") {
                                    $0.group = name
                                    $0.index = i
                                    $0.error = ErrorInfo.from(error)
                                    $0.attempt = attempt
                                    $0.idempotencyKey = key
                                }
                                return
                            }
                        }
                    }
                }
                for _ in 0..<max(1, maxConcurrency) { if let i = next.next() { launch(i) } }
                while try await group.next() != nil { if let i = next.next() { launch(i) } }
            }
            // Re-read what the branches recorded.
            let recorded = state.withLock { $0.entries.filter { $0.group == name && $0.seq >= base } }
            for e in recorded {
                guard let i = e.index, results[i] == nil else { continue }
                if let err = e.error {
                    results[i] = .failure(StepFailedError(step: "\(name)[\(i)]", attempts: e.attempt ?? 1, error: err))
                } else {
                    results[i] = .success(try load(e.value, as: Output.self, file: "journal/" + e.fileName))
                }
            }
        }
        return try items.indices.map { try results[$0]!.get() }
    }

    // MARK: saga

    /// Registers an undo action. If the run fails or is cancelled after this point, the
    /// registered actions run in reverse order, each recorded as a `compensate` record (so
    /// a crash during compensation does not undo twice).
    public func compensate(_ name: String, _ undo: @escaping @Sendable () async throws -> Void) {
        state.withLock { $0.compensations.append(Compensation(name: name, body: undo)) }
    }

    /// Runs registered compensations in reverse (called by the engine).
    func runCompensations() async throws {
        let list = state.withLock { s -> [Compensation] in
            s.suspended = nil
            return s.compensations.reversed()
        }
        for c in list {
            if let e = peek() {
                guard e.kind == "compensate", e.name == c.name else { throw mismatch(e, kind: "compensate", name: c.name) }
                consume()
                continue
            }
            var attempt = 1
            var failure: ErrorInfo? = nil
            while true {
                do {
                    try await c.body()
                    failure = nil
                    break
                } catch {
                    failure = ErrorInfo.from(error)
                    if attempt >= 3 { break }
                    try await clock.sleep(for: .seconds(Int64(1) << (attempt - 1)))
                    attempt += 1
                }
            }
            try record("compensate", c.name) {
                $0.attempt = attempt
                $0.error = failure
            }
        }
    }

    // MARK: versioning

    /// Guards a change to the workflow's code: true for runs that reach this point with the
    /// new code (the answer is recorded), false for runs whose journal was written by older
    /// code without it. `if ctx.patched("send-sms") { ...new... } else { ...old... }`.
    public func patched(_ id: String) throws -> Bool {
        try throwIfSuspended()
        if let e = peek() {
            if e.kind == "patch" && e.name == id {
                consume()
                return true
            }
            return false
        }
        try beforeLive()
        try record("patch", id)
        return true
    }
}
