import CairnDaemon
import CairnSpool
import Foundation
import Metrics
import Prometheus
import Synchronization
import SystemPackage

/// The daemon's metrics (swift-metrics, with swift-prometheus's registry as the backend),
/// bootstrapped once per process, rendered in Prometheus's text format for the metrics file
/// and for `--metrics-listen`. Runs by status and the waits for a person are read from the
/// status index and those runs' state.json at each rendering.
final class MetricsExposition: Sendable {
    let registry = PrometheusCollectorRegistry()
    let spool: Spool

    init(spool: Spool) {
        self.spool = spool
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }

    func render() -> String {
        DaemonMetrics.recordRunsByStatus(spool)
        MetricsFile.recordWaitsForPeople(spool)
        return registry.emitToString()
    }
}

/// `cairn daemon --metrics-file PATH`: the metrics written atomically (a temporary file in
/// PATH's directory, then a rename: node_exporter's textfile collector never reads half a
/// file) a second after anything changed, and every 15 s in any case (the waits' ages grow by
/// themselves).
final class MetricsFile: Sendable {
    let exposition: MetricsExposition
    private let pending = Mutex(false)
    private let name: FilePath.Component
    /// A write that failed (the daemon logs it and counts it in cairn_daemon_errors_total).
    private let failed: @Sendable (any Error) -> Void

    /// The file's directory, judged and held open.
    private let directory: OutputDirectory

    init(path: String, exposition: MetricsExposition, failed: @escaping @Sendable (any Error) -> Void) throws {
        let absolute = Spool.absolute(path)
        let given = FilePath(absolute)
        guard !path.isEmpty, !path.hasSuffix("/"), let name = given.lastComponent, name.string != "..", name.string != "." else {
            throw CLIError(.usage, "--metrics-file '\(path)': not a file name")
        }
        // The directory as OutputDirectory judges it: not another user's, nor reached through
        // their symlink; held open, the file is written there.
        directory = try OutputDirectory.trusted(given.removingLastComponent().string, flag: "--metrics-file", create: false, spool: exposition.spool)
        var st = stat()
        if try directory.writing({ lstat($0.appending(name).string, &st) }) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            throw CLIError(.usage, "--metrics-file \(path): a directory; give a file name in it (such as cairn.prom)")
        }
        self.name = name
        self.failed = failed
        self.exposition = exposition
    }

    /// Something changed: write within a second (one write for a burst of changes).
    func changed() {
        guard pending.withLock({ p in defer { p = true }; return !p }) else { return }
        Task {
            try? await Task.sleep(for: .seconds(1))
            pending.withLock { $0 = false }
            write()
        }
    }

    /// Every 15 s until cancelled.
    func refreshEvery15s() async {
        while !Task.isCancelled {
            write()
            try? await Task.sleep(for: .seconds(15))
        }
    }

    func write() {
        do {
            let text = exposition.render()
            try directory.writing { dir in
                try DurableFile(tmpDirectory: dir).write(Data(text.utf8), to: dir.appending(name), durability: .atomicOnly)
            }
        } catch {
            failed(OutputError(directory.describe(error)))
        }
    }

    /// The runs waiting for a person (an approval, an uncertain step, an answer, a budget):
    /// how many, how many for over an hour, and the oldest wait's age.
    static func recordWaitsForPeople(_ spool: Spool, now: Date = Date()) {
        var count = 0, overHour = 0
        var oldest: Double = 0
        for id in (try? spool.indexedRuns(.waiting)) ?? [] {
            guard let s = (try? spool.readState(id)) ?? nil, s.status == .waiting, let w = s.waitingFor, w.gate != nil else { continue }
            count += 1
            let age = max(0, now.timeIntervalSince(s.updatedAt))
            if age > 3600 { overHour += 1 }
            oldest = max(oldest, age)
        }
        Gauge(label: "cairn_runs_waiting_for_person").record(count)
        Gauge(label: "cairn_runs_waiting_for_person_over_1h").record(overHour)
        Gauge(label: "cairn_oldest_wait_for_person_seconds").record(oldest)
    }
}
