import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Issue 15, "Traces": the real binary exports each run's trace with OTLP/HTTP (protobuf) to
/// a receiver on loopback (Fixtures/otlp_receiver.py); the span tree is checked against the run's journal, across two
/// daemon processes.
@Suite struct TraceExportTests {
    /// One exported span, from OTLP/JSON.
    struct ExportedSpan {
        var traceID: String
        var spanID: String
        var parentSpanID: String
        var name: String
        var attributes: [String: JSONValue]
        var status: Int

        /// An id as the receiver wrote it (hex, as OTLP/JSON has it), checked for its length.
        static func hex(_ s: String, bytes: Int) -> String {
            s.count == bytes * 2 && s.allSatisfy(\.isHexDigit) ? s : "malformed:\(s)"
        }

        /// An attribute's value: string, bool, int (a string in JSON) or an int array.
        static func value(_ v: JSONValue) -> JSONValue {
            if let s = v["stringValue"] { return s }
            if let b = v["boolValue"] { return b }
            if let i = v["intValue"] { return i.intValue.map { .int($0) } ?? i.stringValue.flatMap { Int64($0) }.map { .int($0) } ?? i }
            if let a = v["arrayValue"]?["values"]?.arrayValue { return .array(a.map(value)) }
            return v
        }
    }

    static func spans(_ file: String) -> [ExportedSpan] {
        var out: [ExportedSpan] = []
        for line in ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n") {
            guard let body = try? JSONValue.parse(String(line)) else { continue }
            for rs in body["resourceSpans"]?.arrayValue ?? [] {
                for ss in rs["scopeSpans"]?.arrayValue ?? [] {
                    for s in ss["spans"]?.arrayValue ?? [] {
                        var attributes: [String: JSONValue] = [:]
                        for a in s["attributes"]?.arrayValue ?? [] {
                            if let k = a["key"]?.stringValue, let v = a["value"] { attributes[k] = ExportedSpan.value(v) }
                        }
                        out.append(ExportedSpan(
                            traceID: ExportedSpan.hex(s["traceId"]?.stringValue ?? "", bytes: 16),
                            spanID: ExportedSpan.hex(s["spanId"]?.stringValue ?? "", bytes: 8),
                            parentSpanID: ExportedSpan.hex(s["parentSpanId"]?.stringValue ?? "", bytes: 8),
                            name: s["name"]?.stringValue ?? "",
                            attributes: attributes,
                            status: Int(s["status"]?["code"]?.intValue ?? 0)))
                    }
                }
            }
        }
        return out
    }

    @Test func theDaemonExportsARunAsOneTraceAcrossTwoProcessesMatchingItsJournal() async throws {
        let t = try TempSpool()
        let dir = t.path.string
        let receiver = try await FixtureServer("otlp_receiver.py", dir: dir, log: dir + "/traces.jsonl")
        defer { receiver.stop() }
        let port = receiver.port
        let args = ["--otlp-endpoint", "http://127.0.0.1:\(port)"]

        // The first daemon takes the run to its approval gate and stops (SIGTERM: the spans
        // batched so far are sent on the way out).
        let first = try await DaemonProcess(spool: t.spool, args: args, name: "first")
        _ = try t.submit("demo-refund", input: ["order": "O-7", "amount": 12.5, "reason": "late"] as JSONValue, id: "traced-1")
        try await t.waitFor("traced-1", .waiting)
        #expect(await first.stop() == 0, "\(first.log.suffix(1500))")
        #expect(first.log.contains("exporting traces"), "\(first.log.suffix(1500))")
        // A second process decides and finishes it.
        _ = try Binary.cairn("approve", "traced-1", "issue-refund", spool: t.spool)
        let second = try await DaemonProcess(spool: t.spool, args: args, name: "second")
        try await t.waitFor("traced-1", .completed)
        #expect(await second.stop() == 0, "\(second.log.suffix(1500))")

        // The trace id and root are derived from the run id (`cairn show --json` prints it).
        let shown = try Binary.cairn("show", "traced-1", "--json", spool: t.spool)
        let traceID = try #require(try JSONValue.parse(shown.stdout)["trace_id"]?.stringValue, "\(shown.stdout.prefix(500))")
        let all = Self.spans(dir + "/traces.jsonl")
        let spans = all.filter { $0.traceID == traceID }
        #expect(!spans.isEmpty && spans.count == all.count, "only this run's trace: \(all.map { ($0.name, $0.traceID) })")
        let advances = spans.filter { $0.name == "cairn.advance" }
        #expect(advances.count == 2, "one per execution: \(spans.map(\.name))")
        #expect(Set(advances.map(\.parentSpanID)).count == 1 && advances.allSatisfy { $0.attributes["cairn.run_id"] == "traced-1" })
        #expect(advances.map { $0.attributes["cairn.outcome"] } == ["waiting: approval", "completed"])

        // Each operation under an advance; what each advance did, and replayed.
        let ids = Set(advances.map(\.spanID))
        let ops = spans.filter { $0.name != "cairn.advance" }
        #expect(ops.allSatisfy { ids.contains($0.parentSpanID) }, "\(ops.map { ($0.name, $0.parentSpanID) })")
        func story(_ a: ExportedSpan) -> [String] {
            ops.filter { $0.parentSpanID == a.spanID }.map { "\($0.name) \($0.attributes["cairn.name"]?.stringValue ?? "")\($0.attributes["cairn.replayed"] == true ? " (replayed)" : "")" }
        }
        let byOutcome = Dictionary(uniqueKeysWithValues: advances.map { ($0.attributes["cairn.outcome"]?.stringValue ?? "", $0) })
        #expect(story(byOutcome["waiting: approval"]!).sorted() == ["cairn.approval issue-refund", "cairn.step draft-note", "cairn.step look-up-order"], "\(story(byOutcome["waiting: approval"]!))")
        #expect(story(byOutcome["completed"]!).sorted() == ["cairn.approval issue-refund", "cairn.step draft-note (replayed)", "cairn.step issue-refund", "cairn.step look-up-order (replayed)"], "\(story(byOutcome["completed"]!))")

        // Against the journal: every record is on exactly one span (the engine's own, start
        // and complete, on the advance's).
        let journal = try t.spool.journal("traced-1").load()
        let appended = spans.flatMap { $0.attributes["cairn.appended"]?.arrayValue ?? [] }.compactMap(\.intValue).sorted()
        #expect(appended == journal.map { Int64($0.seq) }, "\(appended) vs \(journal.map { "\($0.seq) \($0.kind)" })")
        let gate = ops.filter { $0.name == "cairn.approval" }
        #expect(gate.contains { $0.attributes["cairn.waiting"] == true } && gate.contains { $0.attributes["cairn.decision"] == "approved" })
    }

    /// A script workflow: its helpers' operations (served by the daemon) are spans under the
    /// advance, and the script gets the advance's context as TRACEPARENT for what it runs.
    @Test func aScriptsHelpersAreSpansUnderItsAdvanceAndTheScriptGetsTraceparent() async throws {
        let t = try TempSpool()
        let dir = t.path.string
        let receiver = try await FixtureServer("otlp_receiver.py", dir: dir, log: dir + "/traces.jsonl")
        defer { receiver.stop() }
        let port = receiver.port
        let script = t.spool.workflowsDirectory.appending("fetch").string
        try """
            #!/bin/sh
            set -e
            a=$(cairn step fetch -- echo fetched)
            cairn now >/dev/null
            b=$(cairn step parse -- sh -c 'echo "$TRACEPARENT"')
            printf '{"a": "%s", "traceparent": "%s"}' "$a" "$b" | cairn result -
            """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let d = try await DaemonProcess(spool: t.spool, args: ["--otlp-endpoint", "http://127.0.0.1:\(port)/v1/traces"])
        _ = try t.submit("fetch", input: [:] as JSONValue, id: "script-1")
        try await t.waitFor("script-1", .completed)
        #expect(await d.stop() == 0, "\(d.log.suffix(1500))")

        let spans = Self.spans(dir + "/traces.jsonl")
        let advance = try #require(spans.first { $0.name == "cairn.advance" && $0.attributes["cairn.run_id"] == "script-1" }, "\(spans.map(\.name))")
        let steps = spans.filter { $0.parentSpanID == advance.spanID }
        #expect(steps.map { "\($0.name) \($0.attributes["cairn.name"]?.stringValue ?? "")" } == ["cairn.step fetch", "cairn.now ", "cairn.step parse"], "\(spans.map { ($0.name, $0.parentSpanID) })")
        // The script saw the advance's span as its parent.
        let result = try DurableFile.readJSON(t.spool.run("script-1").resultFile)
        let tp = result["traceparent"]?.stringValue ?? ""
        #expect(tp.hasPrefix("00-\(advance.traceID)-\(advance.spanID)-"), "\(tp) vs \(advance.traceID) \(advance.spanID)")
    }

    /// What --otlp-endpoint refuses: not http(s), no host, a port out of range, credentials
    /// in the URL (they would be logged, and the exporter does not send them).
    @Test func badCollectorURLsAreRefusedBeforeAnythingStarts() async throws {
        let t = try TempSpool()
        for url in ["ftp://127.0.0.1:4318", "http://", "127.0.0.1:4318", "http://127.0.0.1:99999", "http://user:secret@127.0.0.1:4318"] {
            let r = try Binary.run("cairn", ["daemon", "--spool", t.spool.root.string, "--otlp-endpoint", url])
            #expect(r.code == 2 && r.stderr.contains("--otlp-endpoint"), "\(url): \(r.code) \(r.stderr)")
            #expect(!r.stderr.contains("secret"), "a password is never echoed: \(r.stderr)")
        }
        // A key in the query is accepted (some collectors take one) but never logged; the
        // scheme is case-insensitive.
        let d = try await DaemonProcess(spool: t.spool, args: ["--otlp-endpoint", "HTTP://127.0.0.1:9/v1/traces?api_key=SECRET"])
        #expect(await d.stop() == 0)
        #expect(d.log.contains("exporting traces") && !d.log.contains("SECRET"), "\(d.log.prefix(1200))")
    }
}
