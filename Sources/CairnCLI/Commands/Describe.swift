import CairnSpool
import Foundation

/// Human sentences about waits, records and errors, shared by show, why and ls.
enum Describe {
    static func waitingShort(_ w: WaitingFor) -> String {
        let kind = w.kind.rawValue
        switch kind {
        case "approval": return "approval:\(w["gate"]?.stringValue ?? "?")"
        case "event": return "event:\(w["name"]?.stringValue ?? "?")"
        case "timer", "retry": return "\(kind):\(w["until"]?.stringValue ?? "?")"
        case "uncertain": return "uncertain:\(w["step"]?.stringValue ?? "?")"
        case "child": return "child:\(w["run"]?.stringValue ?? "?")"
        case "answer": return "answer:\(w["step"]?.stringValue ?? "?")"
        default: return kind
        }
    }

    /// Why decisions on `gate` are not counted: a broken `approvers` rule in cairn.json, or
    /// a drop that was refused (its error file).
    static func refusals(gate: String, run: String, spool: Spool) -> [String] {
        var lines: [String] = []
        if let policy = try? spool.config().approvalPolicy(gate: gate) {
            if let problem = policy.invalid {
                lines.append("  REFUSING every decision on this gate: \(problem)")
            } else {
                lines.append("  who may decide: users \(policy.users.joined(separator: ", ")) groups \(policy.groups.joined(separator: ", ")) (approvers in cairn.json)")
            }
        }
        for suffix in ["approved", "rejected"] {
            let err = spool.run(run).approvalsDirectory.appending("\(gate).\(suffix).error.json")
            // Only the runtime's own error files (anyone in the group could plant one).
            guard let owner = spool.serviceUID, DurableFile.exists(err), Spool.runtimeFileProblem(err.string, owner: owner) == nil,
                  let e = try? DurableFile.readJSON(err), let text = e["error"]?.stringValue else { continue }
            if DurableFile.exists(spool.run(run).approvalsDirectory.appending("\(gate).\(suffix)")) || e["moved_to"] != nil {
                lines.append("  refused drop: \(Output.printable(text))" + (e["moved_to"]?.stringValue.map { " (set aside in \($0))" } ?? ""))
            }
        }
        return lines
    }

    /// `s` quoted for a POSIX shell when it needs it (a path with spaces or quotes), so that
    /// a printed command can be pasted as it is.
    static func shellQuoted(_ s: String) -> String {
        let plain = s.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "/._-+:,@=%".unicodeScalars.contains($0) }
        return plain && !s.isEmpty ? s : "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// What the run waits on, and the exact command or file drop that unblocks it. Every
    /// command names the spool (`--spool`), so that it works pasted anywhere.
    static func unblock(_ w: WaitingFor, run: String, spool: Spool) -> [String] {
        let dir = shellQuoted(spool.run(run).directory.string)
        let sp = " --spool \(shellQuoted(spool.root.string))"
        let kind = w.kind.rawValue
        switch kind {
        case "approval":
            let gate = w["gate"]?.stringValue ?? "?"
            var lines = ["waiting for approval '\(gate)'" + (w["until"]?.stringValue.map { " (until \($0))" } ?? "")]
            let requestPath = spool.run(run).approvalsDirectory.appending("\(gate).request.json")
            if let owner = spool.serviceUID, let problem = Spool.runtimeFileProblem(requestPath.string, owner: owner) {
                lines.append("  request: NOT SHOWN: \(requestPath.string) \(problem)")
            } else if let req = try? DurableFile.readJSON(requestPath), let summary = req["summary"]?.stringValue {
                lines.append("  request: \(Output.printable(summary))")
                // An agent's tool call: what it would run with (an approval's value replaces it).
                if let tool = req["details"]?["tool"]?.stringValue, let args = req["details"]?["arguments"] {
                    lines.append("  proposed call: \(Output.printable(tool)) \(Output.printable(args.compactText()))")
                }
            }
            lines += refusals(gate: gate, run: run, spool: spool)
            for suffix in ["approved", "rejected"] where DurableFile.exists(spool.run(run).approvalsDirectory.appending("\(gate).\(suffix)"))
                && !DurableFile.exists(spool.run(run).approvalsDirectory.appending("\(gate).\(suffix).error.json")) {
                lines.append("  a decision is already there (approvals/\(gate).\(suffix)) and not yet recorded: is a daemon serving \(spool.root.string)? (cairn daemon --spool \(spool.root.string))")
            }
            let pending = ["approved", "rejected"].contains { DurableFile.exists(spool.run(run).approvalsDirectory.appending("\(gate).\($0)")) }
            if pending { return lines }  // a decision is there: the commands below would only fail
            lines.append("  approve: touch \(dir)/approvals/\(gate).approved")
            lines.append("       or: cairn approve \(run) \(gate)\(sp)")
            lines.append("   reject: touch \(dir)/approvals/\(gate).rejected")
            lines.append("       or: cairn reject \(run) \(gate)\(sp)")
            let request = try? DurableFile.readJSON(requestPath)
            let expected = request?["value_expected"]?.stringValue
            // In JSON's words first (what a person writes in the file), the workflow's type after.
            let kinds = (request?["value_kinds"]?.arrayValue ?? []).compactMap(\.stringValue).filter { $0 != "null" }
            let names = ["number": "a number", "string": "a string", "object": "a JSON object", "array": "a JSON array", "bool": "true or false", "boolean": "true or false"]
            let json = kinds.isEmpty ? nil : kinds.map { names[$0] ?? $0 }.joined(separator: " or ")
            let what = switch (json, expected) {
            case let (j?, e?): "\(j) (\(Output.printable(e)))"
            case let (j?, nil): j
            case let (nil, e?): Output.printable(e)
            default: ""
            }
            lines.append("  (approve takes --comment C and --value FILE" + (what.isEmpty ? "" : ": the value must be \(what)") + "; reject takes --reason R)")
            return lines
        case "event":
            let name = w["name"]?.stringValue ?? "?"
            return ["waiting for event '\(name)'" + (w["until"]?.stringValue.map { " (until \($0))" } ?? "")]
                + (w.refused.map { ["  refused: \(Output.printable($0))"] } ?? []) + [
                    "  drop: write the JSON elsewhere, then mv it to \(dir)/events/\(name).json",
                    "    or: cairn signal \(run) \(name)\(sp)   (with --data FILE for the event's JSON)"]
        case "timer":
            return ["sleeping until \(w["until"]?.stringValue ?? "?"); a running daemon wakes it then (nothing to do)"]
        case "budget":
            let gate = w["gate"]?.stringValue ?? "?"
            return ["LLM call '\(w["step"]?.stringValue ?? "?")' would exceed the run's token budget: \(w["spent"]?.intValue.map(String.init) ?? "?") of \(w["budget"]?.intValue.map(String.init) ?? "?") tokens spent, the call needs about \(w["estimate"]?.intValue.map(String.init) ?? "?")",
                    "  raise it: echo '{\"tokens\": N}' > v.json && cairn approve \(run) \(gate)\(sp) --value v.json",
                    "        or: touch \(dir)/approvals/\(gate).approved   (adds the configured budget again)",
                    "    reject: cairn reject \(run) \(gate)\(sp) [--reason R]   (the call fails)"]
        case "retry" where w["operation"] == "llm":
            return ["LLM call '\(w["step"]?.stringValue ?? "?")' waits before attempt \(w["attempt"]?.intValue.map(String.init) ?? "?") (\(w["model"]?.stringValue ?? "?")), due at \(w["until"]?.stringValue ?? "?"); a running daemon resumes it then",
                    "  last error: \(Output.printable(w["reason"]?.stringValue ?? "?"))"]
        case "retry":
            return ["step '\(w["step"]?.stringValue ?? "?")' failed; the next attempt is due at \(w["until"]?.stringValue ?? "?") (cairn show \(run)\(sp) has the error)"]
        case "uncertain":
            let gate = w["gate"]?.stringValue ?? "?"
            return ["at-most-once step '\(w["step"]?.stringValue ?? "?")' may or may not have run before a crash (idempotency key \(w["idempotency_key"]?.stringValue ?? "?"))"]
                + refusals(gate: gate, run: run, spool: spool) + [
                    "  check its effect, then one of:",
                    "  run it again:    cairn approve \(run) \(gate)\(sp)",
                    "  record it done:  echo '{\"action\": \"done\", \"value\": null}' > v.json && cairn approve \(run) \(gate)\(sp) --value v.json",
                    "                   (null: the step's result as JSON; a script step's is {\"stdout\": \"…\", \"exit_code\": 0})",
                    "  fail the step:   cairn reject \(run) \(gate)\(sp) --reason R"]
        case "child":
            let child = w["run"]?.stringValue ?? "?"
            let status = (try? spool.readState(child))??.status.rawValue ?? "unknown"
            return ["waiting for child run \(child) (\(status)); cairn why \(child)\(sp)"]
        case "pause":
            return ["paused", "  resume: rm \(dir)/pause   or: cairn resume \(run)\(sp)"]
        case "answer":
            // Every model's answer to an LLM call was rejected (issue 16): a person decides.
            let gate = w["gate"]?.stringValue ?? "?"
            var lines = ["every model's answer to LLM call '\(w["step"]?.stringValue ?? "?")' was rejected; a person decides"]
            if let req = try? DurableFile.readJSON(spool.run(run).approvalsDirectory.appending("\(gate).request.json")) {
                lines.append("  last answer: \(Output.printable(String((req["answer"]?.stringValue ?? "?").prefix(300))))")
                for r in req["rejected"]?.arrayValue ?? [] { lines.append("  rejected (\(r["model"]?.stringValue ?? "?")): \(Output.printable(r["reason"]?.stringValue ?? "?"))") }
            }
            if let why = w.refused { lines.append("  refused drop: \(Output.printable(why))") }
            lines += [
                "  accept it:  cairn approve \(run) \(gate)\(sp)",
                "  answer:     jq -n --arg v \"TEXT\" '$v' > v.json && cairn approve \(run) \(gate)\(sp) --value v.json",
                "  fail it:    cairn reject \(run) \(gate)\(sp) --reason R"]
            return lines
        default:
            return ["waiting: \(w.json.compactText())"]
        }
    }

    /// One line about a journal record for the timeline.
    static func record(_ e: JournalEntry) -> String {
        var parts: [String] = []
        switch e.kind {
        case "start":
            parts.append(ShowCommand.version(e.data?["version"]?.stringValue ?? "?"))
        case "step", "llm", "compensate":
            if let err = e.error {
                parts.append(Output.red("failed: \(Output.printable(err.type)): \(Output.printable(err.message))"))
            } else if let code = e.value?["exit_code"]?.intValue, code != 0 {
                // A `cairn step` whose command exited non-zero (recorded as a value, replayed).
                parts.append(Output.red("exit \(code)"))
            } else {
                parts.append(Output.green("ok"))
            }
            if let a = e.attempt { parts.append("attempt \(a)") }
            if let d = e.durationMs { parts.append(Output.duration(ms: d)) }
            if let g = e.group { parts.append("group \(g)") }
            if e.kind == "llm", let m = e.data?["model"]?.stringValue { parts.append(m) }
            if e.kind == "llm", let n = e.data?["repairs"]?.intValue, n > 0 {
                // Answers its validator rejected, sent back with the reason (issue 16).
                let rejected = e.data?["attempts"]?.arrayValue?.filter { $0["status"] == "invalid_answer" }.count ?? 0
                parts.append(Output.yellow("repaired: \(rejected) answer\(rejected == 1 ? "" : "s") rejected, \(n) repair\(n == 1 ? "" : "s")"))
            }
            if e.kind == "llm", e.data?["accepted_invalid"] == true { parts.append(Output.yellow("accepted although rejected")) }
            if e.kind == "llm", let by = e.data?["decided_by"]?.stringValue {
                parts.append(Output.yellow(e.data?["edited_by_person"] == true ? "answer written by \(Output.printable(by))" : e.error == nil ? "accepted by \(Output.printable(by)) although rejected" : "rejected by \(Output.printable(by)) too"))
            }
            if let dec = e.decision { parts.append("decided \(dec) by \(e.decidedBy?.user ?? "?")") }
        case "retry":
            if e.name == "run", e.data?["execution_retry"] == true {
                parts.append(Output.yellow("execution \(e.attempt ?? 0) failed: \(Output.printable(e.error?.message ?? "?"))"))
                if let u = e.until { parts.append("runs again from the top at \(Timestamp.format(u))") }
            } else if e.name == "run" {
                parts.append("run retried from position \(e.resumeFrom ?? 0)")
            } else {
                parts.append(Output.yellow("attempt \(e.attempt ?? 0) failed: \(Output.printable(e.error?.message ?? "?"))"))
                if let u = e.until { parts.append("next at \(Timestamp.format(u))") }
            }
        case "intent":
            parts.append("about to run (attempt \(e.attempt ?? 1), at most once)")
        case "uncertain":
            parts.append("\(e.decision ?? "?") by \(e.decidedBy?.user ?? "?")")
        case "sleep":
            parts.append("until \(e.until.map(Timestamp.format) ?? "?")")
        case "approval", "event":
            if e.phase == "requested" {
                parts.append("requested" + (e.until.map { ", deadline \(Timestamp.format($0))" } ?? ""))
            } else {
                parts.append((e.decision?.rawValue ?? "decided") + (e.decidedBy.map { " by \($0.user ?? String($0.uid))" } ?? ""))
                if let c = e.comment { parts.append("“\(Output.printable(c))”") }
                if let f = e.file { parts.append(Output.printable(f)) }
            }
        case "llm-retry":
            // Where an LLM call stood: after a rejected answer (then a repair or the next
            // model), or waiting out a long Retry-After.
            let state = e.value?["state"]
            if e.value?["$blob"] != nil {
                parts.append("where the call stands (large: kept in blobs/)")
            } else if let d = state?["person_decision"] {
                let by = Output.printable(d["by"]?.stringValue ?? "?")
                parts.append(d["approved"] == true ? (d["text"] != nil ? "\(by) wrote the answer" : "\(by) accepted the last answer") : Output.red("\(by) rejected the last answer"))
            } else if state?["asking_person"] == true {
                parts.append(Output.yellow("every answer rejected: a person decides (gate answer-\(Names.fileSafe(e.name ?? "")))"))
            } else if let last = state?["attempts"]?.arrayValue?.last, last["status"] == "invalid_answer" {
                let next = (state?["repair"]?.arrayValue?.isEmpty ?? true) ? "no repairs left with this model" : "sent back to repair"
                parts.append(Output.yellow("answer rejected: \(Output.printable(last["reason"]?.stringValue ?? "?")); \(next)"))
            } else if let u = state?["until"]?.stringValue {
                parts.append("next attempt at \(u)")
            } else if let v = e.value {
                parts.append(String(v.compactText().prefix(60)))
            }
        case "child":
            parts.append("\(e.phase?.rawValue ?? "") \(e.data?["run"]?.stringValue ?? "")" + (e.status.map { " (\($0))" } ?? ""))
        case "send":
            parts.append("to \(Output.printable(e.data?["to"]?.stringValue ?? "?"))")
        case "complete":
            parts.append(Output.green("completed"))
        case "fail":
            parts.append(Output.red("failed: \(Output.printable(e.error?.message ?? "?"))"))
        case "cancel":
            parts.append(e.name == "requested" ? "compensations run next, then the run ends cancelled" : "cancelled")
        default:
            if let v = e.value { parts.append(String(v.compactText().prefix(60))) }
        }
        if let t = e.data?["tokens"] {
            let r = e.data?["tokens_rejected"].map { ($0["input"]?.intValue ?? 0) + ($0["output"]?.intValue ?? 0) } ?? 0
            parts.append("tokens \(t["input"]?.intValue ?? 0) in / \(t["output"]?.intValue ?? 0) out" + (r > 0 ? " (\(r) on rejected answers)" : ""))
        }
        return parts.joined(separator: "  ")
    }
}
