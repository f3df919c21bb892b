import Foundation

/// Derives `state.json` from run.json + the journal. The engine uses it after every
/// execution; repair uses it to rebuild state without running any workflow code, so what
/// it cannot know from records alone (what a runnable run will wait on next) it leaves as
/// `queued`: the daemon runs the workflow and finds out.
public enum StateDerivation {
    /// The state that `record` and its journal `entries` imply at `now`.
    public static func derive(record: RunRecord, entries: [JournalEntry], now: Date) -> RunState {
        var state = RunState(run: record.id, workflow: record.workflow, status: .queued, updatedAt: now)
        state.counters.journalEntries = entries.count
        // Completed units of work: operation outcomes without an error, and finished children
        // (a `finished` phase), told by the records' shape.
        // One pass, no copies: a long run has 100,000 records.
        var input: Int64 = 0, output: Int64 = 0, rejected: Int64 = 0
        // An LLM call still under way (its rejected answers paid for, in its last `llm-retry`
        // record's state) until its `llm` record, which counts them itself.
        var underWay: [String: (Int64, Int64)] = [:]
        for e in entries {
            if e.kind == "llm-retry", let r = e.value?["state"]?["tokens_rejected"] {
                underWay[e.name ?? ""] = (r["input"]?.intValue ?? 0, r["output"]?.intValue ?? 0)
            } else if e.kind == "llm" {
                underWay[e.name ?? ""] = nil
            }
            if e.isOperationOutcome && e.error == nil || e.phase == .finished { state.counters.steps += 1 }
            if e.kind == .retry && e.name != "run" { state.counters.retries += 1 }
            if let t = e.data?["tokens"] {
                input += t["input"]?.intValue ?? 0
                output += t["output"]?.intValue ?? 0
                if let r = e.data?["tokens_rejected"] { rejected += (r["input"]?.intValue ?? 0) + (r["output"]?.intValue ?? 0) }
            }
        }
        for (i, o) in underWay.values {
            input += i
            output += o
            rejected += i + o
        }
        if input + output > 0 {
            var t: [String: JSONValue] = ["input": .int(input), "output": .int(output), "total": .int(input + output)]
            // Of the total, what answers that failed validation cost (their repairs' prompts included).
            if rejected > 0 { t["rejected"] = .int(rejected) }
            state.tokens = .object(t)
        }
        guard let last = entries.last else { return state }
        if let status = last.terminalStatus {
            state.status = status
            state.error = last.error
            return state
        }
        // Waits that the records alone tell.
        switch (last.kind, last.phase) {
        case ("approval", "requested"):
            state.status = .waiting
            state.waitingFor = .approval(gate: last.name ?? "", until: last.until)
        case ("event", "requested"):
            state.status = .waiting
            state.waitingFor = .event(name: last.name ?? "", until: last.until)
        case ("sleep", _) where (last.until ?? now) > now:
            state.status = .waiting
            state.waitingFor = .timer(name: last.name, until: last.until!)
        case ("retry", _) where last.name != "run" && (last.until ?? now) > now:
            state.status = .waiting
            state.waitingFor = .retry(step: last.name ?? "", attempt: nil, until: last.until!)
        default:
            state.status = .queued
        }
        return state
    }
}
