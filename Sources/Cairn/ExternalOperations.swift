import CairnSpool

/// Hooks for durable operations defined outside the engine (the agent layer's `llm`) and
/// for executors whose operations run in other processes (a script workflow's helpers).
extension WorkflowContext {
    /// The kind and name of the next record while replaying; nil when live. For operations
    /// that write records of their own before their result (the agent layer's `llm` writes
    /// `llm-retry` and `llm-budget` records) and replay them with `recorded`. Looking does
    /// not consume anything and is never a nondeterminism.
    public var nextRecord: (kind: String, name: String?)? {
        peek().map { ($0.kind, $0.name) }
    }

    /// The records from this context's cursor up to `cursor` (where a script's helpers
    /// stopped) were replayed by this execution in other processes: the engine counts them
    /// as it counts its own replays (`tokens.saved` for recorded LLM calls). Call before
    /// `reloadJournal`.
    public func noteReplayed(upTo cursor: Int) {
        state.withLock { s in
            let end = min(cursor, s.entries.count)
            guard s.cursor < end else { return }
            s.replayed.append(contentsOf: s.entries[s.cursor..<end])
        }
    }
}
