import CairnSpool

/// Hooks for durable operations defined outside the engine (the agent layer's `llm`) and
/// for executors whose operations run in other processes (a script workflow's helpers).
extension WorkflowContext {
    /// The records from this context's cursor up to `cursor` (where a script's helpers
    /// stopped) were replayed by this execution in other processes: the engine counts them
    /// as it counts its own replays (`tokens.saved` for recorded LLM calls). Call before
    /// `reloadJournal`.
    public func noteReplayed(upTo cursor: Int) {
        state.withLock { s in
            let end = min(cursor, s.entries.count)
            guard s.cursor < end else { return }
            s.replayed.append(contentsOf: s.entries[s.cursor..<end].filter { $0.data?["tokens"] != nil })
        }
    }
}
