import CairnDaemon
import CairnSpool
import Foundation
import Metrics
import Prometheus
import Synchronization
import SystemPackage

/// `cairn daemon --metrics-file PATH`: the process's metrics in Prometheus's text format,
/// written atomically (a temporary file in PATH's directory, then a rename: node_exporter's
/// textfile collector never reads half a file) a second after anything changed, and every
/// 15 s in any case (the waits' ages grow by themselves). Runs by status and the waits for a
/// person are read from the status index and those runs' state.json at each write.
final class MetricsFile: Sendable {
    let path: FilePath
    let registry: PrometheusCollectorRegistry
    let spool: Spool
    private let pending = Mutex(false)
    private let writer: DurableFile

    init(path: String, spool: Spool) throws {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        self.path = FilePath(absolute)
        let dir = self.path.removingLastComponent()
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir.string, isDirectory: &isDir), isDir.boolValue else {
            throw CLIError(.usage, "--metrics-file \(path): \(dir.string) is not a directory")
        }
        writer = DurableFile(tmpDirectory: dir)
        self.spool = spool
        registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
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
        DaemonMetrics.recordRunsByStatus(spool)
        Self.recordWaitsForPeople(spool)
        do {
            try writer.write(Data(registry.emitToString().utf8), to: path, durability: .atomicOnly)
        } catch {
            FileHandle.standardError.write(Data("cairn: cannot write the metrics file \(path.string): \(error)\n".utf8))
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
