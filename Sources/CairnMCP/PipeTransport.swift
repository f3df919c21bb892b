import Foundation
import Logging
import MCP

/// MCP's stdio transport over two pipe descriptors (newline-delimited JSON-RPC), read by a
/// thread blocked in read(2).
///
/// The SDK's own `StdioTransport` (swift-sdk 0.12.1) sets its descriptors non-blocking and
/// reads in a loop that sleeps 10 ms whenever nothing is there: 1.4–1.7 % of a core for an
/// idle `cairn mcp`, and the same in a daemon for every open tool-server connection — where
/// Cairn's promise is an idle daemon at 0 %. This one sleeps in the kernel until a byte
/// arrives. At the end of the input its stream ends with `MCPError.connectionClosed`, not
/// quietly: the SDK's client loops on a stream that just finishes (its `repeat … while true`
/// asks for the same finished stream again, at 100 % CPU), and ends on an error.
public actor PipeTransport: Transport {
    public nonisolated let logger: Logger
    private let input: Int32
    private let output: Int32
    private let stream: AsyncThrowingStream<Data, any Error>
    private let continuation: AsyncThrowingStream<Data, any Error>.Continuation
    private var started = false
    private let screen: (@Sendable (Data) -> Data?)?
    /// Requests read and not yet answered (by their JSON-RPC id), for `waitForReplies`.
    private let unanswered = Unanswered()

    final class Unanswered: @unchecked Sendable {
        private let lock = NSLock()
        private var ids: [String: Int] = [:]
        func add(_ id: String) { lock.withLock { ids[id, default: 0] += 1 } }
        func remove(_ id: String) { lock.withLock { if let n = ids[id] { ids[id] = n > 1 ? n - 1 : nil } } }
        var count: Int { lock.withLock { ids.values.reduce(0, +) } }
    }

    /// The id of a request (a message with a method and an id), or of a response (an id,
    /// no method), as text.
    static func messageID(_ data: Data) -> (id: String, isRequest: Bool)? {
        guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let id = o["id"], !(id is NSNull) else { return nil }
        return ("\(id)", o["method"] != nil)
    }

    /// The request a `notifications/cancelled` names: the SDK sends no reply to a request
    /// its client cancelled, so it is answered as far as waiting goes (found by a review: a
    /// client that cancelled one request held `cairn mcp` 300 s at its exit).
    static func cancelledID(_ data: Data) -> String? {
        guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any], o["method"] as? String == "notifications/cancelled",
              let params = o["params"] as? [String: Any], let id = params["requestId"], !(id is NSNull) else { return nil }
        return "\(id)"
    }
    /// The longest message read (a line without its end past this ends the connection).
    public static let messageLimit = 16 << 20

    /// `input` is read, `output` written; both must be blocking descriptors (pipes, a tty).
    /// `screen` sees each message before the SDK does: when it returns a reply (a JSON-RPC
    /// error), that is sent instead and the message goes no further.
    public init(input: Int32 = STDIN_FILENO, output: Int32 = STDOUT_FILENO, logger: Logger? = nil, screen: (@Sendable (Data) -> Data?)? = nil) {
        self.input = input
        self.output = output
        self.screen = screen
        self.logger = logger ?? Logger(label: "cairn.mcp.pipe", factory: { _ in SwiftLogNoOpLogHandler() })
        (stream, continuation) = AsyncThrowingStream.makeStream(of: Data.self, throwing: (any Error).self)
    }

    public func connect() async throws {
        guard !started else { return }
        started = true
        let fd = input, out = continuation, screen = self.screen, reply = output, unanswered = self.unanswered
        let thread = Thread {
            var pending = Data()
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = read(fd, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 {
                    out.finish(throwing: MCPError.connectionClosed)
                    return
                }
                // Only the new bytes are searched for line ends (a long message arriving in
                // many reads costs its length, not its length squared).
                var from = pending.count
                pending.append(contentsOf: buf[0..<n])
                var lineStart = 0
                while let nl = pending[(pending.startIndex + from)...].firstIndex(of: UInt8(ascii: "\n")) {
                    let line = pending[(pending.startIndex + lineStart)..<nl]
                    if !line.isEmpty {
                        if let screen, let refusal = screen(Data(line)) {
                            PipeTransport.writeAll(reply, refusal + Data([UInt8(ascii: "\n")]))
                        } else {
                            if let m = PipeTransport.messageID(Data(line)) {
                                if m.isRequest { unanswered.add(m.id) }
                            } else if let id = PipeTransport.cancelledID(Data(line)) {
                                unanswered.remove(id)
                            }
                            out.yield(Data(line))
                        }
                    }
                    lineStart = nl + 1 - pending.startIndex
                    from = lineStart
                }
                if lineStart > 0 { pending = Data(pending[(pending.startIndex + lineStart)...]) }
                if pending.count > PipeTransport.messageLimit {
                    out.finish(throwing: MCPError.parseError("a message longer than \(PipeTransport.messageLimit) bytes"))
                    return
                }
            }
        }
        thread.name = "cairn-mcp-read"
        thread.start()
    }

    public func disconnect() async {
        continuation.finish()
    }

    public func send(_ data: Data) async throws {
        if let m = Self.messageID(data), !m.isRequest { unanswered.remove(m.id) }
        var message = data
        message.append(UInt8(ascii: "\n"))
        guard Self.writeAll(output, message) else { throw MCPError.transportError(POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)) }
    }

    /// One message written whole, under a lock (the reader thread's refusals and the
    /// server's replies must not interleave).
    @discardableResult
    static func writeAll(_ fd: Int32, _ data: Data) -> Bool {
        writeLock.lock()
        defer { writeLock.unlock() }
        return data.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                off += n
            }
            return true
        }
    }

    private static let writeLock = NSLock()

    /// Waits (up to `limit`) until every request read has been answered: a server whose
    /// client closed its end answers what it was asked before it exits.
    public func waitForReplies(limit: Duration) async {
        let deadline = ContinuousClock.now + limit
        while unanswered.count > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    public nonisolated func receive() -> AsyncThrowingStream<Data, any Error> { stream }
}

/// Cairn's JSON values and the SDK's `Value`, through JSON text (one conversion for the
/// server and the client).
public enum MCPValues {
    public static func value(_ json: String) throws -> MCP.Value {
        try JSONDecoder().decode(MCP.Value.self, from: Data(json.utf8))
    }

    /// The value as JSON text (compact).
    public static func text(_ v: MCP.Value) throws -> Data {
        try JSONEncoder().encode(v)
    }
}
