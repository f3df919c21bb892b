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
              cairn daemon --metrics-listen 127.0.0.1:9464
              cairn daemon --report-dir /var/www/cairn
              cairn daemon --otlp-endpoint http://127.0.0.1:4318
            """)
    )

    @Option(name: .long, help: "Runs advanced at once.") var concurrency: Int = 8
    @Option(name: .customLong("rescan-interval"), help: "Rescan the spool this often (shared filesystems; off by default).") var rescanInterval: DurationArgument?
    @Option(name: .customLong("shutdown-grace"), help: "How long running executions get on shutdown.") var shutdownGrace = DurationArgument(argument: "30s")!
    @Option(name: .customLong("log-format"), help: "human or json.") var logFormat: LogFormat = .human
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.") var logLevel: LogLevelArgument = .info
    @Option(name: .customLong("metrics-file"), help: ArgumentHelp("Write metrics in Prometheus's text format to this file (atomically; for node_exporter's textfile collector).", valueName: "path"), completion: .file(extensions: ["prom"])) var metricsFile: String?
    @Option(name: .customLong("metrics-listen"), help: ArgumentHelp("Serve the same metrics at http://HOST:PORT/metrics for Prometheus to scrape.", valueName: "host:port")) var metricsListen: String?
    @Option(name: .customLong("report-dir"), help: ArgumentHelp("Keep the HTML report of `cairn report` current in this directory (a run's page and the index within a second of a change).", valueName: "dir"), completion: .directory) var reportDir: String?
    @Option(name: .customLong("otlp-endpoint"), help: ArgumentHelp("Export each run's trace with OTLP/HTTP to this collector (http://HOST:4318 gets /v1/traces).", valueName: "url")) var otlpEndpoint: String?
    @OptionGroup var options: SpoolOptions

    func validate() throws {
        if let url = otlpEndpoint {
            guard TraceExport.available else { throw ValidationError("this cairn was built without the OTel trait (on by default; a package that depends on Cairn with `traits: []` leaves it out): --otlp-endpoint is not in it (docs/operations.md, \"Traces\")") }
            guard let u = URL(string: url), ["http", "https"].contains(u.scheme?.lowercased() ?? ""), let host = u.host, !host.isEmpty else { throw ValidationError("--otlp-endpoint must be an http:// or https:// URL, not '\(url)'") }
            if let port = u.port, !(1...65535).contains(port) { throw ValidationError("--otlp-endpoint \(url): the port must be 1 to 65535") }
            // Credentials in the URL would be logged and not sent (the exporter sends no
            // userinfo): headers are the way, and they are never logged.
            if u.user != nil || u.password != nil { throw ValidationError("--otlp-endpoint: no credentials in the URL; give them as OTEL_EXPORTER_OTLP_HEADERS=\"authorization=…\" in the daemon's environment") }
        }
        if let l = metricsListen {
            guard TraceExport.available else { throw ValidationError("this cairn was built without the OTel trait (on by default; a package that depends on Cairn with `traits: []` leaves it out): --metrics-listen is not in it (--metrics-file is)") }
            guard MetricsEndpoint.parse(l) != nil else { throw ValidationError("--metrics-listen takes HOST:PORT (127.0.0.1:9464, [::1]:9464), not '\(l)'") }
        }
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
        var endpoint: MetricsEndpoint.Running? = nil
        if self.metricsFile != nil || metricsListen != nil {
            let exposition = MetricsExposition(spool: spool)
            if let path = self.metricsFile {
                let file = try MetricsFile(path: path, exposition: exposition) { error in
                    logger.error("cannot write the metrics file", metadata: ["path": "\(path)", "error": "\(error)"])
                    DaemonMetrics.countError("metrics_write")
                }
                refresher = Task { await file.refreshEvery15s() }
                metricsFile = file
            }
            if let listen = metricsListen, let (host, port) = MetricsEndpoint.parse(listen) {
                do {
                    endpoint = try MetricsEndpoint.start(host: host, port: port) { exposition.render() }
                } catch let e as CLIError {
                    throw CLIError(e.code, "--metrics-listen \(listen): \(e.message)")
                } catch {
                    throw CLIError(.failure, "--metrics-listen \(listen): cannot listen: \(error)")
                }
                logger.info("serving metrics", metadata: ["url": "http://\(host.contains(":") ? "[\(host)]" : host):\(endpoint!.port)/metrics"])
            }
            let file = metricsFile
            opts.metrics = DaemonMetrics(changed: { file?.changed() })
        }
        var keeping: Task<Void, Never>? = nil
        defer {
            refresher?.cancel()
            keeping?.cancel()
            endpoint?.stop()
            metricsFile?.write()  // the last figures, on the way out
        }
        if let dir = reportDir {
            let report = try Report(spool: spool, directory: dir, flag: "--report-dir") { file, error in
                logger.error("cannot write the report", metadata: ["file": "\(file)", "error": "\(error)"])
                DaemonMetrics.countError("report_write")
            }
            let keeper = ReportKeeper(report: report)
            keeping = Task.detached { await keeper.run() }
            opts.afterAdvance = { id in keeper.changed(id) }
        }
        // The scripts' `cairn` helpers answered here (the small client), when it is installed.
        let helpers = HelperService(logger: logger)
        defer { helpers.stop() }
        let daemon = Daemon(spool: spool, registry: CLIEnvironment.workflows(for: spool, helpers: helpers), watcher: watcher, options: opts, logger: logger)
        var services: [any Service] = []
        if let url = otlpEndpoint {
            services.append(try TraceExport.start(endpoint: url, logger: logger))
            logger.info("exporting traces", metadata: ["url": "\(TraceExport.shown(TraceExport.tracesURL(url)))"])
        }
        try await runDaemon(daemon, logger: logger, spool: spool, services: services)
    }
}

func makeLogger(format: LogFormat, level: Logger.Level) -> Logger {
    var logger = format == .json
        ? Logger(label: "cairn", factory: { JSONLogHandler(label: $0) })
        : Logger(label: "cairn", factory: { HumanLogHandler(label: $0) })
    logger.logLevel = level
    return logger
}

/// The daemon in a service group with `services` (the trace exporter), which shut down after
/// it: what the last executions traced is still sent.
func runDaemon(_ daemon: Daemon, logger: Logger, spool: Spool, services: [any Service] = []) async throws {
    logger.info("daemon starting", metadata: ["spool": "\(spool.root.string)", "pid": .stringConvertible(Int(getpid()))])
    let group = ServiceGroup(configuration: .init(
        services: services.map { .init(service: $0) } + [.init(service: daemon, successTerminationBehavior: .gracefullyShutdownGroup)],
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
