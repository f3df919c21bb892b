import Cairn
import CairnAgents
import CairnSpool
import CairnTesting
import Foundation
import InMemoryTracing
import Testing
import Tracing

/// swift-distributed-tracing's in-memory tracer, reading the W3C `traceparent` header as an
/// OTLP tracer does (the in-memory one reads only its own keys): the engine's spans as an
/// exporter would receive them. Bootstrapped once for this test process; each test looks at
/// its own run's trace only.
struct W3CInMemoryTracer: Tracer {
    let inner = InMemoryTracer(recordInjections: false, recordExtractions: false)

    static let shared: W3CInMemoryTracer = {
        let t = W3CInMemoryTracer()
        InstrumentationSystem.bootstrap(t)
        return t
    }()

    func startSpan<Instant: TracerInstant>(_ operationName: String, context: @autoclosure () -> ServiceContext, ofKind kind: SpanKind, at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt) -> InMemorySpan {
        inner.startSpan(operationName, context: context(), ofKind: kind, at: instant(), function: function, file: fileID, line: line)
    }

    func forceFlush() {}

    func inject<Carrier, Inject: Injector>(_ context: ServiceContext, into carrier: inout Carrier, using injector: Inject) where Carrier == Inject.Carrier {}

    func extract<Carrier, Extract: Extractor>(_ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract) where Carrier == Extract.Carrier {
        guard let header = extractor.extract(key: "traceparent", from: carrier) else { return }
        let parts = header.split(separator: "-")
        guard parts.count == 4 else { return }
        context.inMemorySpanContext = InMemorySpanContext(traceID: String(parts[1]), spanID: String(parts[2]), parentSpanID: nil)
    }

    func spans(ofTrace traceID: String) -> [FinishedInMemorySpan] {
        inner.finishedSpans.filter { $0.traceID == traceID }
    }
}

/// Issue 15, "Traces": each run one trace across its advances, each advance a span, each
/// durable operation a span under it (replays marked), LLM calls with the GenAI semantic
/// conventions; checked against the journal.
@Suite struct TracingTests {
    @Test func aRunsTraceHasAnAdvanceSpanPerExecutionAndAnOperationSpanPerRecordItWrote() async throws {
        let tracer = W3CInMemoryTracer.shared
        let fake = try await FakeLLM.start(queue: [reply("high", usage: (120, 8))])
        let c = LLMClient(providers: [OpenAICompatibleProvider(name: "oa", baseURL: fake.baseURL, apiKey: "sk-test", timeout: .seconds(5))])
        let t = try TempSpool()
        let wf = AnyWorkflow(name: "traced") { ctx, _ in
            let draft: String = try await ctx.step("draft") { _ in "Hello" }
            let priority = try await ctx.llm("classify", models: ["oa:m"], messages: [.user("Classify: \(draft)")], client: c)
            let d = try await ctx.approval("send-reply", request: .init(summary: "Send?"))
            let _: Bool = try await ctx.step("send", semantics: .atMostOnce) { _ in true }
            return ["approved": .bool(d.approved), "priority": .string(priority.content)]
        }
        let engine = t.engine([wf])
        let id = try t.submit("traced", input: 0)
        guard case .waiting = try await engine.advance(id) else { Issue.record("not waiting"); return }
        try t.drop("approvals/send-reply.approved", in: id)
        guard case .completed = try await engine.advance(id) else { Issue.record("not completed"); return }

        // One trace, its id and root derived from the run id.
        let traceparent = RunTracing.traceparent(runID: id).split(separator: "-").map(String.init)
        #expect(RunTracing.traceID(runID: id) == traceparent[1])
        let spans = tracer.spans(ofTrace: traceparent[1])
        let advances = spans.filter { $0.operationName == "cairn.advance" }
        #expect(advances.count == 2, "\(spans.map(\.operationName))")
        #expect(advances.allSatisfy { $0.parentSpanID == traceparent[2] && $0.attributes["cairn.run_id"]?.toSpanAttribute() == .string(id) })
        #expect(advances.map { $0.attributes["cairn.outcome"]?.toSpanAttribute() } == [.string("waiting: approval"), .string("completed")])

        // Every operation span is under an advance of this run.
        let advanceIDs = Set(advances.map(\.spanID))
        let ops = spans.filter { $0.operationName != "cairn.advance" }
        #expect(ops.allSatisfy { advanceIDs.contains($0.parentSpanID ?? "") }, "\(ops.map { ($0.operationName, $0.parentSpanID) })")
        func children(_ a: FinishedInMemorySpan) -> [String] {
            ops.filter { $0.parentSpanID == a.spanID }.map { op in
                var name = ""
                if case .string(let n)? = op.attributes["cairn.name"]?.toSpanAttribute() { name = n }
                let replayed = op.attributes["cairn.replayed"]?.toSpanAttribute() == .bool(true)
                return "\(op.operationName) \(name)\(replayed ? " (replayed)" : "")"
            }
        }
        #expect(children(advances[0]) == ["cairn.step draft", "cairn.llm classify", "cairn.approval send-reply"], "\(children(advances[0]))")
        #expect(children(advances[1]) == ["cairn.step draft (replayed)", "cairn.llm classify (replayed)", "cairn.approval send-reply", "cairn.step send"], "\(children(advances[1]))")

        // Against the journal: each record is on exactly one span (`cairn.appended`): an
        // operation's, or the advance's for the engine's own (start, complete).
        let journal = try t.spool.journal(id).load()
        func appended(_ spans: [FinishedInMemorySpan]) -> [Int] {
            spans.flatMap { s -> [Int] in
                if case .int64Array(let seqs)? = s.attributes["cairn.appended"]?.toSpanAttribute() { return seqs.map(Int.init) }
                return []
            }
        }
        #expect(appended(spans).sorted() == journal.map(\.seq), "\(appended(spans)) vs \(journal.map { "\($0.seq) \($0.kind)" })")
        #expect(appended(advances).sorted() == journal.filter { $0.kind == .start || $0.kind == .complete }.map(\.seq))

        // The model call: GenAI semantic conventions, tokens as the journal recorded them.
        let llmRecord = try #require(journal.first { $0.kind == "llm" })
        let live = try #require(ops.first { $0.operationName == "cairn.llm" && $0.attributes["cairn.replayed"]?.toSpanAttribute() == .bool(false) })
        #expect(live.kind == .client)
        #expect(live.attributes["gen_ai.operation.name"]?.toSpanAttribute() == .string("chat"))
        #expect(live.attributes["gen_ai.request.model"]?.toSpanAttribute() == .string("oa:m"))
        #expect(live.attributes["gen_ai.usage.input_tokens"]?.toSpanAttribute() == .int64(llmRecord.data?["tokens"]?["input"]?.intValue ?? -1))
        #expect(live.attributes["gen_ai.usage.output_tokens"]?.toSpanAttribute() == .int64(8))
        // The gate: waiting in the first advance, decided in the second.
        let gates = ops.filter { $0.operationName == "cairn.approval" }
        #expect(gates.first?.attributes["cairn.waiting"]?.toSpanAttribute() == .bool(true))
        #expect(gates.last?.attributes["cairn.decision"]?.toSpanAttribute() == .string("approved"))
        _ = fake
    }

    @Test func aStepThatFailsMarksItsSpanWithTheErrorAndItsRetriesAsEvents() async throws {
        let tracer = W3CInMemoryTracer.shared
        let t = try TempSpool()
        let wf = AnyWorkflow(name: "flaky") { ctx, _ in
            let _: Int = try await ctx.step("work", retry: RetryPolicy(maxAttempts: 2, initialDelay: .milliseconds(1))) { _ in
                throw TraceTestFailure()
            }
            return 1
        }
        let id = try t.submit("flaky", input: 0)
        let out = try await t.engine([wf], clock: ManualClock(autoAdvance: true)).drive(id)
        guard case .failed = out else { Issue.record("not failed: \(out)"); return }
        let spans = tracer.spans(ofTrace: RunTracing.traceID(runID: id))
        let steps = spans.filter { $0.operationName == "cairn.step" }
        let last = try #require(steps.last)
        #expect(last.status?.code == .error)
        #expect(last.attributes["error.type"] != nil)
        #expect(steps.flatMap(\.events).filter { $0.name == "retry" }.count == 1, "\(steps.map(\.events))")
        #expect(spans.last { $0.operationName == "cairn.advance" }?.attributes["cairn.outcome"]?.toSpanAttribute() == .string("failed"))
    }
}

struct TraceTestFailure: Error {}
