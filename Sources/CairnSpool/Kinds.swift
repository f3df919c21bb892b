import Foundation

/// A string with a closed set of well-known values that other layers may extend (a record
/// kind, a phase, a decision): typed in code, a plain JSON string on disk. A string literal
/// is one (`e.kind == "step"`), and so is a value another version wrote that this one does
/// not know (kept as it is).
public protocol StringTag: RawRepresentable, ExpressibleByStringLiteral, Codable, Hashable, Sendable, CustomStringConvertible where RawValue == String {
    /// A tag from its string, known to this version or not.
    init(rawValue: String)
}

extension StringTag {
    /// The tag of this string.
    public init(stringLiteral value: String) { self.init(rawValue: value) }
    /// Reads a plain JSON string.
    public init(from decoder: any Decoder) throws { self.init(rawValue: try decoder.singleValueContainer().decode(String.self)) }
    /// Writes a plain JSON string.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }
    /// The raw string.
    public var description: String { rawValue }
}

/// A journal record's kind: `journal/NNNNNN-KIND[-NAME].json`. The engine's kinds are here;
/// a layer above adds its own (the agent layer's `llm`, `llm-retry`, `llm-budget`).
public struct RecordKind: StringTag {
    /// The kind as written in file names and records.
    public var rawValue: String
    /// A kind, known or not.
    public init(rawValue: String) { self.rawValue = rawValue }

    /// The run's first record: workflow, version, input.
    public static let start: Self = "start"
    /// A step's result (or its final failure).
    public static let step: Self = "step"
    /// A failed attempt and when the next one is due.
    public static let retry: Self = "retry"
    /// An at-most-once step is about to run.
    public static let intent: Self = "intent"
    /// An at-most-once step's intent found with no result: a person decides.
    public static let uncertain: Self = "uncertain"
    /// A recorded `ctx.now()`.
    public static let now: Self = "now"
    /// A recorded `ctx.uuid()`.
    public static let uuid: Self = "uuid"
    /// A recorded `ctx.random()`.
    public static let random: Self = "random"
    /// A durable timer and its due time.
    public static let sleep: Self = "sleep"
    /// An approval gate (phases `requested`, `decided`).
    public static let approval: Self = "approval"
    /// An event wait (phases `requested`, `received`).
    public static let event: Self = "event"
    /// An event sent to another run.
    public static let send: Self = "send"
    /// A child run (phases `started`, `finished`).
    public static let child: Self = "child"
    /// A compensation that ran.
    public static let compensate: Self = "compensate"
    /// A `ctx.patched` guard the run went through.
    public static let patch: Self = "patch"
    /// A cancel request, at the position where the run saw it.
    public static let cancel: Self = "cancel"
    /// The run failed (its error).
    public static let fail: Self = "fail"
    /// The run completed (its output).
    public static let complete: Self = "complete"
    /// `ctx.continueAsNew`: the run ends and a new run of its workflow starts (`data.run`).
    public static let continueAsNew: Self = "continue"
}

/// The phase of a two-record operation (approval, event, child).
public struct RecordPhase: StringTag {
    /// The phase as written in the record.
    public var rawValue: String
    /// A phase, known or not.
    public init(rawValue: String) { self.rawValue = rawValue }

    /// A gate or an event wait was opened.
    public static let requested: Self = "requested"
    /// A gate's decision was recorded.
    public static let decided: Self = "decided"
    /// An event was consumed (or its wait timed out).
    public static let received: Self = "received"
    /// A child run was created.
    public static let started: Self = "started"
    /// A child run ended.
    public static let finished: Self = "finished"
}

/// What a decision or receipt record says happened.
public struct Decision: StringTag {
    /// The decision as written in the record.
    public var rawValue: String
    /// A decision, known or not.
    public init(rawValue: String) { self.rawValue = rawValue }

    /// A gate was approved.
    public static let approved: Self = "approved"
    /// A gate was rejected.
    public static let rejected: Self = "rejected"
    /// A gate's timeout handed it to another gate.
    public static let escalated: Self = "escalated"
    /// An uncertain at-most-once step: run it again.
    public static let rerun: Self = "rerun"
    /// An uncertain at-most-once step: recorded as done with a person's value.
    public static let done: Self = "done"
    /// An event arrived.
    public static let received: Self = "received"
    /// The wait's deadline passed first.
    public static let timedOut: Self = "timed_out"
}

/// What kind of thing a waiting run waits for (`waiting_for.kind`).
public struct WaitKind: StringTag {
    /// The kind as written in `waiting_for.kind`.
    public var rawValue: String
    /// A wait kind, known or not.
    public init(rawValue: String) { self.rawValue = rawValue }

    /// A person's decision on a gate.
    public static let approval: Self = "approval"
    /// A person's decision on an uncertain at-most-once step.
    public static let uncertain: Self = "uncertain"
    /// A durable timer.
    public static let timer: Self = "timer"
    /// A step's backoff before its next attempt.
    public static let retry: Self = "retry"
    /// An event file.
    public static let event: Self = "event"
    /// A child run finishing.
    public static let child: Self = "child"
    /// The `pause` file going away.
    public static let pause: Self = "pause"
}

/// What a waiting run waits for: `state.json`'s `waiting_for`, exactly the JSON object on
/// disk (fields this version does not model are kept), read through typed accessors. What
/// wakes the run is `wake`: the daemon, the engine and the CLI decide on that, never on
/// the raw JSON.
public struct WaitingFor: Codable, Sendable, Hashable, CustomStringConvertible {
    /// The object as written.
    public private(set) var json: JSONValue

    /// What makes a waiting run worth advancing again (besides its `until` passing, and its
    /// control files).
    public enum Wake: Sendable, Hashable {
        /// A decision file in `approvals/`: `GATE.approved` or `GATE.rejected`.
        case decision(gate: String)
        /// A file `events/NAME.json` or `events/NAME.*.json` that no record consumed.
        case event(name: String)
        /// The child run finishing.
        case child(run: String)
        /// Only time (`until`).
        case time
        /// The `pause` file going away.
        case resume
        /// Nothing this version knows of: look at the run on every change.
        case unknown
    }

    /// The wait described by `json` (a `waiting_for` object).
    public init(json: JSONValue) { self.json = json }

    /// Reads the `waiting_for` object as it is.
    public init(from decoder: any Decoder) throws { json = try JSONValue(from: decoder) }
    /// Writes the `waiting_for` object as it is.
    public func encode(to encoder: any Encoder) throws { try json.encode(to: encoder) }

    /// A member of the `waiting_for` object.
    public subscript(key: String) -> JSONValue? { json[key] }
    /// `waiting_for.kind` (`unknown` when missing).
    public var kind: WaitKind { WaitKind(rawValue: json["kind"]?.stringValue ?? "unknown") }
    /// When the wait ends by itself (a timer, a retry's backoff) or times out (a gate's, an event's deadline).
    public var until: Date? { json["until"]?.stringValue.flatMap(Timestamp.parse) }
    /// The gate a decision is dropped for.
    public var gate: String? { json["gate"]?.stringValue }
    /// The file to drop (as the run wrote it, relative to the run directory).
    public var drop: String? { json["drop"]?.stringValue }
    /// A drop that was refused (and why), when the run waits again because of it.
    public var refused: String? { json["refused"]?.stringValue }

    /// What wakes the run, from its kind and fields.
    public var wake: Wake {
        switch kind {
        case .timer, .retry: return .time
        case .pause: return .resume
        case .event: return json["name"]?.stringValue.map { .event(name: $0) } ?? .unknown
        case .child: return json["run"]?.stringValue.map { .child(run: $0) } ?? .unknown
        default:
            // approval, uncertain, and a layer's own gates (the agent layer's `budget`).
            return gate.map { .decision(gate: $0) } ?? .unknown
        }
    }

    /// The compact JSON of the `waiting_for` object.
    public var description: String { json.compactText() }

    // MARK: the engine's waits

    /// A person's decision on `gate`.
    /// `refused`: why the last decision dropped was refused (the gate is still open).
    public static func approval(gate: String, until: Date?, refused: String? = nil) -> WaitingFor {
        var o: [String: JSONValue] = [
            "kind": "approval", "gate": .string(gate),
            "drop": .string("approvals/\(gate).approved"),
            "reject": .string("approvals/\(gate).rejected"),
        ]
        if let until { o["until"] = .string(Timestamp.format(until)) }
        if let refused { o["refused"] = .string(refused) }
        return WaitingFor(json: .object(o))
    }

    /// A durable sleep.
    public static func timer(name: String?, until: Date) -> WaitingFor {
        var o: [String: JSONValue] = ["kind": "timer", "until": .string(Timestamp.format(until))]
        if let name { o["name"] = .string(name) }
        return WaitingFor(json: .object(o))
    }

    /// A failed attempt's backoff; `extra` adds fields of the layer that retries.
    public static func retry(step: String, attempt: Int?, until: Date, extra: [String: JSONValue] = [:]) -> WaitingFor {
        var o: [String: JSONValue] = ["kind": "retry", "step": .string(step), "until": .string(Timestamp.format(until))]
        if let attempt { o["attempt"] = .int(Int64(attempt)) }
        o.merge(extra) { a, _ in a }
        return WaitingFor(json: .object(o))
    }

    /// An event file.
    /// `refused`: why the last event file was refused (its data did not decode).
    public static func event(name: String, until: Date?, drop: Bool = true, refused: String? = nil) -> WaitingFor {
        var o: [String: JSONValue] = ["kind": "event", "name": .string(name)]
        if drop { o["drop"] = .string("events/\(name).json") }
        if let until { o["until"] = .string(Timestamp.format(until)) }
        if let refused { o["refused"] = .string(refused) }
        return WaitingFor(json: .object(o))
    }

    /// A child run.
    public static func child(name: String, run: String) -> WaitingFor {
        WaitingFor(json: ["kind": "child", "name": .string(name), "run": .string(run)])
    }

    /// The `pause` file.
    public static let pause = WaitingFor(json: ["kind": "pause", "drop": "remove pause to resume"])

    /// An at-most-once step that may have run: a person says what happened.
    public static func uncertain(step: String, gate: String, idempotencyKey: String, refused: String? = nil) -> WaitingFor {
        var o: [String: JSONValue] = [
            "kind": "uncertain", "step": .string(step), "gate": .string(gate),
            "drop": .string("approvals/\(gate).approved"), "idempotency_key": .string(idempotencyKey),
        ]
        if let refused { o["refused"] = .string(refused) }
        return WaitingFor(json: .object(o))
    }
}

extension WaitingFor: ExpressibleByDictionaryLiteral {
    /// A `waiting_for` object written out (`["kind": "event", "name": "paid"]`).
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self.init(json: .object(Dictionary(elements, uniquingKeysWith: { _, last in last })))
    }
}
