import CairnSpool
import CairnTesting
import Foundation
import Testing

/// The scripts' `cairn` is the small client (Sources/cairn-helper) when it sits beside the
/// daemon's binary: the daemon answers `step`, `now`, `uuid`, `sleep` and `event` itself,
/// and the whole binary runs only for the rest (docs/scripts.md, "How helpers reach the
/// daemon"). The other script tests run through it too; these prove that it is used, that
/// it falls back, and that its socket takes nothing from anyone else.
@Suite(.serialized) struct HelperClientTests {
    func install(_ t: TempSpool, _ name: String, _ text: String) throws {
        let p = t.spool.workflowsDirectory.appending(name).string
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        chmod(p, 0o755)
    }

    static var client: String { Binary.path("cairn-helper") }

    @Test func helpersAreAnsweredByTheDaemonWithoutStartingTheWholeBinary() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.client), "no \(Self.client): `make test` builds it (Makefile, helper-client); without it every script helper starts the whole binary")
        let t = try TempSpool()
        try install(t, "helper-fast", """
            #!/bin/sh
            set -e
            command -v cairn > which.txt
            a=$(cairn step a -- echo one)
            n=$(cairn now)
            u=$(cairn uuid)
            b=$(cairn step b -- sh -c 'printf "%s" "$CAIRN_STEP_ATTEMPT:$CAIRN_IDEMPOTENCY_KEY"')
            printf '{"a": "%s", "b": "%s", "n": "%s"}' "$a" "$b" "$n" | cairn result -
            """)
        let trace = t.path.appending("trace").string
        let fixtures = Binary.path("cairn-fixtures")
        let daemon = try Binary.start("/usr/bin/strace", ["-f", "-e", "trace=execve", "-o", trace, "--", fixtures, "daemon", "--spool", t.spool.root.string, "--log-level", "warning"])
        let r = try t.submit("helper-fast", input: 0)
        do {
            try await t.waitFor(r, .completed, timeout: 30)
        } catch {
            let children = (try? String(contentsOfFile: "/proc/\(daemon.0.processIdentifier)/task/\(daemon.0.processIdentifier)/children", encoding: .utf8)) ?? ""
            for c in children.split(separator: " ").compactMap({ Int32($0) }) { kill(c, SIGTERM) }
            _ = await Binary.finish(daemon)
            throw error
        }
        // strace's child is the daemon.
        let children = (try? String(contentsOfFile: "/proc/\(daemon.0.processIdentifier)/task/\(daemon.0.processIdentifier)/children", encoding: .utf8)) ?? ""
        for c in children.split(separator: " ").compactMap({ Int32($0) }) { kill(c, SIGTERM) }
        _ = await Binary.finish(daemon)
        let result = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: t.spool.run(r).directory.appending("result.json").string))) as? [String: String]
        #expect(result?["a"] == "one")
        #expect(result?["b"] == "1:\(r):5:b", "the command got its attempt and idempotency key: \(String(describing: result))")
        #expect(result?["n"]?.hasPrefix("20") == true)
        let which = try String(contentsOfFile: t.spool.run(r).workDirectory.appending("which.txt").string, encoding: .utf8)
        #expect(which.contains("/cairn-helpers-") && which.hasSuffix("/cairn\n"), "the script's cairn: \(which)")
        let execs = try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n").filter { $0.contains("execve(\"") && !$0.contains("= -1") }
        let whole = execs.filter { $0.contains("execve(\"\(fixtures)\"") }
        // The daemon itself, the script's supervisor, and `cairn result` (not served: it
        // reads stdin) — never a step, now or uuid.
        #expect(whole.count == 3, "the whole binary ran \(whole.count) times:\n\(whole.joined(separator: "\n"))")
        #expect(whole.contains { $0.contains("\"__supervise\"") })
        #expect(whole.contains { $0.contains("[\"cairn\", \"result\", \"-\"]") }, "result runs the whole binary:\n\(whole.joined(separator: "\n"))")
        #expect(!whole.contains { $0.contains("\"step\"") || $0.contains("\"now\"") || $0.contains("\"uuid\"") })
        #expect(execs.filter { $0.contains("/cairn-helpers-") }.count == 5, "five helper calls through the client")
        // The records are the whole binary's: replayed the same way by `cairn show`.
        let show = try Binary.cairn("show", r, spool: t.spool)
        #expect(show.stdout.contains("step a") && show.stdout.contains("step b") && show.stdout.contains("uuid"), "\(show.stdout)")
    }

    @Test func theSocketTakesNothingFromOthersAndSurvivesGarbage() async throws {
        let t = try TempSpool()
        try install(t, "sock-hold", """
            #!/bin/sh
            printf '%s' "$CAIRN_HELPER_SOCKET" > socket.txt
            cairn step before -- echo x > /dev/null
            cairn approval go > /dev/null
            cairn step after -- echo y
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("sock-hold", input: 0)
        try await t.waitFor(r, .waiting, timeout: 20)
        let socket = try String(contentsOfFile: t.spool.run(r).workDirectory.appending("socket.txt").string, encoding: .utf8)
        #expect(socket.hasSuffix("/helper.sock"))
        var st = stat()
        #expect(stat((socket as NSString).deletingLastPathComponent, &st) == 0 && st.st_mode & 0o077 == 0 && st.st_uid == geteuid(), "the socket's directory is private")

        // Garbage of every shape: a frame too long, a short frame, an unknown type, a request
        // of another version, a request for an execution that is not running, an abrupt close.
        let garbage = #"""
            import socket, struct, sys
            path = sys.argv[1]
            def conn(payload, read=True):
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                out = s.recv(100) if read else b""
                s.close()
                return out
            def frame(t, p): return struct.pack("<I", len(p) + 1) + t + p
            conn(struct.pack("<I", 0xffffffff) + b"Q", False)
            conn(b"\x00\x00", False)
            conn(frame(b"Z", b"hello"), False)
            assert conn(frame(b"Q", b"cairn-helper 0\0x\0y\0now\0"))[4:5] == b"F"
            assert conn(frame(b"Q", b"cairn-helper 1\0not-an-exec\0" + sys.argv[2].encode() + b"\0now\0"))[4:5] == b"F"
            s = socket.socket(socket.AF_UNIX); s.connect(path); s.sendall(frame(b"Q", b"cairn-helper 1")[:7]); s.close()
            # Many connections held open, each claiming a step's whole output: the daemon takes
            # a bounded number and its memory follows the bytes sent, not the lengths claimed.
            held = []
            for i in range(200):
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(path)
                    s.sendall(struct.pack("<I", (64 << 20) + 4096) + b"D")
                except OSError:
                    pass  # past the daemon's connection limit: turned away, as it should be
                held.append(s)
            rss = int([l for l in open("/proc/%s/status" % sys.argv[3]) if l.startswith("VmRSS")][0].split()[1])
            print("rss", rss)
            for s in held: s.close()
            print("ok")
            """#
        let g = try Binary.run("/usr/bin/python3", ["-c", garbage, socket, r, String(d.pid)])
        #expect(g.code == 0 && g.stdout.contains("ok"), "\(g.stdout)\(g.stderr)")
        let rss = g.stdout.split(separator: "\n").first { $0.hasPrefix("rss ") }.flatMap { Int($0.dropFirst(4)) } ?? Int.max
        #expect(rss < 400_000, "the daemon's RSS with 200 connections claiming 64 MiB each: \(rss) kB")

        // Another user cannot even reach it.
        if geteuid() == 0 {
            let other = try Binary.run("/usr/bin/setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", "/usr/bin/python3", "-c",
                                                            "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1]); print('connected')\nexcept OSError as e:\n    print('refused', e.errno)", socket])
            #expect(other.stdout.hasPrefix("refused"), "another user: \(other.stdout)\(other.stderr)")
        }

        // The daemon lives on and serves the run to its end.
        _ = FileManager.default.createFile(atPath: t.spool.run(r).approvalsDirectory.appending("go.approved").string, contents: nil)
        try await t.waitFor(r, .completed, timeout: 20)
        #expect(kill(d.pid, 0) == 0, "the daemon is alive")
        await d.stop()
        #expect(access(socket, F_OK) != 0, "the socket is removed when the daemon stops")
    }

    /// A step's timeout kills everything its command started, also what was orphaned on
    /// purpose (a double fork: the grandchild's parent is gone before the timeout, so it is
    /// no longer anyone's descendant — unless the client is its subreaper).
    /// Both ways: through the client, and the whole binary (`env -u CAIRN_HELPER_SOCKET`).
    @Test(arguments: ["", "env -u CAIRN_HELPER_SOCKET "])
    func aTimedOutStepLeavesNothingBehindEvenADoubleFork(_ prefix: String) async throws {
        let t = try TempSpool()
        let late = t.path.appending("late").string
        try install(t, "helper-orphan", """
            #!/bin/sh
            \(prefix)cairn step slow --timeout 1s -- sh -c '(sh -c "sleep 5; touch \(late)" &); sleep 30'
            echo "step exit $?" >&2
            sleep 6
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("helper-orphan", input: 0)
        try await t.waitFor(r, .completed, timeout: 30)
        await d.stop()
        let err = try String(contentsOfFile: t.spool.run(r).logsDirectory.appending("stderr.log").string, encoding: .utf8)
        #expect(err.contains("step exit 124"), "\(err)")
        #expect(!FileManager.default.fileExists(atPath: late), "an orphaned grandchild of the timed-out command ran on")
    }

    /// A timeout that fires between the command's start and the moment its killer learns
    /// its pid (a window of microseconds, wide on a loaded machine: CI once saw it) still
    /// kills it: the whole binary's kill is remembered and done when the pid arrives.
    @Test func aTimeoutBeforeTheCommandIsKnownStillKillsIt() async throws {
        let t = try TempSpool()
        let late = t.path.appending("late").string
        try install(t, "helper-early-timeout", """
            #!/bin/sh
            env -u CAIRN_HELPER_SOCKET cairn step slow --timeout 1s -- sh -c 'sh -c "sleep 4; touch \(late)" & wait'
            echo "step exit $?" >&2
            sleep 6
            """)
        let d = try await DaemonProcess(spool: t.spool, env: ["CAIRN_SIMULATE_SLOW": "step.spawned:2000"])
        let r = try t.submit("helper-early-timeout", input: 0)
        try await t.waitFor(r, .completed, timeout: 30)
        await d.stop()
        let err = try String(contentsOfFile: t.spool.run(r).logsDirectory.appending("stderr.log").string, encoding: .utf8)
        #expect(err.contains("step exit 124"), "\(err)")
        #expect(!FileManager.default.fileExists(atPath: late), "the command ran on after its timeout")
    }

    /// What a new user's trial of the client found (each checked through the client and
    /// through the whole binary): a step's command starts with default signals and only
    /// stdin, stdout and stderr, as the script itself does; output full of NULs replays; a
    /// client directory that disappears leaves `cairn` working.
    @Test(arguments: ["", "env -u CAIRN_HELPER_SOCKET "])
    func aStepsCommandStartsCleanAndOddOutputReplays(_ prefix: String) async throws {
        let t = try TempSpool()
        try install(t, "helper-clean", """
            #!/bin/bash
            grep SigBlk /proc/self/status > script-mask.txt
            exec 7> seven.txt
            \(prefix)cairn step sig -- sh -c 'kill -TERM $$; echo survived'
            echo "sig exit $?" >&2
            \(prefix)cairn step fds -- sh -c 'ls /proc/$$/fd' > fds.txt
            \(prefix)cairn step zeros -- head -c 2000 /dev/zero | wc -c > zeros.txt
            \(prefix)cairn step bg -- sh -c '(sleep 3; echo late) & echo early' > bg.txt
            \(prefix)cairn sleep 1s
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("helper-clean", input: 0)
        try await t.waitFor(r, .completed, timeout: 30)
        await d.stop()
        let work = t.spool.run(r).workDirectory
        func read(_ name: String) -> String { (try? String(contentsOfFile: work.appending(name).string, encoding: .utf8)) ?? "" }
        // A program the script starts gets the mask the script started with (bash blocks
        // signals of its own while it waits, so its own mask is not read here).
        let mask = read("script-mask.txt").split(separator: "\t").last.flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines), radix: 16) }
        #expect(mask == 0, "the script starts with no signal blocked: \(read("script-mask.txt"))")
        let err = try String(contentsOfFile: t.spool.run(r).logsDirectory.appending("stderr.log").string, encoding: .utf8)
        #expect(err.components(separatedBy: "sig exit 143").count == 3, "SIGTERM ends the command, both executions: \(err)")
        #expect(read("fds.txt").split(separator: "\n").sorted() == ["0", "1", "2"], "the command's descriptors: \(read("fds.txt"))")
        #expect(read("zeros.txt").trimmingCharacters(in: .whitespacesAndNewlines) == "2000", "replayed after the sleep: \(read("zeros.txt"))")
        // The command's end is the step's end: a background child's later output is not waited for.
        #expect(read("bg.txt") == "early\n", "\(read("bg.txt"))")
        let zeros = try #require(try t.spool.journal(r).load().first { $0.name == "zeros" })
        #expect(zeros.value?["stdout_base64"] != nil, "control bytes are recorded as base64")
    }

    @Test func aClientDirectoryThatDisappearsLeavesCairnWorking() async throws {
        let t = try TempSpool()
        try install(t, "helper-gone", """
            #!/bin/sh
            set -e
            cairn now > /dev/null
            if [ -n "$CAIRN_HELPER_SOCKET" ]; then rm -rf "$(dirname "$CAIRN_HELPER_SOCKET")"; else echo unserved > unserved.txt; fi
            cairn now > /dev/null
            cairn step s -- echo hi
            """)
        let d = try await DaemonProcess(spool: t.spool, env: ["PATH": "/usr/bin:/bin"])
        do {
            let r = try t.submit("helper-gone", input: 0)
            try await t.waitFor(r, .completed, timeout: 30)
            // And the next run, with the directory gone for good.
            let r2 = try t.submit("helper-gone", input: 0)
            try await t.waitFor(r2, .completed, timeout: 30)
            // The next script is served again, from a new directory.
            #expect(!FileManager.default.fileExists(atPath: t.spool.run(r2).workDirectory.appending("unserved.txt").string), "served again from a new directory")
            #expect(d.log.contains("the helper directory is gone"), "\(d.log)")
        } catch {
            Issue.record("daemon log:\n\(d.log)")
            throw error
        }
        await d.stop()
    }

    @Test func aCommandThatCannotStartAndAHelperOutsideItsExecutionSayWhy() async throws {
        let t = try TempSpool()
        try install(t, "helper-bad", """
            #!/bin/sh
            cairn step missing -- no-such-command-here
            echo "missing exited $?" >&2
            CAIRN_EXEC=not-this-one cairn now
            echo "stale exited $?" >&2
            cairn step ok -- echo fine
            """)
        let d = try await DaemonProcess(spool: t.spool)
        let r = try t.submit("helper-bad", input: 0)
        try await t.waitFor(r, .completed, timeout: 20)
        await d.stop()
        let err = try String(contentsOfFile: t.spool.run(r).logsDirectory.appending("stderr.log").string, encoding: .utf8)
        #expect(err.contains("no-such-command-here") && err.contains("missing exited 1"), "\(err)")
        #expect(err.contains("execution not-this-one is over") && err.contains("stale exited 1"), "\(err)")
        let show = try Binary.cairn("show", r, spool: t.spool)
        #expect(show.stdout.contains("step missing") && show.stdout.contains("step ok"), "\(show.stdout)")
    }
}
