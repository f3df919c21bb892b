import Cairn
import CairnSpool
import CairnTesting
import Foundation
import Testing

@testable import CairnAgents

/// The decoders at byte level, without a server: every prefix of every fixture.
@Suite struct WireFormatTests {
    func decoder(_ fixture: String) -> any StreamDecoder {
        fixture.hasPrefix("anthropic/") ? AnthropicStream() : OpenAIStream()
    }

    func decode(_ fixture: String, _ bytes: ArraySlice<UInt8>, chunk: Int = .max) throws -> LLMResponse {
        let d = decoder(fixture)
        var parser = SSEParser()
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let j = min(bytes.endIndex, i + min(chunk, bytes.endIndex - i))
            for e in parser.feed(bytes[i..<j]) { _ = try d.handle(e) }
            i = j
        }
        return try d.response(model: "p:m")
    }

    /// A stream cut at any byte — mid-line, mid-event, between events — is never an answer.
    /// (One pass: the bytes are fed one at a time, and before each the decoder is asked for
    /// its answer; `response` does not change its state.)
    @Test(arguments: Conformance.streaming)
    func everyPrefixOfAStreamIsIncomplete(_ fixture: String) throws {
        let b = Conformance.bytes(fixture)
        let errorKind = Conformance.expected[fixture]?["error"]?.stringValue
        let d = decoder(fixture)
        var parser = SSEParser()
        var thrown: LLMError? = nil
        for cut in 0..<b.count {
            do {
                let r = try d.response(model: "p:m")
                Issue.record("\(fixture) cut at byte \(cut) of \(b.count) gave an answer: \(r)")
            } catch let e as LLMError {
                #expect(e.kind == .incomplete, "\(fixture) cut at byte \(cut): \(e)")
            }
            do {
                for e in parser.feed(b[cut...cut]) { _ = try d.handle(e) }
            } catch let e as LLMError {
                #expect(cut == b.count - 1, "\(fixture): an error before the last event: \(e)")
                thrown = e
            }
        }
        // Whole, fed in one go or in chunks of any size: the documented outcome.
        for chunk in [0, 2, 7, 64, Int.max] {
            do {
                let r: LLMResponse
                if chunk == 0 {
                    if let thrown { throw thrown }
                    r = try d.response(model: "p:m")
                } else {
                    r = try decode(fixture, b[...], chunk: chunk)
                }
                if let want = Conformance.expected[fixture]?["answer"] { Conformance.check(r, want, "\(fixture) in chunks of \(chunk)") } else { Issue.record("\(fixture): expected \(errorKind ?? "?"), got \(r)") }
            } catch let e as LLMError {
                #expect(e.kind.rawValue == errorKind, "\(fixture) in chunks of \(chunk): \(e)")
            }
        }
    }

    /// A JSON body cut at any byte is not an answer either.
    @Test(arguments: Conformance.plain)
    func everyPrefixOfAJSONBodyIsRefused(_ fixture: String) throws {
        let b = Conformance.bytes(fixture)
        let whole = String(decoding: b, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).utf8.count
        let parse: (JSONValue) throws -> LLMResponse = fixture.hasPrefix("anthropic/")
            ? { try AnthropicProvider.parse($0, model: "p:m") } : { try OpenAICompatibleProvider.parse($0, model: "p:m") }
        for cut in 0..<whole {
            let reply = HTTPTransport.Reply(status: 200, contentType: "application/json", body: Data(b[0..<cut]), streamed: false)
            #expect(throws: LLMError.self, "\(fixture) cut at byte \(cut)") {
                try HTTPTransport.decode(reply, asked: false, decoder: self.decoder(fixture), model: "p:m", parseJSON: parse)
            }
        }
        let reply = HTTPTransport.Reply(status: 200, contentType: "application/json", body: Data(b), streamed: false)
        Conformance.check(try HTTPTransport.decode(reply, asked: false, decoder: decoder(fixture), model: "p:m", parseJSON: parse), Conformance.expected[fixture]!["answer"]!, fixture)
    }

    @Test func serverSentEventsFollowTheSpec() {
        var p = SSEParser()
        let text = ": a comment\r\nevent: one\r\ndata: first line\r\ndata:second line\r\nid: 7\r\n\r\ndata: x\r\rdata: {\"no\": \"blank line yet\"}\n"
        let events = p.feed(Array(text.utf8))
        #expect(events == [SSEEvent(name: "one", data: "first line\nsecond line"), SSEEvent(name: nil, data: "x")])
        #expect(p.feed(Array("\n".utf8)) == [SSEEvent(name: nil, data: "{\"no\": \"blank line yet\"}")])
    }

    /// The field ends at the first colon byte and one space byte is dropped, whatever
    /// follows: a combining mark after either used to join it into one Character, so the
    /// line lost its field (`data:\u{301}…` was ignored) or kept its space (found by the
    /// `sse` fuzz target against a byte-level reading of the spec).
    @Test func fieldsSplitAtTheColonByteEvenBeforeACombiningMark() {
        var p = SSEParser()
        let events = p.feed(Array("data:\u{301}x\n\nevent: \u{301}e\ndata: \u{301}y\n\n".utf8))
        #expect(events == [SSEEvent(name: nil, data: "\u{301}x"), SSEEvent(name: "\u{301}e", data: "\u{301}y")])
    }

    @Test func redactionReplacesEveryOccurrenceAndLeavesShortSecretsAlone() {
        let r = Redactor(["sk-0123456789", "short"])
        #expect(r.apply("key sk-0123456789 and again sk-0123456789!") == "key [redacted] and again [redacted]!")
        #expect(r.apply(["a": ["b": "Bearer sk-0123456789"]] as JSONValue) == ["a": ["b": "Bearer [redacted]"]])
        #expect(r.apply("short stays") == "short stays")
    }

    /// The end markers alone are not enough: each protocol's stop reason must have come too.
    @Test func anEndMarkerWithoutAStopReasonIsIncomplete() throws {
        let openai = OpenAIStream()
        _ = try openai.handle(SSEEvent(name: nil, data: #"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#))
        _ = try openai.handle(SSEEvent(name: nil, data: "[DONE]"))
        #expect(throws: LLMError.self) { try openai.response(model: "p:m") }
        let anthropic = AnthropicStream()
        _ = try anthropic.handle(SSEEvent(name: "message_start", data: #"{"type":"message_start","message":{"usage":{"input_tokens":3}}}"#))
        _ = try anthropic.handle(SSEEvent(name: "message_stop", data: #"{"type":"message_stop"}"#))
        do {
            _ = try anthropic.response(model: "p:m")
            Issue.record("answered without a message_delta")
        } catch let e as LLMError {
            #expect(e.kind == .incomplete && e.message.contains("message_delta"))
        }
    }

    /// Token counts are the server's word: Int64.max from a broken or hostile server was
    /// recorded as is, and the first sum over the run's records (state.json's tokens, the
    /// budget check) overflowed and trapped — the daemon died of a model's answer. Counts
    /// are whole numbers from 0 to 10^12; anything else counts as 0.
    @Test func tokenCountsFromTheServerAreBounded() throws {
        let max = "9223372036854775807"
        let plain = try OpenAICompatibleProvider.parse(try JSONValue.parse(#"{"choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":\#(max),"completion_tokens":-5}}"#), model: "p:m")
        #expect(plain.usage == TokenUsage(input: 0, output: 0))
        let a = try AnthropicProvider.parse(try JSONValue.parse(#"{"type":"message","content":[{"type":"text","text":"x"}],"stop_reason":"end_turn","usage":{"input_tokens":\#(max),"output_tokens":12}}"#), model: "p:m")
        #expect(a.usage == TokenUsage(input: 0, output: 12))
        let openai = OpenAIStream()
        _ = try openai.handle(SSEEvent(name: nil, data: #"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":\#(max),"completion_tokens":\#(max)}}"#))
        _ = try openai.handle(SSEEvent(name: nil, data: "[DONE]"))
        #expect(try openai.response(model: "p:m").usage == TokenUsage(input: 0, output: 0))
        let anthropic = AnthropicStream()
        _ = try anthropic.handle(SSEEvent(name: "message_start", data: #"{"type":"message_start","message":{"usage":{"input_tokens":\#(max),"output_tokens":\#(max)}}}"#))
        _ = try anthropic.handle(SSEEvent(name: "message_delta", data: #"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":\#(max),"input_tokens":7}}"#))
        _ = try anthropic.handle(SSEEvent(name: "message_stop", data: #"{"type":"message_stop"}"#))
        #expect(try anthropic.response(model: "p:m").usage == TokenUsage(input: 7, output: 0))
    }

    /// An error object in a 200 JSON body is mapped like an in-stream error.
    @Test func anErrorInA200BodyIsMapped() {
        do {
            _ = try AnthropicProvider.parse(["type": "error", "error": ["type": "overloaded_error", "message": "Overloaded"]], model: "p:m")
            Issue.record("no error")
        } catch let e as LLMError {
            #expect(e.kind == .server && e.retryable)
        } catch { Issue.record("\(error)") }
        do {
            _ = try OpenAICompatibleProvider.parse(["error": ["type": "invalid_request_error", "code": "invalid_api_key", "message": "bad key"]], model: "p:m")
        } catch let e as LLMError {
            #expect(e.kind == .client && !e.retryable)
        } catch { Issue.record("\(error)") }
    }

    /// A durable wait's `waiting_for` is computed again by every execution that resumes it:
    /// it must come out identical (a due time formatted, parsed back and formatted again
    /// could be off by a millisecond, and the run would look woken to a different wait).
    @Test func aResumedWaitIsTheSameWait() {
        var rng = SeededRandom("aResumedWaitIsTheSameWait")
        for _ in 0..<2000 {
            var s = LLMCallState(started: Date())
            s.sent = 1
            s.attempt = 1
            s.lastError = LLMError(.rateLimited, "slow down", status: 429, retryAfter: 600)
            s.until = LLMCallState.due(Date(timeIntervalSince1970: Double.random(in: 1.7e9..<1.9e9, using: &rng)))
            guard let back = LLMCallState(s.json) else { Issue.record("state does not round-trip: \(s.json) (seed \(rng.seed))"); return }
            let first = WorkflowContext.retryWait("call", s, ["p:m"]), again = WorkflowContext.retryWait("call", back, ["p:m"])
            if first != again { Issue.record("\(first) became \(again) (seed \(rng.seed))"); return }
        }
    }
}
