import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Issue 20: docs/cli.md matches the binary. Every example in it is run — the `$ cairn …`
/// lines with the output shown under them, the `cairn …` lines of `sh` blocks — against a
/// spool holding the runs the examples name (each example on a fresh copy of it, as a
/// person at a terminal would: `$` examples in a pty), and every synopsis is compared with
/// the command's `--help`. An example that does not run, exits otherwise than it says, or
/// prints something other than what is shown fails here, with the doc's line number.
@Suite(.serialized) struct CLIDocTests {
    static let docPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/cli.md").standardized.path

    /// What a run in the examples stands for, by command (`RUN`, `GATE` in the doc).
    static let refund = "20261127-100428-563-9phhhr"  // demo-refund, waiting at issue-refund
    static let refunded = "20261127-100412-088-q7wxkd"  // demo-refund, approved and completed
    static let digest = "20261127-100428-570-gyhf5y"  // demo-digest, completed (with logs)

    /// Examples that are not run here, each with the reason (and where it is covered).
    static let skipped: [(prefix: String, why: String)] = [
        ("cairn daemon", "runs in the foreground until stopped (DaemonTests)"),
        ("cairn demo", "runs a daemon in the foreground (make run)"),
        ("cairn bench", "a minute of benchmarks (BenchTests, make bench)"),
        ("cairn doctor /mnt/gluster", "needs a GlusterFS mount (GlusterTests)"),
        ("cairn status", "needs a daemon serving the spool (GoldenTests.statusTellsWhetherADaemonServesTheSpool)"),
        ("cairn ls --watch", "never ends by itself (FollowTests)"),
        ("cairn --generate-completion-script", "writes into the system's completion directories (CompletionTests runs it)"),
    ]

    /// Examples that exit with something other than 0, as their section says.
    static let exitCodes: [String: Int32] = [
        "cairn fsck": 1,  // the example shows a problem: "exits 1 if anything is wrong"
    ]

    struct Example {
        var line: Int
        var section: String
        var command: String
        var prompt: Bool  // shown as `$ cairn …` (run in a terminal)
        var output: [String]?
    }

    struct Synopsis {
        var line: Int
        var text: String
    }

    static func parse() throws -> (examples: [Example], synopses: [Synopsis]) {
        let lines = try String(contentsOfFile: docPath, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var examples: [Example] = []
        var synopses: [Synopsis] = []
        var section = ""
        var i = 0
        while i < lines.count {
            let l = lines[i]
            if l.hasPrefix("### ") || l.hasPrefix("## ") { section = l.drop { $0 == "#" }.trimmingCharacters(in: .whitespaces) }
            guard l.hasPrefix("```") else { i += 1; continue }
            let lang = String(l.dropFirst(3))
            var block: [(Int, String)] = []
            i += 1
            while i < lines.count && !lines[i].hasPrefix("```") { block.append((i + 1, lines[i])); i += 1 }
            i += 1
            if lang == "json" { continue }
            if block.contains(where: { $0.1.hasPrefix("$ ") }) {
                var current: Example? = nil
                for (n, text) in block {
                    if text.hasPrefix("$ ") {
                        if let c = current { examples.append(c) }
                        current = Example(line: n, section: section, command: String(text.dropFirst(2)), prompt: true, output: [])
                    } else {
                        current?.output?.append(text)
                    }
                }
                if let c = current { examples.append(c) }
            } else if lang == "sh" {
                for (n, text) in block where text.hasPrefix("cairn ") || text.contains("| cairn ") {
                    examples.append(Example(line: n, section: section, command: text, prompt: false, output: nil))
                }
            } else {
                // A synopsis: `cairn NAME …` and its indented continuation lines.
                for (n, text) in block {
                    if text.hasPrefix("cairn ") { synopses.append(Synopsis(line: n, text: text)) }
                    else if text.hasPrefix(" "), !synopses.isEmpty, synopses.last!.line >= block.first!.0 { synopses[synopses.count - 1].text += " " + text }
                }
            }
        }
        return (examples, synopses)
    }

    /// A run for `RUN` in an example of this command.
    static func run(for command: String) -> String {
        let words = command.split(separator: " ").map(String.init)
        let sub = words.firstIndex(of: "cairn").flatMap { $0 + 1 < words.count ? words[$0 + 1] : nil } ?? ""
        switch sub {
        case "signal": return "listen-1"
        case "resume": return "nap-1"
        case "retry": return "flaky-1"
        case "logs": return digest
        case "wait": return command.contains("--for waiting") ? refund : refunded
        default: return refund
        }
    }

    /// Variable parts (ids, times, paths, ages, measured numbers, ids of executions) as
    /// placeholders, and runs of spaces as one: what must match is the shape, the words and
    /// the small counts.
    static func normalize(_ s: String) -> String {
        var t = s
        let rules: [(String, String)] = [
            (#"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"#, "UUID"),
            (#"\b\d{8}-\d{6}-\d{3}-[a-z0-9]{6}\b"#, "RUN"),
            (#"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"#, "TIME"),
            (#"(/[\w.\-]+)+/?"#, "PATH"),
            (#"\b(just now|\d+[smhd] ago)\b"#, "AGE"),
            // Measured numbers (decimals, durations, sizes, large counts such as pids and
            // bytes) vary; small whole numbers — counts of steps, records, runs, exit codes —
            // must match the docs.
            (#"\d+(\.\d+)?\s?(ms|µs|s|m|h|d|KB|MB|GB|KiB|MiB|B|bytes|%)\b"#, "N_UNIT"),
            (#"\d+\.\d+"#, "N"),
            (#"\d{4,}|\d{1,3}(,\d{3})+"#, "N"),
            (#"[ \t]+"#, " "),
        ]
        for (pattern, with) in rules { t = t.replacingOccurrences(of: pattern, with: with, options: .regularExpression) }
        return t.trimmingCharacters(in: .whitespaces)
    }

    /// The spool every example starts from (a copy of it each time).
    static func scenario() throws -> TempSpool {
        let t = try TempSpool(prefix: "cairn-doc")
        let scripts: [String: String] = [
            "demo-digest": "#!/bin/sh\nset -e\nnotes=$(cairn step collect -- printf 'note 1\\nnote 2\\n')\necho \"collected: $notes\"\necho 'counting' >&2\necho '{\"notes\": 2}' | cairn result -\n",
            "flaky": "#!/bin/sh\necho 'the service answered 503' >&2\nexit 1\n",
            "nap": "#!/bin/sh\ncairn sleep 1h\n",
            "listen": "#!/bin/sh\ncairn event payment >/dev/null\n",
        ]
        for (name, text) in scripts {
            let p = t.spool.workflowsDirectory.appending(name).string
            try text.write(toFile: p, atomically: true, encoding: .utf8)
            chmod(p, 0o755)
        }
        func cairn(_ args: String..., stdin: String? = nil) throws {
            let r = try Binary.run("cairn", args + ["--spool", t.spool.root.string], stdin: stdin)
            guard r.code == 0 || args.first == "advance" else { throw TimedOut(what: "scenario: cairn \(args.joined(separator: " ")) exited \(r.code): \(r.stderr)") }
        }
        let order = #"{"order": "A-1042", "amount": 42.5, "reason": "arrived broken"}"#
        try cairn("submit", "demo-refund", "--id", refunded, "--input", "-", stdin: order)
        try cairn("advance", refunded)
        try cairn("approve", refunded, "issue-refund")
        try cairn("advance", refunded)
        try cairn("submit", "demo-refund", "--id", refund, "--input", "-", stdin: order)
        try cairn("advance", refund)
        try cairn("submit", "demo-digest", "--id", digest)
        try cairn("advance", digest)
        for (id, wf) in [("flaky-1", "flaky"), ("listen-1", "listen"), ("nd-1", "listen")] {
            try cairn("submit", wf, "--id", id)
            try cairn("advance", id)
        }
        try cairn("submit", "nap", "--id", "nap-1")
        try cairn("pause", "nap-1")
        try cairn("advance", "nap-1")
        // nd-1: a state.json that disagrees with its journal (what fsck's example finds).
        var state = try t.spool.readState("nd-1")!
        state.status = .failed
        try t.spool.writeState(state)
        return t
    }

    @Test func everyExampleDoesWhatTheDocSays() async throws {
        let (examples, _) = try Self.parse()
        #expect(examples.count >= 15, "examples found: \(examples.count)")
        let base = try Self.scenario()
        for (id, want) in [(Self.refund, RunStatus.waiting), (Self.refunded, .completed), (Self.digest, .completed), ("flaky-1", .failed), ("listen-1", .waiting), ("nap-1", .waiting)] {
            #expect(base.status(id) == want, "scenario: \(id) is \(base.status(id)?.rawValue ?? "?")")
        }
        let scratch = base.path.appending("cwd").string
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        for (name, text) in ["edited.json": "40", "payment.json": #"{"amount": 12.5}"#, "v.json": #"{"action": "done", "value": null}"#] {
            try text.write(toFile: scratch + "/" + name, atomically: true, encoding: .utf8)
        }
        var ran = 0
        var failures: [String] = []
        for (n, ex) in examples.enumerated() {
            let plain = ex.command.replacingOccurrences(of: #"^.*?\|\s*"#, with: "", options: .regularExpression)
            if let skip = Self.skipped.first(where: { plain.hasPrefix($0.prefix) || ex.command.hasPrefix($0.prefix) }) {
                print("docs/cli.md:\(ex.line): not run here: \(ex.command) — \(skip.why)")
                continue
            }
            // A fresh copy of the scenario's spool.
            let copy = base.path.appending("copy-\(n)").string
            let cp = try Binary.run("/bin/cp", ["-a", base.spool.root.string, copy])
            #expect(cp.code == 0, "\(cp.stderr)")
            let command = ex.command
                .replacingOccurrences(of: "RUN", with: Self.run(for: ex.command))
                .replacingOccurrences(of: "GATE", with: "issue-refund")
            let env = ["CAIRN_SPOOL": copy, "NO_COLOR": "1", "PATH": Binary.directory + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"), "EXAMPLE": command, "COLUMNS": "200", "CAIRN_PAGER": "cat"]
            let r: Binary.Result
            if ex.prompt {
                // In a terminal, as shown: script(1) gives it a pty.
                r = try Binary.run("/usr/bin/timeout", ["60", "/usr/bin/script", "-qec", "sh -c \"$EXAMPLE\"", "/dev/null"], env: env, cwd: scratch)
            } else {
                r = try Binary.run("/usr/bin/timeout", ["60", "/bin/sh", "-c", command], env: env, cwd: scratch)
            }
            ran += 1
            let out = (r.stdout + r.stderr).replacingOccurrences(of: "\r", with: "")
            let want = Self.exitCodes[ex.command] ?? 0
            if r.code != want {
                failures.append("docs/cli.md:\(ex.line) (\(ex.section)): `\(command)` exited \(r.code), the doc says \(want):\n\(out)")
                continue
            }
            if let shown = ex.output {
                let got = Set(out.split(separator: "\n").map { Self.normalize(String($0)) })
                for line in shown where !line.trimmingCharacters(in: .whitespaces).isEmpty && line != "…" {
                    if !got.contains(Self.normalize(line)) {
                        failures.append("docs/cli.md:\(ex.line) (\(ex.section)): `\(command)` does not print\n    \(line)\n  (as \(Self.normalize(line)))\n  it printed:\n\(out)")
                    }
                }
            }
        }
        if !failures.isEmpty { Issue.record("\(failures.count) example(s) do not do what docs/cli.md says:\n\n\(failures.joined(separator: "\n\n"))") }
        #expect(ran >= 12, "examples run: \(ran)")
    }

    /// Each synopsis names exactly the options the command's --help lists.
    @Test func everySynopsisMatchesHelp() async throws {
        let (_, synopses) = try Self.parse()
        #expect(synopses.count >= 15)
        var failures: [String] = []
        for s in synopses {
            let words = s.text.split(separator: " ").map(String.init)
            guard words.count >= 2, !words[1].hasPrefix("-") else { continue }
            let help = try Binary.run("cairn", [words[1], "--help"], env: ["COLUMNS": "200"])
            guard help.code == 0 else {
                failures.append("docs/cli.md:\(s.line): `cairn \(words[1]) --help` exited \(help.code): \(help.stderr)")
                continue
            }
            let optionPattern = #"(?<![\w-])--?[a-z][a-z-]*"#
            func options(_ text: String) -> Set<String> {
                let ns = text as NSString
                let re = try! NSRegularExpression(pattern: optionPattern)
                return Set(re.matches(in: text, range: NSRange(location: 0, length: ns.length)).map { ns.substring(with: $0.range) })
            }
            // --help's OPTIONS section: the lines that start with an option.
            let listed = help.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0.hasPrefix("-") }
            // Each option line of --help (`-o, --format <format>`): named in the synopsis by
            // any of its names.
            var helpLines: [Set<String>] = []
            for l in listed {
                let head = l.components(separatedBy: "  ").first ?? l
                let names = options(head).subtracting(["--help", "-h", "--version"])
                if !names.isEmpty { helpLines.append(names) }
            }
            let inDoc = options(s.text.components(separatedBy: "#").first ?? s.text)
            let missing = helpLines.filter { $0.isDisjoint(with: inDoc) }.map { $0.sorted().joined(separator: "/") }
            let stale = inDoc.filter { o in !helpLines.contains { $0.contains(o) } }
            if !missing.isEmpty || !stale.isEmpty {
                failures.append("docs/cli.md:\(s.line): `\(s.text)`: \(missing.isEmpty ? "" : "--help has \(missing.sorted()) that the synopsis does not") \(stale.isEmpty ? "" : "the synopsis has \(stale.sorted()) that --help does not")")
            }
        }
        if !failures.isEmpty { Issue.record("\n\(failures.joined(separator: "\n"))") }
    }
}
