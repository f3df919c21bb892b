import CairnMCP
import Foundation
import Testing

/// `cairn mcp` waits at its exit for the requests it read to be answered; the SDK answers no
/// request its client cancelled, and one cancelled request held the exit for 300 s (found by
/// a review). A cancelled request counts as answered.
@Suite struct PipeTransportTests {
    @Test func aCancelledRequestIsNotWaitedForAtTheExit() async throws {
        let toServer = Pipe(), fromServer = Pipe()
        let transport = PipeTransport(input: toServer.fileHandleForReading.fileDescriptor, output: fromServer.fileHandleForWriting.fileDescriptor)
        try await transport.connect()
        toServer.fileHandleForWriting.write(Data(#"{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "why"}}"#.utf8 + [0x0A]))
        toServer.fileHandleForWriting.write(Data(#"{"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}"#.utf8 + [0x0A]))
        var messages = transport.receive().makeAsyncIterator()
        _ = try await messages.next()
        _ = try await messages.next()
        let start = ContinuousClock.now
        await transport.waitForReplies(limit: .seconds(30))
        let waited = ContinuousClock.now - start
        #expect(waited < .seconds(5), "waited \(waited) for a request its client cancelled")
    }
}
