import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// Issue 20's first defect, through the binary as a newcomer met it: `cairn approve …
/// --value v.json` with a value of the wrong shape failed the demo's run for good (every
/// `cairn retry` decoded the same recorded value). Now the value is refused like any bad
/// drop: an error file, the gate still open, `cairn why` says why, and a good value goes on.
@Suite struct DecisionValueTests {
    @Test func aMistypedDecisionValueLeavesTheGateOpenWithAnErrorFile() async throws {
        let t = try TempSpool()
        let r = try t.submit("demo-refund", input: ["order": "A-7", "amount": 12.5, "reason": "broken"] as JSONValue)
        let first = try Binary.cairn("advance", r, spool: t.spool)
        #expect(first.stdout.contains("waiting"), "\(first.stdout)\(first.stderr)")
        let request = try DurableFile.readJSON(t.spool.run(r).approvalsDirectory.appending("issue-refund.request.json"))
        #expect(request["value_expected"] == "Double", "\(request)")

        #expect(request["value_kinds"] == ["number"], "\(request)")
        // cairn approve refuses a value of the wrong kind itself: nothing is written.
        let bad = t.path.appending("bad.json").string
        try Data(#"{"amount": 3}"#.utf8).write(to: URL(fileURLWithPath: bad))
        let refused = try Binary.cairn("approve", r, "issue-refund", "--value", bad, spool: t.spool)
        #expect(refused.code == 1 && refused.stderr.contains("takes a value that is a number (Double), not an object"), "\(refused.stderr)")
        #expect(!DurableFile.exists(t.spool.run(r).approvalsDirectory.appending("issue-refund.approved")))
        // The same value dropped by hand (as a person with mv would) is refused by the run.
        try t.drop("approvals/issue-refund.approved", in: r, content: #"{"value": {"amount": 3}}"#)
        let second = try Binary.cairn("advance", r, spool: t.spool)
        #expect(second.stdout.contains("waiting"), "a wrong-shaped value must not end the run: \(second.stdout)\(second.stderr)")
        #expect(try t.state(r).status == .waiting)
        let approvals = t.spool.run(r).approvalsDirectory
        #expect(DurableFile.exists(Drops.errorFile(for: approvals.appending("issue-refund.approved"))), "an error file beside the refused drop")
        let why = try Binary.cairn("why", r, spool: t.spool)
        #expect(why.stdout.contains("does not decode as Double"), "cairn why says why the value was refused:\n\(why.stdout)")
        #expect(!why.stdout.contains("cairn retry"), "nothing failed, nothing to retry:\n\(why.stdout)")

        let good = t.path.appending("good.json").string
        try Data("3".utf8).write(to: URL(fileURLWithPath: good))
        let again = try Binary.cairn("approve", r, "issue-refund", "--value", good, spool: t.spool)
        #expect(again.code == 0, "the gate takes a new decision once the bad one is set aside: \(again.stderr)")
        _ = try Binary.cairn("advance", r, spool: t.spool)
        let state = try t.state(r)
        #expect(state.status == .completed, "\(state)")
        #expect(try DurableFile.readJSON(t.spool.run(r).resultFile)["amount"] == 3, "the approver's amount is used")
    }
}
