import CairnSpool
import Foundation
import Synchronization
import Tracing

/// Traces (docs/operations.md, "Traces"): the engine's instrumentation, through
/// swift-distributed-tracing's API only. Whatever tracer the process bootstrapped receives
/// the spans (`cairn daemon --otlp-endpoint` bootstraps swift-otel's; none, the no-op one).
///
/// Each run is one trace, whatever process advanced it and however many restarts it
/// spans: the trace id and the root's span id are derived from the run id (SHA-256), and
/// every advance joins them through the W3C `traceparent` the instrument extracts. An
/// advance is a span `cairn.advance`; each durable operation it goes through is a span
/// under it, `cairn.KIND` (`cairn.step`, `cairn.approval`, `cairn.llm`…), with
/// `cairn.replayed` saying whether it only replayed its records. The root itself is never
/// a span: a run outlives the processes that advance it, and the tracing API lets no
/// process choose a span's id.
public enum RunTracing {
    /// Whether this process traces: a tracer other than the no-op one was bootstrapped
    /// (otherwise no span is started and no record looked at, as before tracing).
    static var enabled: Bool { !(InstrumentationSystem.tracer is NoOpTracer) }

    /// The run's W3C trace context: version 00, trace id and parent (root) span id derived
    /// from the run id, sampled.
    public static func traceparent(runID: String) -> String {
        let hex = ContentHash.sha256Hex(Array("cairn-run:\(runID)".utf8))
        var traceID = String(hex.prefix(32))
        var spanID = String(hex.dropFirst(32).prefix(16))
        // All-zero ids are invalid in W3C trace context (a chance of 2^-128 and 2^-64).
        if traceID.allSatisfy({ $0 == "0" }) { traceID = "00000000000000000000000000000001" }
        if spanID.allSatisfy({ $0 == "0" }) { spanID = "0000000000000001" }
        return "00-\(traceID)-\(spanID)-01"
    }

    /// The run's trace id (32 hex digits), as tracing back ends show it.
    public static func traceID(runID: String) -> String {
        String(traceparent(runID: runID).dropFirst(3).prefix(32))
    }

    /// The context an advance of the run starts its span in: the process's instrument
    /// extracts the run's `traceparent` (an instrument that does not read W3C headers
    /// leaves the context empty, and each advance is a trace of its own).
    static func context(runID: String) -> ServiceContext {
        var context = ServiceContext.topLevel
        InstrumentationSystem.instrument.extract(["traceparent": traceparent(runID: runID)], into: &context, using: HeaderExtractor())
        return context
    }

    struct HeaderExtractor: Extractor {
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    }

    struct HeaderInjector: Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
    }

    /// A span context as a W3C `traceparent` (what a script gets as TRACEPARENT), when the
    /// process's instrument writes one.
    package static func traceparent(of context: ServiceContext) -> String? {
        var carrier: [String: String] = [:]
        InstrumentationSystem.instrument.inject(context, into: &carrier, using: HeaderInjector())
        return carrier["traceparent"]
    }

    /// The journal positions operation spans carry, by run, until the advance's span takes
    /// them: what is left of the records the advance wrote (`start`, the terminal record,
    /// compensations, what an untraced helper process wrote) goes on the advance's span, so
    /// that each record is on exactly one span. (Served script helpers write through contexts
    /// of their own, so this is by run, not by context.)
    static let claimed = Mutex<[String: Set<Int>]>([:])

    static func claim(_ runID: String, _ records: [JournalEntry]) {
        guard !records.isEmpty else { return }
        claimed.withLock { $0[runID, default: []].formUnion(records.map(\.seq)) }
    }

    static func takeClaimed(_ runID: String) -> Set<Int> {
        claimed.withLock { $0.removeValue(forKey: runID) ?? [] }
    }

    /// A span for one durable operation, under the advance's span; its attributes say what
    /// the records it replayed or appended say.
    static func startOperation(_ kind: RecordKind, _ name: String?, runID: String, in context: ServiceContext?) -> (any Span)? {
        guard let context else { return nil }
        let span = InstrumentationSystem.tracer.startSpan("cairn.\(kind.rawValue)", context: context, ofKind: kind.rawValue == "llm" ? .client : .internal)
        span.attributes["cairn.run_id"] = runID
        span.attributes["cairn.kind"] = kind.rawValue
        if let name { span.attributes["cairn.name"] = name }
        return span
    }

    /// What the operation's records say, on its span: their positions, whether it only
    /// replayed, retries as events, an error, and for a model call the GenAI semantic
    /// conventions (gen_ai.*: operation, models, tokens).
    static func annotate(_ span: any Span, replayed: [JournalEntry], appended: [JournalEntry], waiting: Bool) {
        let records = replayed + appended
        span.attributes["cairn.replayed"] = appended.isEmpty
        if let first = records.first { span.attributes["cairn.seq"] = first.seq }
        // The positions of the records this turn wrote (each record is on one span).
        if !appended.isEmpty { span.attributes["cairn.appended"] = appended.map { Int64($0.seq) } }
        if waiting { span.attributes["cairn.waiting"] = true }
        // Retries as events where they happened (not again on each replay).
        for e in appended where e.kind == .retry {
            var attributes: SpanAttributes = [:]
            if let a = e.attempt { attributes["cairn.attempt"] = a }
            if let m = e.error?.message { attributes["exception.message"] = String(m.prefix(500)) }
            span.addEvent(SpanEvent(name: "retry", attributes: attributes))
        }
        guard let last = records.last else { return }
        if let a = last.attempt { span.attributes["cairn.attempts"] = a }
        if let phase = last.phase { span.attributes["cairn.phase"] = phase.rawValue }
        if let decision = last.decision { span.attributes["cairn.decision"] = decision.rawValue }
        if let error = last.error {
            span.attributes["error.type"] = error.type
            span.setStatus(SpanStatus(code: .error, message: String(error.message.prefix(500))))
        }
        if last.kind.rawValue == "llm", let data = last.data {
            span.attributes["gen_ai.operation.name"] = "chat"
            if let model = data["model"]?.stringValue { span.attributes["gen_ai.response.model"] = model }
            if case .array(let attempts)? = data["attempts"], let model = attempts.first?["model"]?.stringValue {
                span.attributes["gen_ai.request.model"] = model
            }
            if let input = data["tokens"]?["input"]?.intValue { span.attributes["gen_ai.usage.input_tokens"] = Int(input) }
            if let output = data["tokens"]?["output"]?.intValue { span.attributes["gen_ai.usage.output_tokens"] = Int(output) }
        }
    }
}

/// One durable operation's span while it takes its turns (no span, and no work, when the
/// process traces nothing): what it replayed, whether it stopped to wait; at the end, the
/// records it appended, on the span and claimed for it.
struct OperationTrace {
    let span: (any Span)?
    /// The context's records before the operation's first turn.
    let before: Int
    var replayedRecords: [JournalEntry] = []
    var waiting = false

    init(_ kind: RecordKind, _ name: String?, in ctx: WorkflowContext) {
        span = RunTracing.startOperation(kind, name, runID: ctx.runID, in: ctx.trace)
        before = span == nil ? 0 : ctx.state.withLock { $0.entries.count }
    }

    mutating func replayed(_ record: JournalEntry) {
        if span != nil { replayedRecords.append(record) }
    }

    /// An error other than a wait (a wait is thrown as an error too).
    func failed(_ error: any Error) {
        if !waiting { span?.recordError(error) }
    }

    func end(in ctx: WorkflowContext) {
        guard let span else { return }
        let appended = ctx.state.withLock { Array($0.entries.dropFirst(before)) }
        RunTracing.annotate(span, replayed: replayedRecords, appended: appended, waiting: waiting)
        RunTracing.claim(ctx.runID, appended)
        span.end()
    }
}
