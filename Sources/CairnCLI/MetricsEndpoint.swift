#if OTel
import NIOCore
import NIOHTTP1
import NIOPosix
#endif
import Foundation
import Synchronization

/// `cairn daemon --metrics-listen HOST:PORT`: the same metrics as `--metrics-file`, for a
/// Prometheus server to scrape at `GET /metrics` (SwiftNIO's HTTP/1 server; built with the
/// `OTel` trait, the network observability one, like the OTLP exporter). Rendered per scrape;
/// nothing else is served (404), and nothing but GET and HEAD (405).
///
/// Whoever can reach the port must not be able to starve the daemon (found by an attack:
/// 20,000 half-sent requests took every descriptor, and runs stopped advancing): at most
/// `connectionLimit` connections at once (more are closed at once), a connection silent for
/// `idleTimeout` is closed, and one connection is answered at most `requestsPerConnection`
/// times (pipelined requests a client never reads cannot pile up answers). A second attack:
/// a byte every 5 s kept 16 connections open and the endpoint unreachable, and one header
/// streamed without end grew to 125 MB — so a connection also lives at most `lifetime` and
/// may send at most `bytesPerConnection`.
enum MetricsEndpoint {
    /// HOST:PORT (`[::1]:PORT` for IPv6), checked; nil with why not.
    static func parse(_ s: String) -> (host: String, port: Int)? {
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(s[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains(" ") else { return nil }
        return (host, port)
    }

    /// A running endpoint: its bound port (PORT 0 picks one), closed by `stop()`.
    final class Running: Sendable {
        let port: Int
        private let close: @Sendable () -> Void
        init(port: Int, close: @escaping @Sendable () -> Void) {
            self.port = port
            self.close = close
        }
        func stop() { close() }
    }

    static let connectionLimit = 16
    static let idleTimeout: TimeAmount = .seconds(10)
    static let requestsPerConnection = 100
    static let lifetime: TimeAmount = .seconds(30)
    static let bytesPerConnection = 256 * 1024

    static func start(host: String, port: Int, render: @escaping @Sendable () -> String) throws -> Running {
        #if OTel
        let open = Atomic<Int>(0)
        let channel: any Channel
        do {
            channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 64)
            .childChannelInitializer { channel in
                guard open.add(1, ordering: .relaxed).newValue <= MetricsEndpoint.connectionLimit else {
                    open.subtract(1, ordering: .relaxed)
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in open.subtract(1, ordering: .relaxed) }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Budget())
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: MetricsEndpoint.idleTimeout))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(Handler(render: render))
                }
            }
            .bind(host: host, port: port).wait()
        } catch let e as IOError {
            // NIO's description names its own call; the reason is what a person needs.
            throw CLIError(.failure, "cannot listen on \(host):\(port): \(String(cString: strerror(e.errnoCode)))")
        }
        let bound = channel.localAddress?.port ?? port
        return Running(port: bound) { _ = try? channel.close().wait() }
        #else
        throw CLIError(.usage, "this cairn was built without the OTel trait: --metrics-listen is not in it (--metrics-file is)")
        #endif
    }

    #if OTel
    /// What one connection may take: `lifetime`, `bytesPerConnection`; then it is closed.
    final class Budget: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer
        private var received = 0

        func channelActive(context: ChannelHandlerContext) {
            let channel = context.channel
            context.eventLoop.scheduleTask(in: MetricsEndpoint.lifetime) { channel.close(promise: nil) }
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += unwrapInboundIn(data).readableBytes
            guard received <= MetricsEndpoint.bytesPerConnection else {
                context.close(promise: nil)
                return
            }
            context.fireChannelRead(data)
        }
    }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let render: @Sendable () -> String
        private var head: HTTPRequestHead?
        private var answered = 0

        init(render: @escaping @Sendable () -> String) { self.render = render }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if event is IdleStateHandler.IdleStateEvent {
                context.close(promise: nil)
            } else {
                context.fireUserInboundEventTriggered(event)
            }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h): head = h
            case .body: break
            case .end:
                guard let h = head else { return }
                head = nil
                answered += 1
                let last = !h.isKeepAlive || answered >= MetricsEndpoint.requestsPerConnection
                let path = h.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? h.uri
                let plain = "text/plain; charset=utf-8"
                if h.method != .GET && h.method != .HEAD {
                    respond(context, h, .methodNotAllowed, plain, "GET /metrics\n", last: last)
                } else if path != "/metrics" {
                    respond(context, h, .notFound, plain, "the metrics are at /metrics\n", last: last)
                } else {
                    // Rendering reads the waiting runs' state.json: on NIO's blocking pool, not
                    // on the event loop, which the LLM client shares. (The pipelining handler
                    // holds the next request until this answer ends.)
                    let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                    let render = self.render
                    NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) { render() }.whenComplete { result in
                        let (handler, context) = bound.value
                        switch result {
                        case .success(let body): handler.respond(context, h, .ok, "text/plain; version=0.0.4; charset=utf-8", body, last: last)
                        case .failure: handler.respond(context, h, .serviceUnavailable, plain, "the daemon is stopping\n", last: true)
                        }
                    }
                }
            }
        }

        private func respond(_ context: ChannelHandlerContext, _ h: HTTPRequestHead, _ status: HTTPResponseStatus, _ type: String, _ body: String, last: Bool) {
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: type)
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            if status == .methodNotAllowed { headers.add(name: "Allow", value: "GET, HEAD") }
            if last { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: status, headers: headers))), promise: nil)
            if h.method != .HEAD {
                var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
                buffer.writeString(body)
                context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            }
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if last { channel.close(promise: nil) }
            }
        }
    }
    #endif
}
