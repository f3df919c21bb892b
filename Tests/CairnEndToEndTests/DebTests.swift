import CairnSpool
import CairnTesting
import Foundation
import Testing

/// Issue 15: the Debian package, as an operator uses it, when the suite runs as root (CI):
/// built with packaging/deb/build.sh (from this build's binaries; `make deb` makes the
/// release one), installed with dpkg, the unit's ExecStart run by hand as its user (no
/// systemd in a container), a run approved with `touch`, then purged.
@Suite(.serialized) struct DebTests {
    static let packaging = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../packaging/deb/build.sh").standardized.path

    static func sh(_ command: String) throws -> Binary.Result {
        try Binary.run("/bin/sh", ["-c", command])
    }

    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/dpkg-deb") && !FileManager.default.fileExists(atPath: "/usr/bin/cairn"),
                   "needs root, dpkg-deb, and no cairn installed already (CI runs as root on a fresh machine)"))
    func installStartApproveWithTouchAndPurge() async throws {
        let t = try TempSpool()
        let out = t.path.appending("deb").string
        let built = try Self.sh("\(Self.packaging) \(Binary.directory) - \(out) 0.1.0-test")
        #expect(built.code == 0, "\(built.stderr)")
        let deb = built.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let contents = try Self.sh("dpkg-deb --contents \(deb)").stdout
        for path in ["./usr/bin/cairn", "./usr/bin/cairn-helper", "./lib/systemd/system/cairn.service", "./usr/lib/sysusers.d/cairn.conf",
                     "./usr/lib/tmpfiles.d/cairn.conf", "./usr/share/bash-completion/completions/cairn"] {
            #expect(contents.contains(path), "\(path) in the package")
        }
        let install = try Self.sh("dpkg -i \(deb)")
        defer { _ = try? Self.sh("dpkg --purge cairn") }
        #expect(install.code == 0, "\(install.stdout)\(install.stderr)")
        // The service user and its spool, made by the package.
        #expect(try Self.sh("getent passwd cairn").code == 0)
        var st = stat()
        #expect(stat("/var/lib/cairn/spool/cairn.json", &st) == 0 && st.st_uid == getpwnam("cairn").pointee.pw_uid, "the spool belongs to the service user")
        // What the unit runs: ExecStart, as User=cairn, with its environment.
        let unit = try String(contentsOfFile: "/lib/systemd/system/cairn.service", encoding: .utf8)
        let exec = try #require(unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") }).dropFirst("ExecStart=".count)
        #expect(exec.hasPrefix("/usr/bin/cairn daemon"), "\(exec)")
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        daemon.arguments = ["--reuid=cairn", "--regid=cairn", "--init-groups", "--", "/bin/sh", "-c", "cd /var/lib/cairn && exec env CAIRN_SPOOL=/var/lib/cairn/spool \(exec)"]
        daemon.standardOutput = FileHandle.nullDevice
        daemon.standardError = FileHandle.nullDevice
        try daemon.run()
        defer {
            kill(daemon.processIdentifier, SIGTERM)
            daemon.waitUntilExit()
        }
        let submit = try Self.sh("echo '{\"order\": \"A-1\", \"amount\": 2.5, \"reason\": \"late\"}' | CAIRN_SPOOL=/var/lib/cairn/spool /usr/bin/cairn submit demo-refund --input -")
        #expect(submit.code == 0, "\(submit.stderr)")
        let run = submit.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let waiting = try Self.sh("/usr/bin/cairn wait \(run) --for waiting --timeout 30s --spool /var/lib/cairn/spool")
        #expect(waiting.code == 0, "\(waiting.stdout)\(waiting.stderr)")
        // A person approves by dropping a file.
        #expect(try Self.sh("touch /var/lib/cairn/spool/runs/\(run)/approvals/issue-refund.approved").code == 0)
        let done = try Self.sh("/usr/bin/cairn wait \(run) --for completed --timeout 30s --spool /var/lib/cairn/spool")
        #expect(done.code == 0, "\(done.stdout)\(done.stderr)")
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        // Purge: the binary, the spool and the user are gone.
        let purge = try Self.sh("dpkg --purge cairn")
        #expect(purge.code == 0, "\(purge.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "/usr/bin/cairn") && !FileManager.default.fileExists(atPath: "/var/lib/cairn"))
        #expect(try Self.sh("getent passwd cairn").code != 0)
    }
}
