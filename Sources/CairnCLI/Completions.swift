import ArgumentParser
import CairnSpool
import Foundation

/// Shell completion (`cairn --generate-completion-script bash|zsh|fish`): run ids, gate
/// names, event names, log names, statuses and durations. argument-parser's generated
/// script calls the binary back on TAB (`cairn ---completion …`), which runs the closures
/// here: they read the spool named on the command line being completed (`--spool DIR`),
/// else $CAIRN_SPOOL, else ./spool, and never fail (no spool: no candidates).
enum Completions {
    /// The spool the words being completed name.
    static func spool(_ words: [String]) -> Spool? {
        var dir: String? = nil
        for (i, w) in words.enumerated() {
            if w == "--spool", i + 1 < words.count { dir = unquote(words[i + 1]) }
            if w.hasPrefix("--spool=") { dir = unquote(String(w.dropFirst("--spool=".count))) }
        }
        if let d = dir, d.hasPrefix("~/"), let home = ProcessInfo.processInfo.environment["HOME"] { dir = home + d.dropFirst(1) }
        return try? Spool.open(at: Spool.resolveRoot(dir))
    }

    /// The shells pass words verbatim: a quoted path keeps its quotes.
    static func unquote(_ w: String) -> String {
        if w.count >= 2, let f = w.first, f == w.last, f == "'" || f == "\"" { return String(w.dropFirst().dropLast()) }
        return w.replacingOccurrences(of: "\\ ", with: " ")
    }

    /// The positional words after the command's name (options and their values left out).
    static func positionals(_ words: [String]) -> [String] {
        var out: [String] = []
        var skip = false
        for w in words.dropFirst(2) {
            if skip { skip = false; continue }
            if w.hasPrefix("-") {
                // Options with a value, as two words.
                skip = !w.contains("=") && ["--spool", "--comment", "--value", "--reason", "--data", "--timeout", "--for", "--rescan-interval", "--tail", "--since", "--status", "--workflow", "--limit", "-o", "--format"].contains(w)
                continue
            }
            out.append(unquote(w))
        }
        return out
    }

    /// Run ids, newest first (ids start with their submission time).
    static let runs = CompletionKind.custom { words, _, prefix in
        guard let spool = spool(words) else { return [] }
        return ((try? spool.runIDs()) ?? []).filter { $0.hasPrefix(prefix) }.sorted(by: >)
    }

    /// The runs waiting for a decision (`approve`, `reject`): those waiting at a gate; when
    /// none matches, every run.
    static let gateRuns = CompletionKind.custom { words, _, prefix in
        guard let spool = spool(words) else { return [] }
        let waiting = ((try? spool.indexedRuns(.waiting)) ?? []).filter { $0.hasPrefix(prefix) && (try? spool.readState($0))??.waitingFor?.gate != nil }
        return waiting.isEmpty ? ((try? spool.runIDs()) ?? []).filter { $0.hasPrefix(prefix) }.sorted(by: >) : waiting.sorted(by: >)
    }

    /// The runs waiting for an event (`signal`); when none matches, every run.
    static let eventRuns = CompletionKind.custom { words, _, prefix in
        guard let spool = spool(words) else { return [] }
        let waiting = ((try? spool.indexedRuns(.waiting)) ?? []).filter { id in
            guard id.hasPrefix(prefix), let w = (try? spool.readState(id))??.waitingFor, case .event = w.wake else { return false }
            return true
        }
        return waiting.isEmpty ? ((try? spool.runIDs()) ?? []).filter { $0.hasPrefix(prefix) }.sorted(by: >) : waiting.sorted(by: >)
    }

    /// The gates the run has asked about (approvals/GATE.request.json) and not had decided:
    /// the one it waits at, and any other still open.
    static let gates = CompletionKind.custom { words, _, prefix in
        guard let spool = spool(words), let run = positionals(words).first, Names.isValidRunID(run), spool.runExists(run) else { return [] }
        var out: [String] = []
        if let w = (try? spool.readState(run))??.waitingFor, let g = w.gate { out.append(g) }
        let files = Set((try? FileManager.default.contentsOfDirectory(atPath: spool.run(run).approvalsDirectory.string)) ?? [])
        let decided = Set(((try? spool.journal(run).load()) ?? []).filter { $0.kind == .approval && $0.decision != nil }.compactMap(\.name))
        for f in files.sorted() where f.hasSuffix(".request.json") && !f.hasPrefix(".") {
            let g = String(f.dropLast(".request.json".count))
            if !out.contains(g), !decided.contains(g), !files.contains(g + ".approved"), !files.contains(g + ".rejected") { out.append(g) }
        }
        return out.filter { $0.hasPrefix(prefix) }
    }

    /// The event the run waits for.
    static let events = CompletionKind.custom { words, _, prefix in
        guard let spool = spool(words), let run = positionals(words).first, Names.isValidRunID(run),
              let w = (try? spool.readState(run))??.waitingFor, case .event(let name) = w.wake else { return [] }
        return [name].filter { $0.hasPrefix(prefix) }
    }

    /// stdout, stderr and the run's LLM calls.
    static let logs = CompletionKind.custom { words, _, prefix in
        guard let spool = spool(words), let run = positionals(words).first, Names.isValidRunID(run), spool.runExists(run) else { return [] }
        let names = LogReader(directory: spool.run(run).logsDirectory.string, only: nil).names()
        return (["stdout", "stderr"] + names.filter { $0 != "stdout" && $0 != "stderr" }).filter { $0.hasPrefix(prefix) }
    }

    /// The workflows the spool has (its script workflows and those that have runs).
    static let workflows = CompletionKind.custom { words, _, prefix in
        guard let spool = spool(words) else { return [] }
        var names = Set(CLIEnvironment.workflows.names)
        for f in (try? FileManager.default.contentsOfDirectory(atPath: spool.root.appending("workflows").string)) ?? [] where !f.hasPrefix(".") {
            names.insert(f)
        }
        return names.filter { $0.hasPrefix(prefix) }.sorted()
    }

    static let statuses = CompletionKind.list(RunStatus.allCases.map(\.rawValue))
}
