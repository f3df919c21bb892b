import CairnSpool
import CairnTesting
import Foundation
import SystemPackage
import Testing

/// A few KB of deeply nested JSON dropped by anyone in the group once cost the daemon
/// minutes of CPU per wake (an outside attack: 10 values 500 deep in the inbox blocked it
/// for 38 s; 5 in an event, 31 s). Now such drops are refused at once, and the deepest
/// allowed shape costs little.
@Suite struct HostileJSONTests {
    static func deep500() -> String { String(repeating: "[", count: 500) + String(repeating: "]", count: 500) }

    @Test func deeplyNestedDropsAreRefusedAtOnceAndTheDaemonStaysResponsive() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        func drop(_ content: String, at path: FilePath) throws {
            let tmp = path.removingLastComponent().appending(".x-\(UUID().uuidString)").string
            try content.write(toFile: tmp, atomically: false, encoding: .utf8)
            #expect(rename(tmp, path.string) == 0)
        }
        // The inbox: ten 500-deep arrays, then an ordinary submission behind it.
        let hostile = "{\"workflow\":\"gate\",\"id\":\"wide10\",\"input\":[" + (0..<10).map { _ in Self.deep500() }.joined(separator: ",") + "]}"
        let started = Date()
        try drop(hostile, at: t.spool.inboxDirectory.appending("w10.json"))
        try drop(#"{"workflow": "nap", "input": 0, "id": "after"}"#, at: t.spool.inboxDirectory.appending("after.json"))
        try await t.waitFor("after", .completed, timeout: 20)
        let inboxTook = Date().timeIntervalSince(started)
        try await waitUntil("w10.json rejected", timeout: 20) { DurableFile.exists(t.spool.rejectedDirectory.appending("w10.error.json")) }
        let why = try DurableFile.readJSON(t.spool.rejectedDirectory.appending("w10.error.json"))["error"]?.stringValue ?? ""
        #expect(why.contains("levels deep"), "\(why)")
        #expect(!t.spool.runExists("wide10"))

        // An event: five 500-deep arrays are refused; a real event after it is delivered.
        let r = try Binary.run("cairn-fixtures", ["submit", "listen", "--id", "lis", "--input", "-", "--spool", t.spool.root.string], stdin: "\"ev\"")
        #expect(r.code == 0, "\(r.stderr)")
        try await t.waitFor("lis", .waiting)
        let eventStarted = Date()
        try drop("[" + (0..<5).map { _ in Self.deep500() }.joined(separator: ",") + "]", at: t.spool.run("lis").directory.appending("events/ev.json"))
        try await waitUntil("the deep event refused", timeout: 20) { DurableFile.exists(t.spool.run("lis").directory.appending("events/ev.json.error.json")) }
        let eventTook = Date().timeIntervalSince(eventStarted)
        let s = try Binary.run("cairn-fixtures", ["signal", "lis", "ev", "--data", "-", "--spool", t.spool.root.string], stdin: "{\"ok\": true}")
        #expect(s.code == 0, "\(s.stderr)")
        try await t.waitFor("lis", .completed, timeout: 20)
        #expect(try t.result("lis") == ["ok": true])

        // The deepest shape allowed (64 levels, arrays and objects alternating) as a gate's
        // input, 100 KB of it: accepted, and the run reaches its gate promptly.
        let deep64 = HostileJSON.alternatingNesting(61)  // + the submission, input and list: 64
        let wide = "{\"workflow\":\"gate\",\"id\":\"deep64\",\"input\":{\"who\":\"x\",\"list\":[" + Array(repeating: deep64, count: 100_000 / deep64.utf8.count).joined(separator: ",") + "]}}"
        let wideStarted = Date()
        try drop(wide, at: t.spool.inboxDirectory.appending("deep64.json"))
        try await t.waitFor("deep64", .waiting, timeout: 30)
        let wideTook = Date().timeIntervalSince(wideStarted)
        print(String(format: "HostileJSONTests: ten 500-deep values in the inbox rejected with the next submission done in %.2f s; a 500-deep event refused in %.2f s; %d KB of 64-deep values accepted and at the gate in %.2f s", inboxTook, eventTook, wide.utf8.count / 1024, wideTook))
    }

    /// A value shaped like the spool's own blob reference, dropped by a group member (an
    /// outside attack: an event `{"$blob": "sha256-<a blob of another run>", "bytes": 10}`, an
    /// inbox input `{"$blob": "sha256-000…"}`) was read as a file of the run's blobs/ — missing,
    /// so the run stayed `running` or `queued` with a log line every 1…60 s, for good. Now such a
    /// drop is refused where it enters, with the place in the value named; and the CLI refuses
    /// it, and a value nested too deep, before writing anything (it used to say "sent").
    @Test func blobShapedAndTooDeepValuesAreRefusedWhereTheyEnter() async throws {
        let t = try TempSpool()
        let root = t.spool.root.string
        let d = try await DaemonProcess(spool: t.spool)
        defer { d.stopBlocking() }
        let ref = #"{"$blob": "sha256-\#(String(repeating: "0", count: 64))", "bytes": 3}"#
        try DurableFile.drop(Data(#"{"workflow": "gate", "id": "x4", "input": {"who": \#(ref)}}"#.utf8), to: t.spool.inboxDirectory.appending("x4.json"))
        try await waitUntil("x4.json rejected") { DurableFile.exists(t.spool.rejectedDirectory.appending("x4.error.json")) }
        let why = try DurableFile.readJSON(t.spool.rejectedDirectory.appending("x4.error.json"))["error"]?.stringValue ?? ""
        #expect(why.contains("blob reference") && why.contains("input.who"), "\(why)")
        #expect(!t.spool.runExists("x4"))

        let r = try Binary.run("cairn-fixtures", ["submit", "listen", "--id", "x1", "--input", "-", "--spool", root], stdin: "\"ev\"")
        #expect(r.code == 0, "\(r.stderr)")
        try await t.waitFor("x1", .waiting)
        try DurableFile.drop(Data("[1, \(ref)]".utf8), to: t.spool.run("x1").directory.appending("events/ev.json"))
        try await waitUntil("the blob-shaped event refused") { DurableFile.exists(t.spool.run("x1").directory.appending("events/ev.json.error.json")) }
        #expect(t.status("x1") == .waiting)

        // The CLI: refused before anything is written, exit 1, the reason named.
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        for (what, args, stdin) in [
            ("signal", ["signal", "x1", "ev", "--data", "-"], "[1, \(ref)]"),
            ("signal", ["signal", "x1", "ev", "--data", "-"], deep),
            ("submit", ["submit", "gate", "--input", "-"], "{\"who\": \(ref)}"),
            ("submit", ["submit", "gate", "--input", "-"], String(repeating: "[", count: 1000) + String(repeating: "]", count: 1000)),
        ] {
            let c = try Binary.run("cairn-fixtures", args + ["--spool", root], stdin: stdin)
            #expect(c.code == 1 && (c.stderr.contains("blob reference") || c.stderr.contains("levels deep")), "\(what): \(c.code) \(c.stderr)")
        }
        let events = try FileManager.default.contentsOfDirectory(atPath: t.spool.run("x1").directory.appending("events").string)
        #expect(events.allSatisfy { !$0.hasPrefix("ev.") || $0.hasPrefix("ev.json") }, "the CLI wrote an event it refused: \(events)")
        let s = try Binary.run("cairn-fixtures", ["signal", "x1", "ev", "--data", "-", "--spool", root], stdin: "{\"ok\": true}")
        #expect(s.code == 0, "\(s.stderr)")
        try await t.waitFor("x1", .completed)
    }
}
