#if OTel
import OTel
#endif
import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import Tracing

/// `cairn daemon --otlp-endpoint` (docs/operations.md, "Traces"): the engine's spans
/// (swift-distributed-tracing's API, in the Cairn target) exported with OTLP/HTTP by
/// swift-otel, behind the package trait `OTel` (on by default: about 40 s more of a cold
/// build here, docs/benchmarks.md "Build time"). A binary built without it refuses the
/// option and says why.
enum TraceExport {
    /// True when this binary was built with the `OTel` trait (the exporter and
    /// `--metrics-listen`'s HTTP server).
    static var available: Bool {
        #if OTel
        return true
        #else
        return false
        #endif
    }

    /// The URL spans are posted to: a collector's base URL (`http://host:4318`, as
    /// OTEL_EXPORTER_OTLP_ENDPOINT) gets OTLP/HTTP's `/v1/traces`; a URL with a path is used
    /// as given (as OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).
    static func tracesURL(_ endpoint: String) -> String {
        guard let u = URL(string: endpoint), u.path.isEmpty || u.path == "/" else { return endpoint }
        return (endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint) + "/v1/traces"
    }

    /// The URL as logged: scheme, host, port and path — a query may carry a key.
    static func shown(_ url: String) -> String {
        guard var c = URLComponents(string: url) else { return "(unparsable)" }
        if c.query != nil { c.query = "redacted" }
        c.fragment = nil
        c.user = nil
        c.password = nil
        return c.string ?? "(unparsable)"
    }

    /// The OTLP exporter's service (run beside the daemon; its graceful shutdown sends what
    /// is batched), after the process's tracer is bootstrapped with swift-otel's. The
    /// standard OTEL_* variables (OTEL_EXPORTER_OTLP_HEADERS, …) still apply on top.
    /// OTLP/HTTP with protobuf only: swift-otel 1.6.0's JSON encoding writes trace and span
    /// ids in base64 (protobuf's JSON mapping) where OTLP/JSON requires hex, so a collector
    /// would reject or misread them.
    static func start(endpoint: String, logger: Logger) throws -> any Service {
        #if OTel
        var config = OTel.Configuration.default
        config.serviceName = "cairn"
        config.logs.enabled = false
        config.metrics.enabled = false
        config.traces.enabled = true
        config.traces.exporter = .otlp
        config.traces.otlpExporter.endpoint = tracesURL(endpoint)
        config.traces.otlpExporter.protocol = .httpProtobuf
        // A collector that hangs holds each batch for this long (10 s by default), also on the
        // way out, after the daemon itself stopped (found by an attack: 10–20 s exits).
        config.traces.otlpExporter.timeout = .seconds(2)
        config.traces.batchSpanProcessor.exportTimeout = .seconds(3)
        config.diagnosticLogger = .custom(logger)
        config.diagnosticLogLevel = .warning
        let backend = try OTel.makeTracingBackend(configuration: config)
        InstrumentationSystem.bootstrap(backend.factory)
        return backend.service
        #else
        throw ValidationError("this cairn was built without the OTel trait: --otlp-endpoint is not in it (docs/operations.md, \"Traces\")")
        #endif
    }
}
