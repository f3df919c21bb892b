import CairnSpool

extension WorkflowContext {
    /// For executors whose operations ran in other processes (a script workflow's helpers):
    /// the records from this context's cursor up to `cursor` (where the helpers stopped)
    /// were replayed by this execution, so the engine counts them as it counts its own
    /// replays (`tokens.saved` for recorded LLM calls). Call before `reloadJournal`.
    public func noteReplayed(upTo cursor: Int) {
        state.withLock { s in
            let end = min(cursor, s.entries.count)
            guard s.cursor < end else { return }
            s.replayed.append(contentsOf: s.entries[s.cursor..<end])
        }
    }
}
