import Foundation

/// Derives `state.json` from run.json + the journal. The engine uses it after every
/// execution; repair uses it to rebuild state without running any workflow code, so what
/// it cannot know from records alone (what a runnable run will wait on next) it leaves as
/// `queued`: the daemon runs the workflow and finds out.
public enum StateDerivation {
    public static func derive(record: RunRecord, entries: [JournalEntry], now: Date) -> RunState {
        var state = RunState(run: record.id, workflow: record.workflow, status: .queued, updatedAt: now)
        state.counters.journalEntries = entries.count
        state.counters.steps = entries.filter { ["step", "llm"].contains($0.kind) && $0.error == nil || ($0.kind == "child" && $0.phase == "finished") }.count
        state.counters.retries = entries.filter { $0.kind == "retry" && $0.name != "run" }.count
        var input: Int64 = 0, output: Int64 = 0
        for e in entries {
            if let t = e.data?["tokens"] {
                input += t["input"]?.intValue ?? 0
                output += t["output"]?.intValue ?? 0
            }
        }
        if input + output > 0 { state.tokens = ["input": .int(input), "output": .int(output), "total": .int(input + output)] }
        guard let last = entries.last else { return state }
        if let status = last.terminalStatus {
            state.status = status
            state.error = last.error
            return state
        }
        // Waits that the records alone tell.
        switch (last.kind, last.phase) {
        case ("approval", "requested"):
            var w: [String: JSONValue] = ["kind": "approval", "gate": .string(last.name ?? ""), "drop": .string("approvals/\(last.name ?? "").approved")]
            if let u = last.until { w["until"] = .string(Timestamp.format(u)) }
            state.status = .waiting
            state.waitingFor = .object(w)
        case ("event", "requested"):
            state.status = .waiting
            state.waitingFor = ["kind": "event", "name": .string(last.name ?? "")]
        case ("sleep", _) where (last.until ?? now) > now:
            state.status = .waiting
            state.waitingFor = ["kind": "timer", "until": .string(Timestamp.format(last.until!))]
        case ("retry", _) where last.name != "run" && (last.until ?? now) > now:
            state.status = .waiting
            state.waitingFor = ["kind": "retry", "step": .string(last.name ?? ""), "until": .string(Timestamp.format(last.until!))]
        default:
            state.status = .queued
        }
        return state
    }
}
