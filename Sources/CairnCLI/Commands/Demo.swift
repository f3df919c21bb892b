import ArgumentParser
import Cairn
import CairnDaemon
import CairnSpool
import CairnWatch
import Foundation
import Logging
import Synchronization

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "The guided demo: a spool, two example workflows, the daemon, and a run waiting for you.",
        discussion: prose("""
            Creates the spool if missing (default ./spool), installs the script workflow
            workflows/demo-digest, submits a run of it and one of the Swift workflow
            demo-refund, and runs the daemon in the foreground. demo-refund stops at an
            approval gate; the demo prints the `touch` (or `cairn approve`) that approves it.
            Nothing reads the terminal. Ctrl-C stops the daemon cleanly.

            Examples:
              cairn demo
              cairn demo --spool /tmp/demo --exit-when-done
            """)
    )

    @Flag(name: .customLong("exit-when-done"), help: "Stop the daemon once both demo runs have finished.") var exitWhenDone = false
    @OptionGroup var options: SpoolOptions

    static let digestScript = """
        #!/usr/bin/env bash
        # A Cairn script workflow: each `cairn` helper call is a durable operation.
        # Kill the daemon at any point and start it again: completed steps are not re-run.
        set -euo pipefail
        input=$(cat)
        topic=$(printf '%s' "$input" | sed -n 's/.*"topic": *"\\([^"]*\\)".*/\\1/p')
        notes=$(cairn step collect -- bash -c "printf 'note 1 about %s\\nnote 2 about %s\\nnote 3 about %s\\n' '$topic' '$topic' '$topic'")
        cairn sleep 2s                      # a durable timer: the script is stopped meanwhile
        count=$(cairn step count -- bash -c "printf '%s\\n' \\"\\$0\\" | wc -l" "$notes")
        at=$(cairn now)
        printf '{"topic": "%s", "notes": %s, "at": "%s"}\\n' "$topic" "$count" "$at" | cairn result -

        """

    func run() async throws {
        let watcher = try Watcher.start()
        let spool = try Spool.create(at: Spool.resolveRoot(options.spool))
        let root = spool.root.string
        let script = spool.workflowsDirectory.appending("demo-digest")
        if (try? String(contentsOfFile: script.string, encoding: .utf8)) != Self.digestScript {
            try spool.durable.write(Data(Self.digestScript.utf8), to: script)
            chmod(script.string, 0o755)
        }
        let logger = makeLogger(format: .human, level: .info)
        let helpers = HelperService(logger: logger)
        defer { helpers.stop() }
        let daemon = Daemon(spool: spool, registry: CLIEnvironment.workflows(for: spool, helpers: helpers), watcher: watcher, options: DaemonOptions(), logger: logger)

        let refund = try spool.createRun(.init(workflow: DemoRefund.name, input: ["order": "A-1042", "amount": 42.5, "reason": "arrived broken"], workflowVersion: DemoRefund.version)).id
        let digest = try spool.createRun(.init(workflow: "demo-digest", input: ["topic": "durable agents"])).id
        let me = "cairn"
        Output.line("""

            \(Output.bold("Cairn demo")) — spool \(root)
              workflows/demo-digest   a bash script workflow (steps, a durable sleep, a result)
              demo-refund             a Swift workflow (steps, then an approval gate, then an at-most-once step)
              submitted \(digest) (demo-digest) and \(refund) (demo-refund)
              the daemon runs in the foreground below; Ctrl-C stops it, and runs resume when it starts again

            """)
        let done = Mutex<Set<String>>([])
        let told = Mutex(false)
        let exitWhenDone = self.exitWhenDone
        await daemon.observe { id, outcome in
            switch outcome {
            case .waiting(let w) where id == refund && w.kind == .approval:
                guard told.withLock({ let t = $0; $0 = true; return !t }) else { return }
                Output.line("""

                    \(Output.bold("▶ \(refund) is waiting for your approval")) (gate issue-refund). In another terminal:

                        touch \(root)/runs/\(refund)/approvals/issue-refund.approved

                    or: \(me) approve \(refund) issue-refund --spool \(root)
                    or, to change the amount: echo 40 > v.json && \(me) approve \(refund) issue-refund --value v.json --spool \(root)
                    meanwhile: \(me) ls --spool \(root) · \(me) why \(refund) --spool \(root) · jq . \(root)/runs/\(refund)/journal/*.json

                    """)
            case .completed(let v):
                Output.line("\n\(Output.green("✓ \(id) completed")): \(v.compactText())\n  \(me) show \(id) --spool \(root)\n")
                finish(id)
            case .failed(let e):
                Output.line("\n\(Output.red("✗ \(id) failed")): \(e.message)\n")
                finish(id)
            case .cancelled:
                finish(id)
            default:
                break
            }
        }
        @Sendable func finish(_ id: String) {
            let all = done.withLock { $0.insert(id); return $0.isSuperset(of: [refund, digest]) }
            if all && exitWhenDone {
                Output.line("both demo runs finished; stopping (--exit-when-done)")
                Task { await daemon.beginShutdown() }
            }
        }
        try await runDaemon(daemon, logger: logger, spool: spool)
    }
}
