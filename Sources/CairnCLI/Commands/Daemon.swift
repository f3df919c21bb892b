import ArgumentParser
import Cairn
import CairnDaemon
import CairnSpool
import CairnWatch
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

struct DaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Watch the spool and advance runs the instant a file lands (foreground).",
        discussion: prose("""
            SIGTERM or SIGINT: stop taking work, let running executions reach their next wait
            (up to --shutdown-grace), release every lock, exit 0. Several daemons may serve one
            spool; a run is advanced by whoever holds its lock.

            Examples:
              cairn daemon
              cairn daemon --spool /srv/cairn --concurrency 16 --log-format json
              cairn daemon --rescan-interval 5s     # spool on NFS/CephFS shared by hosts
              cairn daemon --metrics-file /var/lib/node_exporter/textfile/cairn.prom
              cairn daemon --report-dir /var/www/cairn
            """)
    )

    @Option(name: .long, help: "Runs advanced at once.") var concurrency: Int = 8
    @Option(name: .customLong("rescan-interval"), help: "Rescan the spool this often (shared filesystems; off by default).") var rescanInterval: DurationArgument?
    @Option(name: .customLong("shutdown-grace"), help: "How long running executions get on shutdown.") var shutdownGrace = DurationArgument(argument: "30s")!
    @Option(name: .customLong("log-format"), help: "human or json.") var logFormat: LogFormat = .human
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.") var logLevel: LogLevelArgument = .info
    @Option(name: .customLong("metrics-file"), help: ArgumentHelp("Write metrics in Prometheus's text format to this file (atomically; for node_exporter's textfile collector).", valueName: "path"), completion: .file(extensions: ["prom"])) var metricsFile: String?
    @Option(name: .customLong("report-dir"), help: ArgumentHelp("Keep the HTML report of `cairn report` current in this directory (a run's page after each change, the index within a second).", valueName: "dir"), completion: .directory) var reportDir: String?
    @OptionGroup var options: SpoolOptions

    func validate() throws {
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        // Each rescan reads every run's state: a shorter interval is a busy loop.
        if let r = rescanInterval, r.duration < .milliseconds(100) { throw ValidationError("--rescan-interval must be at least 100ms, not \(r.text)") }
    }

    func run() async throws {
        // libinotifytools first, while file descriptors are few (it select()s on its fd).
        let watcher = try Watcher.start()
        let spool = try options.open()
        let logger = makeLogger(format: logFormat, level: logLevel.level)
        var opts = DaemonOptions()
        opts.concurrency = concurrency
        opts.rescanInterval = rescanInterval?.duration
        // A rescan interval means other hosts write here too: a file being replaced through
        // their mount may read as ENOENT for a moment (DurableFile.read looks again).
        if opts.rescanInterval != nil { DurableFile.assumeSharedFilesystem() }
        opts.shutdownGrace = shutdownGrace.duration
        var refresher: Task<Void, Never>? = nil
        var metricsFile: MetricsFile? = nil
        if let path = self.metricsFile {
            let file = try MetricsFile(path: path, spool: spool)
            opts.metrics = DaemonMetrics(changed: { file.changed() })
            refresher = Task { await file.refreshEvery15s() }
            metricsFile = file
        }
        defer {
            refresher?.cancel()
            metricsFile?.write()  // the last figures, on the way out
        }
        if let dir = reportDir {
            let keeper = ReportKeeper(report: try Report(spool: spool, directory: dir))
            keeper.everything()
            opts.afterAdvance = { id in keeper.changed(id) }
        }
        // The scripts' `cairn` helpers answered here (the small client), when it is installed.
        let helpers = HelperService(logger: logger)
        defer { helpers.stop() }
        let daemon = Daemon(spool: spool, registry: CLIEnvironment.workflows(for: spool, helpers: helpers), watcher: watcher, options: opts, logger: logger)
        try await runDaemon(daemon, logger: logger, spool: spool)
    }
}

func makeLogger(format: LogFormat, level: Logger.Level) -> Logger {
    var logger = format == .json
        ? Logger(label: "cairn", factory: { JSONLogHandler(label: $0) })
        : Logger(label: "cairn", factory: { HumanLogHandler(label: $0) })
    logger.logLevel = level
    return logger
}

func runDaemon(_ daemon: Daemon, logger: Logger, spool: Spool) async throws {
    logger.info("daemon starting", metadata: ["spool": "\(spool.root.string)", "pid": .stringConvertible(Int(getpid()))])
    let group = ServiceGroup(configuration: .init(
        services: [.init(service: daemon, successTerminationBehavior: .gracefullyShutdownGroup)],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger
    ))
    // A second Ctrl-C stops at once: SIGINT is counted here too (the group's own handler
    // takes the first and begins the graceful shutdown, whose grace period a person at a
    // terminal may not want to wait out).
    let interrupter = Task {
        var count = 0
        for await _ in await UnixSignalsSequence(trapping: .sigint) {
            count += 1
            if count >= 2 { await daemon.interruptNow() }
        }
    }
    defer { interrupter.cancel() }
    try await group.run()
}
