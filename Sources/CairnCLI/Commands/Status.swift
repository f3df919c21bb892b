import ArgumentParser
import CairnSpool
import Foundation

/// `cairn status`: is a daemon serving this spool, and what is in it.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Whether a daemon serves the spool (pid, since, concurrency), runs by status, and the oldest wait for a person.",
        discussion: prose("""
            Daemons announce themselves in SPOOL/daemons/PID.json and hold a lock on it while
            they run: one whose lock nobody holds died (a crash, SIGKILL, a reboot), and is
            shown as such. Daemons on other hosts of a shared filesystem are listed, but
            whether they still run cannot be told from here. Runs are counted from the status
            index, so the cost follows the runs, not the spool's history.

            Exit 0 when a daemon serves the spool from this host, 1 when none does.

            Examples:
              cairn status
              cairn status --json | jq .daemons
            """)
    )

    @OptionGroup var options: SpoolOptions
    @OptionGroup var output: JSONOption

    /// Waits a person settles (not time, a child or a pause).
    static let personKinds: Set<String> = ["approval", "uncertain", "answer", "budget"]

    func run() throws {
        let spool = try options.open()
        let now = Date()
        let daemons = DaemonPresence.list(spool)
        var counts: [(RunStatus, Int)] = []
        for s in RunStatus.allCases { counts.append((s, (try? spool.indexedRuns(s).count) ?? 0)) }
        var oldest: RunState? = nil
        for id in (try? spool.indexedRuns(.waiting)) ?? [] {
            guard let st = try? spool.readState(id), st.status == .waiting, let w = st.waitingFor, Self.personKinds.contains(w.kind.rawValue) else { continue }
            if oldest == nil || st.updatedAt < oldest!.updatedAt { oldest = st }
        }
        let serving = daemons.contains { $0.alive == true }
        if output.json {
            var o: [String: JSONValue] = [
                "spool": .string(spool.root.string),
                "daemons": .array(daemons.map { d in
                    var j = d.info.objectValue ?? [:]
                    j["pid"] = .int(Int64(d.pid))
                    j["alive"] = d.alive.map { .bool($0) } ?? .null
                    return .object(j)
                }),
                "runs": .object(Dictionary(uniqueKeysWithValues: counts.map { ($0.0.rawValue, JSONValue.int(Int64($0.1))) })),
            ]
            if let oldest {
                o["oldest_wait_for_a_person"] = ["run": .string(oldest.run), "since": .string(Timestamp.format(oldest.updatedAt)), "waiting_for": oldest.waitingFor?.json ?? .null]
            }
            Output.json(.object(o))
        } else {
            Output.line("spool    \(spool.root.string)")
            if daemons.isEmpty {
                Output.line("daemon   " + Output.red("none") + " — start one: cairn daemon --spool \(Describe.shellQuoted(spool.root.string))")
            }
            for d in daemons {
                let since = d.info["since"]?.stringValue.flatMap(Timestamp.parse)
                var line = "daemon   pid \(d.pid)"
                if let h = d.info["host"]?.stringValue, h != DaemonPresence.hostName { line += " on \(h)" }
                if let since { line += ", since \(Timestamp.format(since)) (\(ListCommand.age(now.timeIntervalSince(since)).replacingOccurrences(of: " ago", with: "")))" }
                if let c = d.info["concurrency"]?.intValue { line += ", concurrency \(c)" }
                switch d.alive {
                case true?: line += "  " + Output.green("serving")
                case false?: line += "  " + Output.red("dead") + " (it stopped without withdrawing: a crash, SIGKILL or a reboot)"
                case nil: line += "  " + Output.yellow("unknown") + " (another host, or not readable by you)"
                }
                Output.line(line)
            }
            let nonzero = counts.filter { $0.1 > 0 }
            Output.line("runs     " + (nonzero.isEmpty ? "none" : nonzero.map { "\($0.1) \($0.0.rawValue)" }.joined(separator: ", ")))
            if let oldest, let w = oldest.waitingFor {
                Output.line("oldest wait for a person: \(oldest.run) \(Describe.waitingShort(w)), \(ListCommand.age(now.timeIntervalSince(oldest.updatedAt)))  (cairn why \(oldest.run) --spool \(Describe.shellQuoted(spool.root.string)))")
            }
        }
        if !serving { throw ExitCode(1) }
    }
}
