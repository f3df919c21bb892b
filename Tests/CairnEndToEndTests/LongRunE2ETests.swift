import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Long runs from outside: a script's journal compacted between executions, `cairn
/// continue-as-new` and `ctx.continueAsNew` (a SIGKILL between its record and the new run),
/// and `cairn show --tail` of a compacted run.
@Suite(.serialized) struct LongRunE2ETests {
    static let script = """
        #!/usr/bin/env bash
        set -euo pipefail
        input=$(cat)
        left=$(printf '%s' "$input" | jq -r .left)
        for i in 1 2 3 4 5 6; do
          cairn step work -- bash -c 'echo "work $CAIRN_IDEMPOTENCY_KEY" >> "$EFFECTS"; echo ok' > /dev/null
        done
        cairn approval go > /dev/null
        if [ "$left" -gt 0 ]; then
          printf '{"left": %s}' $((left - 1)) | cairn continue-as-new - > next-run
          # A helper after continue-as-new is refused: the run has ended.
          if cairn now 2> after.err; then echo "cairn now worked after continue-as-new" >> "$EFFECTS"; fi
          exit 0
        fi
        echo '"done"' | cairn result -
        """

    @Test func aScriptCompactsBetweenExecutionsAndContinuesAsNew() async throws {
        let t = try TempSpool()
        try t.setConfig("journal_segment_records", 4)
        let fx = t.path.appending("effects").string
        let p = t.spool.workflowsDirectory.appending("loop").string
        try Self.script.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
        let d = try await DaemonProcess(spool: t.spool, env: ["EFFECTS": fx])
        let first = try t.submit("loop", input: ["left": 1] as JSONValue)
        try await t.waitFor(first, .waiting, timeout: 20)
        // start + 6 steps + approval requested: moved into a segment once the script stopped.
        // (Compacted just after state.json says waiting: the daemon writes the state first.)
        try await waitUntil("the journal compacted", timeout: 10) { (try? Spool.list(t.spool.journal(first).directory)) == ["000001-000008.jsonl"] }
        try t.drop("approvals/go.approved", in: first)
        try await t.waitFor(first, .completed, timeout: 20)
        let next = try #require(try t.result(first)["continued_as"]?.stringValue)
        #expect(try t.spool.readRun(next).continuedFrom == first)
        #expect(try t.spool.readRun(next).input == ["left": 0])
        try await t.waitFor(next, .waiting, timeout: 20)
        try t.drop("approvals/go.approved", in: next)
        try await t.waitFor(next, .completed, timeout: 20)
        #expect(try t.result(next) == "done")
        await d.stop()
        let lines = ((try? String(contentsOfFile: fx, encoding: .utf8)) ?? "").split(separator: "\n")
        #expect(lines.count == 12, "each step ran once, in two runs: \(lines)")
        #expect(!lines.contains { $0.contains("worked after") })
        let refused = (try? String(contentsOfFile: t.spool.run(first).workDirectory.appending("after.err").string, encoding: .utf8)) ?? ""
        #expect(refused.contains("continued as run \(next)"), "\(refused)")
        // cairn show links them both ways.
        let a = try Binary.cairn("show", first, spool: t.spool)
        #expect(a.stdout.contains("continued  as \(next)"), "\(a.stdout)")
        let b = try Binary.cairn("show", next, spool: t.spool)
        #expect(b.stdout.contains("continues  \(first)"), "\(b.stdout)")
        #expect(try Repair.run(t.spool, repair: false).findings.filter { !$0.file.hasPrefix("tmp/") }.isEmpty)
    }

    @Test func killedBetweenTheContinueRecordAndTheNewRun() async throws {
        let t = try TempSpool()
        let fx = t.path.appending("effects").string
        let id = try t.submit("relay", input: ["left": 1, "effects": .string(fx)] as JSONValue)
        let killed = try Binary.run("cairn-fixtures", ["advance", id, "--spool", t.spool.root.string], env: ["CAIRN_CRASH_AT": "continue.after-record"])
        #expect(killed.signal == SIGKILL)
        let recorded = try #require(try t.spool.journal(id).load().last)
        #expect(recorded.kind == .continueAsNew)
        let next = try #require(recorded.data?["run"]?.stringValue)
        #expect(!t.spool.runExists(next))
        let again = try Binary.run("cairn-fixtures", ["advance", id, "--spool", t.spool.root.string])
        #expect(again.code == 0, "\(again.stderr)")
        #expect(try t.state(id).status == .completed)
        #expect(try t.result(id) == ["continued_as": .string(next)])
        #expect(try t.spool.readRun(next).continuedFrom == id)
        #expect(try Spool.list(t.spool.runsDirectory).count == 2)
        let last = try Binary.run("cairn-fixtures", ["advance", next, "--spool", t.spool.root.string])
        #expect(last.code == 0, "\(last.stderr)")
        #expect(try t.result(next) == "done")
        let work = ((try? String(contentsOfFile: fx, encoding: .utf8)) ?? "").split(separator: "\n").map { $0.split(separator: " ")[0] }
        #expect(work == ["work-1", "work-0"])
    }

    @Test func showTailReadsTheEndOfACompactedRun() async throws {
        let t = try TempSpool()
        try t.setConfig("journal_segment_records", 50)
        let id = try t.submit("long", input: ["steps": 180] as JSONValue)
        let r = try Binary.run("cairn-fixtures", ["advance", id, "--spool", t.spool.root.string])
        #expect(r.code == 0, "\(r.stderr)")
        let names = try Spool.list(t.spool.journal(id).directory).sorted()
        #expect(names.prefix(3) == ["000001-000050.jsonl", "000051-000100.jsonl", "000101-000150.jsonl"])
        #expect(names.count == 3 + 32)
        let tail = try Binary.run("cairn-fixtures", ["show", id, "--tail", "2", "--spool", t.spool.root.string])
        #expect(tail.code == 0, "\(tail.stderr)")
        #expect(tail.stdout.contains("positions 1–180 of 182 not shown"), "\(tail.stdout)")
        #expect(tail.stdout.contains("step s179") && tail.stdout.contains("complete"))
        #expect(!tail.stdout.contains("step s178 "))
        #expect(tail.stdout.contains("workflow   long (version"))
        let json = try Binary.run("cairn-fixtures", ["show", id, "--since", "99", "--json", "--spool", t.spool.root.string])
        let v = try JSONValue.parse(Data(json.stdout.utf8))
        #expect(v["journal_records"] == 182)
        #expect(v["journal"]?.arrayValue?.count == 84)
        #expect(v["journal"]?.arrayValue?.first?["seq"] == 99)
        let whole = try Binary.run("cairn-fixtures", ["show", id, "--json", "--spool", t.spool.root.string])
        #expect(try JSONValue.parse(Data(whole.stdout.utf8))["journal"]?.arrayValue?.count == 182)
    }
}
