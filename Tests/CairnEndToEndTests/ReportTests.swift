import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Issue 15: `cairn report` and `cairn daemon --report-dir`, checked in a real headless
/// browser (Debian's chromium): the pages render, the elements that matter are there in the
/// DOM the browser built, and a screenshot is taken.
@Suite(.serialized) struct ReportTests {
    static let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// The DOM after the browser rendered `file`.
    static func dom(_ file: String) throws -> String {
        let r = try Binary.run("/usr/bin/timeout", ["60", chromium!, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "file://" + file])
        return r.stdout
    }

    /// For the tests of other users' directories: the users made, a spool in a scratch
    /// directory they can traverse, the scratch's path, and alice's name.
    static func scratchWithAlice() throws -> (TempSpool, String, String) {
        try AuthorizationTests.ensureUsers()
        let t = try TempSpool()
        chmod(t.path.string, 0o755)
        return (t, t.path.string, AuthorizationTests.alice)
    }

    static func count(_ needle: String, in s: String) -> Int { s.components(separatedBy: needle).count - 1 }

    @Test(.enabled(if: chromium != nil, "needs chromium (make test installs it)"))
    func theReportRendersInABrowserWithTheTimelineAndTheCommandThatDecides() async throws {
        let t = try TempSpool()
        let spool = t.spool.root.string
        let order = #"{"order": "A-1042", "amount": 42.5, "reason": "arrived broken <b>bold</b>"}"#
        _ = try Binary.run("cairn", ["submit", "demo-refund", "--id", "done-1", "--input", "-", "--spool", spool], stdin: order)
        _ = try Binary.cairn("advance", "done-1", spool: t.spool)
        _ = try Binary.cairn("approve", "done-1", "issue-refund", spool: t.spool)
        _ = try Binary.cairn("advance", "done-1", spool: t.spool)
        _ = try Binary.run("cairn", ["submit", "demo-refund", "--id", "wait-1", "--input", "-", "--spool", spool], stdin: order)
        _ = try Binary.cairn("advance", "wait-1", spool: t.spool)
        #expect(t.status("done-1") == .completed && t.status("wait-1") == .waiting)
        let out = t.path.appending("report").string
        let r = try Binary.cairn("report", "--out", out, spool: t.spool)
        #expect(r.code == 0 && r.stdout == out + "/index.html\n", "\(r.stdout)\(r.stderr)")

        let index = try Self.dom(out + "/index.html")
        #expect(Self.count("class=\"run\"", in: index) == 2, "\(index.prefix(2000))")
        #expect(index.contains("href=\"wait-1.html\"") && index.contains("approval:issue-refund"))

        let waiting = try Self.dom(out + "/wait-1.html")
        #expect(waiting.contains("id=\"timeline\""), "an SVG timeline")
        #expect(Self.count("<rect", in: waiting) >= 4, "start, two steps and the open wait: \(Self.count("<rect", in: waiting))")
        #expect(waiting.contains("cairn approve wait-1 issue-refund --spool \(spool)"), "the exact command that decides")
        #expect(waiting.contains("touch \(spool)/runs/wait-1/approvals/issue-refund.approved"), "and the drop")
        #expect(!waiting.contains("<b>bold</b>") && waiting.contains("&lt;b&gt;bold"), "text from the run is escaped, never markup")

        let done = try Self.dom(out + "/done-1.html")
        #expect(done.contains("id=\"result\"") && done.contains("refunded"), "the result")
        let me = try #require(Principal.current.user)
        #expect(done.contains("approved by \(me)"), "the decision in the records, with who made it")

        // A screenshot, as a person would see the page.
        let png = t.path.appending("wait-1.png").string
        let shot = try Binary.run("/usr/bin/timeout", ["60", Self.chromium!, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,900", "--screenshot=" + png, "file://" + out + "/wait-1.html"])
        let size = (try? FileManager.default.attributesOfItem(atPath: png)[.size] as? Int) ?? 0
        #expect(size > 10_000, "a rendered page, not a blank one: \(size) bytes \(shot.stderr.suffix(300))")

        // The daemon keeps it current: the waiting run's page changes when it completes.
        let live = t.path.appending("live").string
        let d = try await DaemonProcess(spool: t.spool, args: ["--report-dir", live])
        defer { d.stopBlocking() }
        try await waitUntil("the first report") { FileManager.default.fileExists(atPath: live + "/wait-1.html") }
        #expect(try String(contentsOfFile: live + "/wait-1.html", encoding: .utf8).contains("status waiting"))
        _ = try Binary.cairn("approve", "wait-1", "issue-refund", spool: t.spool)
        try await t.waitFor("wait-1", .completed)
        try await waitUntil("the page of the completed run", timeout: 20) {
            (try? String(contentsOfFile: live + "/wait-1.html", encoding: .utf8))?.contains("status completed") == true
                && (try? String(contentsOfFile: live + "/index.html", encoding: .utf8))?.contains("2 completed") == true
        }
    }

    /// Long work over a large spool shows progress on a terminal, and never when piped.
    @Test func fsckAndReportShowProgressOnATerminalOnly() async throws {
        let t = try TempSpool()
        for i in 0..<250 { _ = try t.submit("demo-refund", input: ["order": .string("O-\(i)"), "amount": 1, "reason": "x"] as JSONValue) }
        let cairn = Binary.path("cairn")
        for (cmd, what) in [("fsck", "runs checked"), ("report --out \(t.path.string)/r", "runs")] {
            let tty = try Binary.run("/usr/bin/script", ["-qec", "\(cairn) \(cmd) --spool \(t.spool.root.string)", "/dev/null"])
            #expect(tty.stdout.contains("250/250 \(what)"), "\(cmd): \(tty.stdout.suffix(300))")
            let piped = try Binary.run("/bin/sh", ["-c", "\(cairn) \(cmd) --spool \(t.spool.root.string) 2>&1 | cat"])
            #expect(!piped.stdout.contains("\r") && !piped.stdout.contains("/250"), "\(cmd) piped: \(piped.stdout.suffix(300))")
        }
    }

    /// Issue 15's attack: a report or metrics directory someone else chose. A symlink another
    /// user planted in a sticky directory sent root's pages wherever it pointed; a directory
    /// another user owns let them read and replace the pages. Both are refused, by `report`
    /// and by the daemon, before anything is written.
    @Test(.enabled(if: getuid() == 0, "needs root to create the user cairnalice (CI runs as root)"))
    func aReportOrMetricsDirectoryAnotherUserChoseIsRefused() async throws {
        let (t, base, alice) = try Self.scratchWithAlice()
        let sticky = base + "/public", victim = base + "/victim", hers = base + "/hers"
        try #require(try AuthorizationTests.root("mkdir -m 1777 \(sticky) && mkdir -m 755 \(victim) && mkdir \(hers) && chown \(alice) \(hers)").code == 0)
        try #require(try AuthorizationTests.sh(alice, "ln -s \(victim) \(sticky)/report").code == 0)
        _ = try t.submit("demo-refund", input: ["order": "O-1", "amount": 1, "reason": "x"] as JSONValue)

        let viaLink = try Binary.cairn("report", "--out", sticky + "/report", spool: t.spool)
        #expect(viaLink.code == 2 && viaLink.stderr.contains("symlink") && viaLink.stderr.contains(alice), "\(viaLink.stderr)")
        let inHers = try Binary.cairn("report", "--out", hers, spool: t.spool)
        #expect(inHers.code == 2 && inHers.stderr.contains("owned by \(alice)"), "\(inHers.stderr)")
        for args in [["--report-dir", sticky + "/report"], ["--report-dir", hers], ["--metrics-file", hers + "/cairn.prom"], ["--metrics-file", sticky + "/report/cairn.prom"]] {
            let d = try Binary.run("cairn", ["daemon", "--spool", t.spool.root.string] + args)
            #expect(d.code == 2 && d.stderr.contains(alice), "\(args): \(d.stderr)")
        }
        // Higher up the path (found by a second attack: only the last component was judged):
        // a symlink of hers in the middle, a directory of root's inside one of hers (she can
        // swap it for a symlink later), a way through hers and back with "..".
        try #require(try AuthorizationTests.sh(alice, "ln -s \(victim) \(sticky)/mid && mkdir \(hers)/x 2>/dev/null; true").code == 0)
        try #require(try AuthorizationTests.root("mkdir -p \(hers)/rootowned && mkdir -p \(base)/mine2").code == 0)
        for (out, why) in [(sticky + "/mid/sub", "symlink"), (hers + "/rootowned", "on the way"), (hers + "/../mine2", "on the way")] {
            let r = try Binary.cairn("report", "--out", out, spool: t.spool)
            #expect(r.code == 2 && r.stderr.contains(why) && r.stderr.contains(alice), "\(out): \(r.stderr)")
            let m = try Binary.run("cairn", ["daemon", "--spool", t.spool.root.string, "--metrics-file", out + "/cairn.prom"])
            #expect(m.code == 2 && m.stderr.contains(alice), "\(out): \(m.stderr)")
        }
        // A directory anyone can write, even root's: they could replace the pages.
        try #require(try AuthorizationTests.root("mkdir -m 777 \(base)/wide && chmod 777 \(base)/wide").code == 0)
        let wide = try Binary.cairn("report", "--out", base + "/wide", spool: t.spool)
        #expect(wide.code == 2 && wide.stderr.contains("writable by others"), "\(wide.stderr)")
        let empty = try Binary.cairn("report", "--out", "", spool: t.spool)
        #expect(empty.code == 2, "\(empty.stderr)")
        // A path ending in ".." ends in the directory above, judged as the one written to (a
        // third attack: `sticky/x/..` was judged as a directory on the way, and the pages
        // landed in the sticky directory).
        try #require(try AuthorizationTests.root("mkdir -p \(sticky)/x").code == 0)
        for out in [sticky + "/x/..", sticky + "/x/../", sticky + "/x/./.."] {
            let r = try Binary.cairn("report", "--out", out, spool: t.spool)
            #expect(r.code == 2 && r.stderr.contains("writable by others"), "\(out): \(r.stderr)")
        }
        for file in [sticky + "/x/../m.prom", "", t.path.string] {
            let d = try Binary.run("cairn", ["daemon", "--spool", t.spool.root.string, "--metrics-file", file])
            #expect(d.code == 2, "--metrics-file '\(file)': \(d.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: sticky).sorted() == ["mid", "report", "x"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: victim).isEmpty && FileManager.default.contentsOfDirectory(atPath: base + "/wide").isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: hers).sorted() == ["rootowned", "x"] && FileManager.default.contentsOfDirectory(atPath: hers + "/rootowned").isEmpty)
        // Root's own symlink, and a directory of the caller's, are used as given.
        try FileManager.default.createDirectory(atPath: base + "/mine", withIntermediateDirectories: false)
        try #require(symlink(base + "/mine", base + "/mine-link") == 0)
        let own = try Binary.cairn("report", "--out", base + "/mine-link", spool: t.spool)
        #expect(own.code == 0 && FileManager.default.fileExists(atPath: base + "/mine/index.html"), "\(own.stderr)")
    }

    /// Issue 15's attack: the report's filesystem filled, then given room again. Pages whose
    /// write failed were never written again (a completed run's page said "waiting"); now the
    /// daemon logs the failure, counts it, and writes the page again until it lands.
    @Test(.enabled(if: getuid() == 0, "needs root to mount a small tmpfs (CI runs as root)"))
    func aReportPageThatCouldNotBeWrittenIsWrittenOnceThereIsRoom() async throws {
        let t = try TempSpool()
        let dir = t.path.string + "/small"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        guard try AuthorizationTests.root("mount -t tmpfs -o size=256k tmpfs \(dir)").code == 0 else { Issue.record("cannot mount tmpfs"); return }
        defer { _ = try? AuthorizationTests.root("umount -l \(dir)") }
        let report = dir + "/report"
        let metrics = t.path.string + "/m.prom"
        let d = try await DaemonProcess(spool: t.spool, args: ["--report-dir", report, "--metrics-file", metrics, "--log-format", "json"])
        defer { d.stopBlocking() }
        _ = try t.submit("demo-refund", input: ["order": "O-1", "amount": 1, "reason": "x"] as JSONValue, id: "full-1")
        try await t.waitFor("full-1", .waiting)
        try await waitUntil("the page of the waiting run") { (try? String(contentsOfFile: report + "/full-1.html", encoding: .utf8))?.contains("status waiting") == true }
        // The disk fills; the run completes meanwhile.
        _ = try AuthorizationTests.root("dd if=/dev/zero of=\(dir)/filler bs=4k count=1000 2>/dev/null; true")
        _ = try Binary.cairn("approve", "full-1", "issue-refund", spool: t.spool)
        try await t.waitFor("full-1", .completed)
        try await waitUntil("the failure logged and counted", timeout: 30) {
            d.log.contains("cannot write the report") && ((try? String(contentsOfFile: metrics, encoding: .utf8))?.contains("cairn_daemon_errors_total{kind=\"report_write\"}") == true)
        }
        #expect((try? String(contentsOfFile: report + "/full-1.html", encoding: .utf8))?.contains("status waiting") == true, "still the old page while the disk is full")
        // `cairn report` on the full disk says so and exits 1 (cron and CI see it).
        let cli = try Binary.cairn("report", "--out", dir + "/by-hand", spool: t.spool)
        #expect(cli.code == 1 && cli.stderr.contains("could not be written") && !cli.stdout.contains("index.html"), "\(cli.code) \(cli.stdout) \(cli.stderr)")
        // Room again: within the retry interval the page says completed.
        try FileManager.default.removeItem(atPath: dir + "/filler")
        try await waitUntil("the page written again", timeout: 60) {
            (try? String(contentsOfFile: report + "/full-1.html", encoding: .utf8))?.contains("status completed") == true
                && (try? String(contentsOfFile: report + "/index.html", encoding: .utf8))?.contains("1 completed") == true
        }
    }

    /// A third attack: the daemon judged --report-dir and --metrics-file's directory at start
    /// only; a directory on the way that changed hands later was swapped for a symlink, and
    /// root's pages and figures went where it pointed. Now the path is judged again when it
    /// leads elsewhere than the directory held: the writes are refused, logged and counted.
    @Test(.enabled(if: getuid() == 0, "needs root to create the user cairnalice (CI runs as root)"))
    func aDirectoryOnTheWaySwappedAfterTheStartDoesNotRedirectTheWrites() async throws {
        let (t, base, alice) = try Self.scratchWithAlice()
        try #require(try AuthorizationTests.root("install -d -m 755 \(base)/r2 \(base)/r2/rep \(base)/r2/met \(base)/victim").code == 0)
        let d = try await DaemonProcess(spool: t.spool, args: ["--report-dir", base + "/r2/rep", "--metrics-file", base + "/r2/met/cairn.prom"])
        defer { d.stopBlocking() }
        // Later, r2 is given to alice, who swaps what is in it for symlinks to her target.
        try #require(try AuthorizationTests.root("chown \(alice) \(base)/r2").code == 0)
        let swap = try AuthorizationTests.sh(alice, "cd \(base)/r2 && mv rep rep.old && ln -s \(base)/victim rep && mv met met.old && ln -s \(base)/victim met")
        try #require(swap.code == 0, "\(swap.err)")
        let r = try t.submit("demo-refund", input: ["order": "O-1", "amount": 1, "reason": "x"] as JSONValue, id: "pinned-1")
        try await t.waitFor(r, .waiting)
        try await waitUntil("the refusals logged") {
            d.log.contains("cannot write the report") && d.log.contains("cannot write the metrics file") && d.log.contains(alice)
        }
        try await Task.sleep(for: .seconds(2))
        #expect(try FileManager.default.contentsOfDirectory(atPath: base + "/victim").isEmpty, "nothing went where the symlinks point")
        #expect(!FileManager.default.fileExists(atPath: base + "/r2/rep.old/pinned-1.html"), "nor into the directory that was moved away")
        #expect(!d.log.contains("/proc/self/fd"), "errors name the path given: \(d.log.suffix(1500))")
    }

    /// The held report directory removed while the daemon runs (a third attack: it was
    /// written to for ever, the errors counted and the directory never made again): the
    /// next write makes it again and goes there. Inside the spool is refused.
    @Test func aRemovedReportDirectoryIsMadeAgainAndOneInsideTheSpoolIsRefused() async throws {
        let t = try TempSpool()
        let rep = t.path.string + "/rep"
        let inside = try Binary.run("cairn", ["daemon", "--spool", t.spool.root.string, "--report-dir", t.spool.root.string + "/runs"])
        #expect(inside.code == 2 && inside.stderr.contains("inside the spool"), "\(inside.stderr)")
        let d = try await DaemonProcess(spool: t.spool, args: ["--report-dir", rep])
        defer { d.stopBlocking() }
        _ = try t.submit("demo-refund", input: ["order": "O-1", "amount": 1, "reason": "x"] as JSONValue, id: "before-1")
        try await waitUntil("the first page") { FileManager.default.fileExists(atPath: rep + "/before-1.html") }
        try FileManager.default.removeItem(atPath: rep)
        _ = try t.submit("demo-refund", input: ["order": "O-2", "amount": 1, "reason": "x"] as JSONValue, id: "after-1")
        try await waitUntil("the page of the run after, in the directory made again", timeout: 30) {
            FileManager.default.fileExists(atPath: rep + "/after-1.html") && FileManager.default.fileExists(atPath: rep + "/index.html")
        }
    }
}
