import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Issue 15: `cairn daemon --metrics-file` — the Prometheus text file node_exporter's
/// textfile collector reads — scraped while a workload runs, its counts checked against the
/// journals (the truth they are counted from).
@Suite(.serialized) struct MetricsTests {
    /// `name{labels} value` lines of a Prometheus text file, by name and label set.
    static func parse(_ text: String) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let v = Double(line[line.index(after: space)...]) else { continue }
            out[String(line[..<space])] = v
        }
        return out
    }

    static func sum(_ m: [String: Double], _ name: String, _ labels: [String] = []) -> Double {
        m.filter { k, _ in (k == name || k.hasPrefix(name + "{")) && labels.allSatisfy { k.contains($0) } }.values.reduce(0, +)
    }

    @Test func theMetricsFileAgreesWithTheJournals() async throws {
        let t = try TempSpool()
        let script = t.spool.workflowsDirectory.appending("counted").string
        try "#!/bin/sh\nset -e\nfor i in 1 2 3; do cairn step s$i -- true; done\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let file = t.path.appending("cairn.prom").string
        let d = try await DaemonProcess(spool: t.spool, args: ["--metrics-file", file, "--metrics-listen", "127.0.0.1:0"])
        defer { d.stopBlocking() }
        var runs: [String] = []
        for i in 0..<12 {
            runs.append(try t.submit("counted", input: ["i": .int(Int64(i))] as JSONValue))
        }
        // Scraped while the runs run: never more than the journals hold.
        var scrapes = 0
        while runs.contains(where: { t.status($0) != .completed }) {
            if let text = try? String(contentsOfFile: file, encoding: .utf8) {
                let m = Self.parse(text)
                let recorded = try runs.reduce(0) { n, r in n + (try t.spool.journal(r).load().filter { $0.kind == .step }.count) }
                #expect(Self.sum(m, "cairn_steps_total") <= Double(recorded), "counted only what is recorded")
                scrapes += 1
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let gated = try t.submit("gate", input: ["who": "m"] as JSONValue, id: "gated-1")
        let approved = try t.submit("gate", input: ["who": "n"] as JSONValue, id: "gated-2")
        try await t.waitFor(gated, .waiting)
        try await t.waitFor(approved, .waiting)
        try t.drop("approvals/go.approved", in: approved)
        try await t.waitFor(approved, .completed)
        // Within the writer's second, the file holds the final counts.
        var m: [String: Double] = [:]
        let steps = try (runs + [gated, approved]).reduce(0) { n, r in n + (try t.spool.journal(r).load().filter { $0.kind == .step }.count) }
        try await waitUntil("the metrics file catches up") {
            m = Self.parse((try? String(contentsOfFile: file, encoding: .utf8)) ?? "")
            return Self.sum(m, "cairn_steps_total") == Double(steps) && Self.sum(m, "cairn_approvals_total") == 1
        }
        #expect(steps == 12 * 3 + 2, "three steps a script run, one a gate run: \(steps)")
        #expect(Self.sum(m, "cairn_steps_total", ["workflow=\"counted\""]) == 36)
        #expect(Self.sum(m, "cairn_runs_finished_total", ["workflow=\"counted\"", "status=\"completed\""]) == 12)
        #expect(Self.sum(m, "cairn_runs_started_total") == 14)
        #expect(Self.sum(m, "cairn_approvals_total", ["decision=\"approved\""]) == 1)
        #expect(Self.sum(m, "cairn_approval_wait_seconds_count") == 1, "\(m.keys.filter { $0.contains("approval") })")
        #expect(Self.sum(m, "cairn_runs", ["status=\"waiting\""]) == 1 && Self.sum(m, "cairn_runs", ["status=\"completed\""]) == 13)
        #expect(Self.sum(m, "cairn_runs_waiting_for_person") == 1 && Self.sum(m, "cairn_runs_waiting_for_person_over_1h") == 0)
        #expect(Self.sum(m, "cairn_step_duration_seconds_count") == Double(steps))
        #expect(Self.sum(m, "cairn_daemon_wakeups_total") > 0 && Self.sum(m, "cairn_daemon_rescans_total", ["reason=\"start\""]) == 1)
        // The same figures over HTTP (`--metrics-listen`, port 0: the log names the port).
        let url = try #require(d.log.split(separator: "\n").first { $0.contains("serving metrics") }?.split(separator: "url=").last.map(String.init), "\(d.log.prefix(1500))")
        let scraped = try Self.http("GET", url)
        #expect(scraped.status == 200 && scraped.type.hasPrefix("text/plain; version=0.0.4"), "\(scraped)")
        let overHTTP = Self.parse(scraped.body)
        #expect(Self.sum(overHTTP, "cairn_steps_total") == Double(steps) && Self.sum(overHTTP, "cairn_runs", ["status=\"completed\""]) == 13, "\(scraped.body.prefix(600))")
        #expect(try Self.http("GET", url.replacingOccurrences(of: "/metrics", with: "/")).status == 404)
        #expect(try Self.http("POST", url).status == 405)
        // Never half a file: every scrape parsed (the file is replaced by a rename).
        #expect(scrapes > 0)
        let text = try String(contentsOfFile: file, encoding: .utf8)
        #expect(text.contains("# TYPE cairn_steps_total counter"), "\(text.prefix(400))")
        // No temporary file left beside it.
        let left = try FileManager.default.contentsOfDirectory(atPath: t.path.string).filter { $0.hasSuffix(".tmp") }
        #expect(left.isEmpty, "\(left)")
    }

    /// A run that failed and was retried (`cairn retry` appends to the same journal): its
    /// records were counted again from the start once it ran again (found by a review).
    @Test func aRetriedRunIsNotCountedTwice() async throws {
        let t = try TempSpool()
        let flag = t.path.appending("go").string
        let script = t.spool.workflowsDirectory.appending("twice").string
        try "#!/bin/sh\nset -e\ncairn step s1 -- true\ntest -f \(flag) || exit 3\ncairn step s2 -- true\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let file = t.path.appending("cairn.prom").string
        let d = try await DaemonProcess(spool: t.spool, args: ["--metrics-file", file])
        defer { d.stopBlocking() }
        let r = try t.submit("twice", input: 0)
        try await t.waitFor(r, .failed)
        _ = FileManager.default.createFile(atPath: flag, contents: Data())
        let retried = try Binary.cairn("retry", r, spool: t.spool)
        #expect(retried.code == 0, "\(retried.stderr)")
        try await t.waitFor(r, .completed)
        let steps = try t.spool.journal(r).load().filter { $0.kind == .step }.count
        #expect(steps == 2, "s1 once (replayed after the retry), s2 once")
        var m: [String: Double] = [:]
        try await waitUntil("the metrics file catches up") {
            m = Self.parse((try? String(contentsOfFile: file, encoding: .utf8)) ?? "")
            return Self.sum(m, "cairn_runs_finished_total", ["status=\"completed\""]) == 1
        }
        try await Task.sleep(for: .seconds(2))
        m = Self.parse((try? String(contentsOfFile: file, encoding: .utf8)) ?? "")
        #expect(Self.sum(m, "cairn_steps_total") == Double(steps), "\(m.filter { $0.key.hasPrefix("cairn_steps") || $0.key.hasPrefix("cairn_runs_") })")
        #expect(Self.sum(m, "cairn_runs_started_total") == 1 && Self.sum(m, "cairn_runs_finished_total", ["status=\"failed\""]) == 1)
    }

    /// Whoever can reach --metrics-listen cannot starve the daemon (found by an attack:
    /// 20,000 half-sent requests took every descriptor and runs stopped): connections past
    /// the limit are closed at once, silent ones after 10 s, and runs advance meanwhile.
    @Test func halfSentRequestsNeitherStarveTheDaemonNorStayOpen() async throws {
        let t = try TempSpool()
        let d = try await DaemonProcess(spool: t.spool, args: ["--metrics-listen", "127.0.0.1:0"])
        defer { d.stopBlocking() }
        let url = try #require(d.log.split(separator: "\n").first { $0.contains("serving metrics") }?.split(separator: "url=").last.map(String.init))
        let port = try #require(Int(url.split(separator: ":").last?.split(separator: "/").first ?? ""))
        // 200 connections, each sending half a request line and then nothing, held open by
        // a Python process; it reports how many the server closed, and when.
        let py = """
            import socket, sys, time
            socks = []
            for i in range(200):
                s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
                s.sendall(b"GET /metr")
                s.setblocking(False)
                socks.append(s)
            def closed(s):
                try:
                    return s.recv(1) == b""
                except BlockingIOError:
                    return False
                except OSError:
                    return True
            time.sleep(1)
            print("closed-at-once", sum(closed(s) for s in socks), flush=True)
            t0 = time.time()
            while time.time() - t0 < 60 and not all(closed(s) for s in socks):
                time.sleep(0.2)
            print("all-closed-after", round(time.time() - t0, 1), sum(closed(s) for s in socks), flush=True)
            # All closed: two more: one sends a
            # header without end (closed past 256 KiB), one a byte every 2 s (closed at 30 s).
            flood = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
            flood.settimeout(20)
            sent = 0
            try:
                flood.sendall(b"GET /metrics HTTP/1.1\\r\\nX: ")
                while sent < 64 * 1024 * 1024:
                    flood.sendall(b"a" * 65536)
                    sent += 65536
            except OSError:
                pass
            print("flood-closed-after-bytes", sent, flush=True)
            trickle = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
            trickle.sendall(b"GET /metrics HTTP/1.1\\r\\n")
            trickle.setblocking(False)
            t0 = time.time()
            try:
                while time.time() - t0 < 60:
                    trickle.sendall(b"X")
                    time.sleep(2)
                    if closed(trickle):
                        break
            except OSError:
                pass
            print("trickle-closed-after", round(time.time() - t0), flush=True)
            """
        let holder = try Binary.start("/usr/bin/python3", ["-c", py, String(port)])
        try await Task.sleep(for: .seconds(2))
        // Meanwhile a run is advanced as ever, and a scrape past the limit is refused, not hung.
        let r = try t.submit("demo-refund", input: ["order": "O-1", "amount": 1, "reason": "x"] as JSONValue)
        try await t.waitFor(r, .waiting, timeout: 30)
        let out = await Binary.finish(holder).stdout
        let once = out.split(separator: "\n").first { $0.hasPrefix("closed-at-once") }.flatMap { Int($0.split(separator: " ").last ?? "") } ?? -1
        #expect(once >= 200 - 16, "past the limit of 16, connections are closed at once: \(out)")
        let after = out.split(separator: "\n").first { $0.hasPrefix("all-closed-after") }?.split(separator: " ") ?? []
        #expect(after.count == 3 && after[2] == "200" && (Double(after[1]) ?? 99) <= 30, "every silent connection closed within the idle timeout: \(out)")
        let flood = out.split(separator: "\n").first { $0.hasPrefix("flood-closed-after-bytes") }.flatMap { Int($0.split(separator: " ").last ?? "") } ?? -1
        #expect(flood >= 0 && flood < 16 * 1024 * 1024, "a header without end is cut off: \(out)")
        let trickle = out.split(separator: "\n").first { $0.hasPrefix("trickle-closed-after") }.flatMap { Int($0.split(separator: " ").last ?? "") } ?? -1
        #expect(trickle >= 20 && trickle <= 45, "a byte every 2 s keeps a connection 30 s at most: \(out)")
        // Afterwards, a scrape works.
        #expect(try Self.http("GET", url).status == 200)
    }

    /// One HTTP request with Python's urllib: status, content type, body.
    static func http(_ method: String, _ url: String) throws -> (status: Int, type: String, body: String) {
        let py = """
            import sys, urllib.request, urllib.error
            req = urllib.request.Request(sys.argv[2], method=sys.argv[1], data=b"" if sys.argv[1] == "POST" else None)
            try:
                r = urllib.request.urlopen(req, timeout=20)
                print(r.status); print(r.headers.get("Content-Type")); sys.stdout.write(r.read().decode())
            except urllib.error.HTTPError as e:
                print(e.code); print(e.headers.get("Content-Type")); sys.stdout.write(e.read().decode())
            """
        let r = try Binary.run("/usr/bin/python3", ["-c", py, method, url])
        let lines = r.stdout.split(separator: "\n", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 2, let status = Int(lines[0]) else { return (0, "", r.stdout + r.stderr) }
        return (status, lines[1], lines.count > 2 ? lines[2] : "")
    }
}
