// swift-tools-version: 6.2
import PackageDescription

// One block of strict settings for every Swift target: Swift 6 language mode
// (strict concurrency) and warnings treated as errors. Test hooks (crash points, a blinded
// watcher, simulated overflows) are compiled into debug builds only — what `swift build` and
// `make test` make; a release build (`swift build -c release`, the package) has none, as
// swift-system compiles its mocking only in debug.
let strict: [SwiftSetting] = [
    .treatAllWarnings(as: .error),
    .define("CAIRN_TEST_HOOKS", .when(configuration: .debug)),
]

let package = Package(
    name: "Cairn",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cairn", targets: ["cairn"]),
        .executable(name: "cairn-bench", targets: ["cairn-bench"]),
        .library(name: "Cairn", targets: ["Cairn"]),
        .library(name: "CairnCLI", targets: ["CairnCLI"]),
        .library(name: "CairnTesting", targets: ["CairnTesting"]),
    ],
    // The agent layer in CairnCLI (the `cairn llm` helper, the triage example) is a trait,
    // on by default: a package that depends on Cairn with `traits: []` gets a CairnCLI without
    // CairnAgents, so its executable builds without AsyncHTTPClient, SwiftNIO and NIOSSL
    // (docs/architecture.md, "The Agents trait").
    traits: [
        .trait(name: "Agents", description: "The agent layer in CairnCLI: `cairn llm` and the triage example (AsyncHTTPClient, SwiftNIO, NIOSSL)."),
        // On by default: swift-otel (OTLP/HTTP only) and swift-protobuf add about 40 s to a
        // cold debug build here (docs/benchmarks.md, "Build time"); `traits: []` leaves both
        // out, and the instrumentation (swift-distributed-tracing's API) stays.
        .trait(name: "OTel", description: "Observability over the network: `cairn daemon --otlp-endpoint` (each run's trace exported with OTLP/HTTP, swift-otel) and `--metrics-listen` (an HTTP endpoint for Prometheus, SwiftNIO)."),
        .default(enabledTraits: ["Agents", "OTel"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.20.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.0.0"..<"5.0.0"),
        // The Model Context Protocol: `cairn mcp` (a server over stdio) and MCP tool servers
        // as agent tools (a client). The protocol's own SDK rather than JSON-RPC by hand.
        .package(url: "https://github.com/modelcontextprotocol/swift-sdk", exact: "0.12.1"),
        // Metrics (issue 15): the ecosystem's API, and its Prometheus text-format backend for
        // `cairn daemon --metrics-file` (node_exporter's textfile collector) and --metrics-listen.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        // Traces (issue 15): the engine's instrumentation uses only this API (already in the
        // graph through async-http-client and service-lifecycle); tests read spans with its
        // InMemoryTracing.
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.3.0"),
        // The OTel trait's exporter (OTLP/HTTP only: gRPC would add grpc-swift).
        .package(url: "https://github.com/swift-otel/swift-otel", from: "1.6.0", traits: ["OTLPHTTP"]),
        // The OTel trait's `--metrics-listen` endpoint (NIOHTTP1; swift-otel's exporter brings
        // SwiftNIO anyway).
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
        // Tests only: generators and shrinking for the replay engine's property tests.
        .package(url: "https://github.com/x-sheep/swift-property-based", exact: "2.0.1"),
        // `make docs`: the `generate-documentation` command for the DocC catalogs (a plugin
        // only: nothing of it is linked into a product).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // libinotifytools (Debian's libinotifytools0-dev ships no pkg-config file).
        .systemLibrary(name: "CInotifyTools"),
        // The inotify watcher behind one small interface; one thread owns libinotifytools.
        .target(name: "CairnWatch", dependencies: ["CInotifyTools", "CSystemShims"], swiftSettings: strict),
        // Thin C: the few syscalls Glibc does not expose to Swift (renameat2, flock, prctl).
        .target(name: "CSystemShims"),
        // The on-disk format and nothing else: paths, records, durable write, journal, blobs, locks, repair.
        .target(
            name: "CairnSpool",
            dependencies: [
                "CSystemShims",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        // The engine: Workflow, WorkflowContext, durable operations, replay, determinism checks.
        .target(
            name: "Cairn",
            dependencies: [
                "CairnSpool",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),
        // The daemon: watcher events → scheduler → executor; timers; inbox; script workflows.
        .target(
            name: "CairnDaemon",
            dependencies: [
                "Cairn", "CairnSpool", "CairnWatch", "CSystemShims",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),
        // The LLM wire formats without I/O: messages, SSE framing, both providers' stream
        // events and bodies (pure functions of bytes; the fuzz targets build it without NIO).
        .target(name: "CairnLLMWire", dependencies: ["CairnSpool"], swiftSettings: strict),
        // The agent layer: LLM providers over AsyncHTTPClient, ctx.llm, tools, the agent loop.
        .target(
            name: "CairnAgents",
            dependencies: [
                "Cairn", "CairnSpool", "CairnLLMWire",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MCP", package: "swift-sdk"),
                "CairnMCP",
            ],
            swiftSettings: strict
        ),
        // MCP's stdio transport on pipes, read by a blocked thread (the SDK's polls every 10 ms).
        .target(
            name: "CairnMCP",
            dependencies: [.product(name: "MCP", package: "swift-sdk"), .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // The CLI as a library, so a user's own executable gets every command with its workflows.
        .target(
            name: "CairnCLI",
            dependencies: [
                "Cairn", "CairnSpool", "CairnDaemon", "CairnWatch", "CSystemShims",
                .target(name: "CairnAgents", condition: .when(traits: ["Agents"])),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MCP", package: "swift-sdk"),
                "CairnMCP",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "OTel", package: "swift-otel", condition: .when(traits: ["OTel"])),
                .product(name: "NIOCore", package: "swift-nio", condition: .when(traits: ["OTel"])),
                .product(name: "NIOPosix", package: "swift-nio", condition: .when(traits: ["OTel"])),
                .product(name: "NIOHTTP1", package: "swift-nio", condition: .when(traits: ["OTel"])),
            ],
            swiftSettings: strict
        ),
        // The test kit: temp spools, a manual clock, journal assertions.
        .target(
            name: "CairnTesting",
            dependencies: ["Cairn", "CairnSpool", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        .executableTarget(name: "cairn", dependencies: ["CairnCLI"], swiftSettings: strict),
        // Benchmarks (make bench): figures for docs/benchmarks.md, against a C floor.
        .executableTarget(name: "cairn-bench", dependencies: ["Cairn", "CairnSpool", "CSystemShims"], swiftSettings: strict),
        // The `cairn` CLI with the test suite's workflows registered (crash and replay tests run it).
        .executableTarget(name: "cairn-fixtures", dependencies: ["CairnCLI", "Cairn", "CairnSpool", "CairnAgents"], swiftSettings: strict),
        // A small MCP tool server for the tests (a help desk), written with the same SDK.
        .executableTarget(name: "cairn-mcp-fixture", dependencies: [.product(name: "MCP", package: "swift-sdk")], path: "Tests/MCPFixture", swiftSettings: strict),
        // The fuzz targets (make fuzz): libFuzzer's driver under -DCAIRN_FUZZ, a corpus replayer otherwise.
        .target(name: "CFuzzDriver", path: "Tests/Fuzz/CFuzzDriver"),
        .executableTarget(
            name: "cairn-fuzz",
            dependencies: ["CairnSpool", "CairnLLMWire", "CFuzzDriver", .product(name: "SystemPackage", package: "swift-system")],
            path: "Tests/Fuzz/Sources",
            swiftSettings: strict
        ),
        .testTarget(name: "CairnSpoolTests", dependencies: ["CairnSpool", "CairnTesting"], swiftSettings: strict),
        .testTarget(
            name: "CairnTests",
            dependencies: ["Cairn", "CairnSpool", "CairnTesting", .product(name: "PropertyBased", package: "swift-property-based")],
            exclude: ["Fixtures"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CairnAgentsTests",
            dependencies: [
                "CairnAgents", "Cairn", "CairnSpool", "CairnTesting", "CairnMCP",
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            exclude: ["Fixtures"],
            swiftSettings: strict
        ),
        // The daemon's scheduler and timer queue, driven by the manual clock (no spool, no binary).
        .testTarget(name: "CairnDaemonTests", dependencies: ["CairnDaemon", "Cairn", "CairnTesting"], swiftSettings: strict),
        // End-to-end: the built binaries against temp spools (golden output, SIGKILL, rsync).
        .testTarget(
            name: "CairnEndToEndTests",
            dependencies: ["CairnSpool", "CairnTesting", "CairnWatch", "CSystemShims", .product(name: "MCP", package: "swift-sdk")],
            exclude: ["Fixtures"],
            swiftSettings: strict
        ),
    ],
    swiftLanguageModes: [.v6]
)
