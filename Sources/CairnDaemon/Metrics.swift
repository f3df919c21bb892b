import CairnSpool
import Foundation
import Metrics
import Synchronization

/// The daemon's metrics, through swift-metrics (whatever backend the process bootstrapped:
/// `cairn daemon --metrics-file` bootstraps swift-prometheus; without one they cost nothing).
///
/// What the runs did is counted from their journals, the truth: after each advance the
/// records a run gained since the last look are read and counted — so steps recorded by a
/// script's helpers (another process) count as well as those of Swift workflows, and a
/// count can be checked against the journal. Counters start at zero with each daemon
/// process (as Prometheus expects of counters); records older than the daemon's start are
/// not counted.
public final class DaemonMetrics: Sendable {
    private struct Cursor {
        var workflow: String? = nil
        var seq = 0
        var saved: Int64 = 0
        var requested: [String: Date] = [:]
        /// A record with `data.tokens` was seen (an LLM call): only then can replay save tokens.
        var carriesTokens = false
    }

    private let cursors = Mutex<[String: Cursor]>([:])
    private let since: Date
    /// Called after anything changed (the metrics file's writer debounces).
    let changed: @Sendable () -> Void

    public init(since: Date = Date(), changed: @escaping @Sendable () -> Void = {}) {
        self.since = since
        self.changed = changed
    }

    // MARK: the daemon's own

    func wakeup() { Counter(label: "cairn_daemon_wakeups_total").increment(); changed() }
    func rescan(_ reason: String) { Counter(label: "cairn_daemon_rescans_total", dimensions: [("reason", reason)]).increment(); changed() }
    func overflow() { Counter(label: "cairn_daemon_inotify_overflows_total").increment(); changed() }
    func error(_ kind: String) { Self.countError(kind); changed() }
    /// One more of `cairn_daemon_errors_total{kind}` (also for what the CLI's side of the
    /// daemon writes: the metrics file, the report).
    public static func countError(_ kind: String) { Counter(label: "cairn_daemon_errors_total", dimensions: [("kind", kind)]).increment() }

    // MARK: what the runs did

    /// Counts the records `run` gained since the last look.
    func observe(_ spool: Spool, run: String) {
        let journal = spool.journal(run)
        guard let last = try? journal.lastPosition() else { return }
        var cursor = cursors.withLock { $0[run] } ?? Cursor()
        guard last > cursor.seq, let records = try? journal.records(in: (cursor.seq + 1)...last) else { return }
        // run.json once per run (it never changes), not at every advance.
        let workflow = cursor.workflow ?? (try? spool.readRun(run))?.workflow ?? "?"
        cursor.workflow = workflow
        let w = [("workflow", workflow)]
        var terminal = false
        // A run seen for the first time (by this process, or again after it ended: its cursor
        // goes then) that ended and was retried (`cairn retry`: records after a terminal one):
        // what came up to its end was counted when it ended. Reading it again counted it twice.
        let retriedAt = cursor.seq == 0 ? records.dropLast().last(where: { $0.terminalStatus != nil })?.seq ?? 0 : 0
        for e in records {
            cursor.seq = max(cursor.seq, e.seq)
            if e.data?["tokens"] != nil { cursor.carriesTokens = true }
            if e.seq <= retriedAt { continue }
            if e.kind == .approval, e.decision == nil, let gate = e.name { cursor.requested[gate] = e.at }
            guard e.at >= since else { continue }
            switch e.kind {
            case .step:
                Counter(label: "cairn_steps_total", dimensions: w).increment()
                if let ms = e.durationMs { Metrics.Timer(label: "cairn_step_duration_seconds", dimensions: w).recordMilliseconds(ms) }
            case "llm":
                Counter(label: "cairn_llm_calls_total", dimensions: w).increment()
                if let t = e.data?["tokens"] {
                    Counter(label: "cairn_llm_tokens_total", dimensions: w + [("direction", "input")]).increment(by: Int64(t["input"]?.intValue ?? 0))
                    Counter(label: "cairn_llm_tokens_total", dimensions: w + [("direction", "output")]).increment(by: Int64(t["output"]?.intValue ?? 0))
                }
            case .approval:
                if let d = e.decision, let gate = e.name {
                    Counter(label: "cairn_approvals_total", dimensions: w + [("decision", d.rawValue)]).increment()
                    if let asked = cursor.requested.removeValue(forKey: gate) {
                        Metrics.Timer(label: "cairn_approval_wait_seconds", dimensions: w).recordMilliseconds(Int64(max(0, e.at.timeIntervalSince(asked) * 1000)))
                    }
                }
            case .start:
                Counter(label: "cairn_runs_started_total", dimensions: w).increment()
            default:
                break
            }
            if let status = e.terminalStatus {
                Counter(label: "cairn_runs_finished_total", dimensions: w + [("status", status.rawValue)]).increment()
                terminal = true
            }
        }
        // Tokens replay saved: what state.json says beyond what was seen — read only for a run
        // with records that carry tokens (nothing else can be replayed instead of paid for).
        if cursor.carriesTokens, let saved = (try? spool.readState(run))??.tokens?["saved"]?.intValue, saved > cursor.saved {
            Counter(label: "cairn_llm_tokens_saved_total", dimensions: w).increment(by: saved - cursor.saved)
            cursor.saved = saved
        }
        let final = cursor
        cursors.withLock { if terminal { $0[run] = nil } else { $0[run] = final } }
        changed()
    }

    /// Runs by status, from the status index (one directory listing per status).
    public static func recordRunsByStatus(_ spool: Spool) {
        for s in RunStatus.allCases {
            Gauge(label: "cairn_runs", dimensions: [("status", s.rawValue)]).record((try? spool.indexedRuns(s).count) ?? 0)
        }
    }
}
