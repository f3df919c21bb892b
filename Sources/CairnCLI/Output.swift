import CairnSpool
import Foundation
import SystemPackage

enum Output {
    static func json(_ v: JSONValue) {
        FileHandle.standardOutput.write(Data(v.canonicalText().utf8))
    }

    static func line(_ s: String) {
        raw(Data((s + "\n").utf8), to: 1)
    }

    static func warn(_ s: String) {
        raw(Data("cairn: \(s)\n".utf8), to: 2)
    }

    /// write(2) to fd 1 or 2, ignoring a closed or broken descriptor (a script may close its
    /// stdout before calling a helper; FileHandle would trap on that).
    static func raw(_ data: Data, to fd: Int32) {
        data.withUnsafeBytes { buf in
            var off = 0
            while off < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + off, buf.count - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                off += n
            }
        }
    }

    /// Color only on a terminal, and never when NO_COLOR is set.
    static let color: Bool = isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil
        && ProcessInfo.processInfo.environment["TERM"] != "dumb"

    static func paint(_ s: String, _ code: String) -> String { color ? "\u{1B}[\(code)m\(s)\u{1B}[0m" : s }
    static func bold(_ s: String) -> String { paint(s, "1") }
    static func dim(_ s: String) -> String { paint(s, "2") }
    static func red(_ s: String) -> String { paint(s, "31") }
    static func green(_ s: String) -> String { paint(s, "32") }
    static func yellow(_ s: String) -> String { paint(s, "33") }

    static func status(_ s: RunStatus) -> String {
        switch s {
        case .completed: return green(s.rawValue)
        case .failed: return red(s.rawValue)
        case .waiting, .queued, .running: return yellow(s.rawValue)
        case .cancelled: return dim(s.rawValue)
        }
    }

    /// Reads `--input FILE|-` style arguments as JSON.
    static func readJSONArgument(_ arg: String, what: String) throws -> JSONValue {
        let data: Data
        if arg == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            guard let d = try? DurableFile.read(FilePath(arg)) else { throw CLIError(.failure, "\(arg): cannot read \(what)") }
            data = d
        }
        do { return try JSONValue.parse(data) } catch {
            throw CLIError(.failure, "\(arg == "-" ? "stdin" : arg): \(what) is not valid JSON")
        }
    }

    /// Text from the spool made safe for a terminal: control characters (escape sequences,
    /// carriage returns) shown escaped, never interpreted.
    static func printable(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars {
            if u.value < 0x20 || u.value == 0x7F || (u.value >= 0x80 && u.value < 0xA0) {
                out += "\\u{" + String(u.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }

    static func ago(_ date: Date, now: Date = Date()) -> String {
        let s = Int(now.timeIntervalSince(date))
        if s < 0 { return "in " + span(-s) }
        return span(s) + " ago"
    }

    static func span(_ s: Int) -> String {
        if s < 90 { return "\(s)s" }
        if s < 5400 { return "\(s / 60)m" }
        if s < 129_600 { return "\(s / 3600)h" }
        return "\(s / 86400)d"
    }
}

/// Looks a run up, with exit code 3 when it does not exist.
func requireRun(_ spool: Spool, _ id: String) throws -> RunRecord {
    guard Names.isValidRunID(id) else { throw CLIError(.usage, "invalid run id '\(id)'") }
    guard spool.runExists(id) else { throw CLIError(.notFound, "no such run '\(id)' in \(spool.root.string)/runs") }
    return try spool.readRun(id)
}
