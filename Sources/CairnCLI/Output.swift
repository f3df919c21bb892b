import CairnSpool
import Foundation
import SystemPackage

enum Output {
    static func json(_ v: JSONValue) {
        raw(Data(v.canonicalText().utf8), to: 1)
    }

    static func line(_ s: String) {
        raw(Data((terminalSafe(s) + "\n").utf8), to: 1)
    }

    /// Text as it is (no line break added), made terminal-safe. `untrusted` (a script's
    /// output, a model's answer): every escape sequence is shown escaped, also one that looks
    /// like the colours `paint` makes (a script's `ESC[31m` would colour what follows it,
    /// Cairn's own lines included); line breaks and tabs are kept.
    static func write(_ s: String, untrusted: Bool = false) {
        guard untrusted else { return raw(Data(terminalSafe(s).utf8), to: 1) }
        if !s.unicodeScalars.contains(where: { $0 != "\n" && $0 != "\t" && Names.isControlOrBidi($0) }) {
            return raw(Data(s.utf8), to: 1)
        }
        var out = String.UnicodeScalarView()
        for u in s.unicodeScalars {
            if u == "\n" || u == "\t" || !Names.isControlOrBidi(u) {
                out.append(u)
            } else {
                out.append(contentsOf: Names.printable(String(u)).unicodeScalars)
            }
        }
        raw(Data(String(out).utf8), to: 1)
    }

    /// "1 step", "3 steps".
    static func count(_ n: Int, _ singular: String, _ plural: String? = nil) -> String {
        "\(n) \(n == 1 ? singular : plural ?? singular + "s")"
    }

    /// A duration for people: 840ms, 20.0s, 3m20s, 2h05m, 3d4h.
    static func duration(ms: Int) -> String {
        if ms < 1000 { return "\(ms)ms" }
        let s = ms / 1000
        if s < 60 { return String(format: "%.1fs", Double(ms) / 1000) }
        if s < 3600 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
        if s < 86400 { return "\(s / 3600)h\(String(format: "%02d", s % 3600 / 60))m" }
        return "\(s / 86400)d\(s % 86400 / 3600)h"
    }

    static func warn(_ s: String) {
        raw(Data("cairn: \(terminalSafe(s))\n".utf8), to: 2)
    }

    /// The last line of defence for text output, much of which holds names and values that
    /// came from drops (file names in events/, comments, error messages): every control
    /// character is shown escaped (Names.printable), except a line break and the colour
    /// codes `paint` itself makes (and those only when colour is on). So no name can move
    /// the cursor, clear the screen, retitle the terminal or overwrite a line. Values that
    /// must not even look like a second line are escaped where they are spliced in
    /// (`printable`), since a line break is let through here.
    static func terminalSafe(_ s: String) -> String {
        let scalars = Array(s.unicodeScalars)
        var out = String.UnicodeScalarView()
        var i = 0
        while i < scalars.count {
            let u = scalars[i]
            if u == "\u{1B}", color, let end = ownColourCode(scalars, at: i) {
                out.append(contentsOf: scalars[i...end])
                i = end + 1
                continue
            }
            if u == "\n" || !Names.isControlOrBidi(u) {
                out.append(u)
            } else {
                out.append(contentsOf: Names.printable(String(u)).unicodeScalars)
            }
            i += 1
        }
        return String(out)
    }

    /// The index of the final `m` when `scalars[i...]` starts one of paint's codes.
    private static func ownColourCode(_ scalars: [Unicode.Scalar], at i: Int) -> Int? {
        for code in ["0", "1", "2", "31", "32", "33"] {
            let seq = Array("\u{1B}[\(code)m".unicodeScalars)
            if i + seq.count <= scalars.count, Array(scalars[i..<(i + seq.count)]) == seq { return i + seq.count - 1 }
        }
        return nil
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
        // Judged as the daemon judges a drop (depth, JSON, a key twice, a blob-shaped value),
        // so that a command refuses what the daemon would instead of saying it was done.
        switch Drops.content(data) {
        case .success(let v?): return v
        case .success(nil): throw CLIError(.failure, "\(arg == "-" ? "stdin" : arg): \(what) is empty (a JSON value is expected)")
        case .failure(let refusal): throw CLIError(.failure, "\(arg == "-" ? "stdin" : arg): \(what) \(refusal.reason)")
        }
    }

    /// Text from the spool made safe for a terminal: control characters (escape sequences,
    /// carriage returns) shown escaped, never interpreted.
    static func printable(_ s: String) -> String { Names.printable(s) }

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

/// A command's discussion, its paragraphs unwrapped: argument-parser wraps every line to the
/// terminal's width (80 when piped), so text wrapped by hand at another width broke twice,
/// leaving single words on lines of their own. A line that starts with a space (an example,
/// a list item) or follows a blank line starts a new line; the rest join their paragraph.
func prose(_ text: String) -> String {
    var out: [String] = []
    for line in text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
        let starts = line.isEmpty || line.hasPrefix(" ") || line.hasPrefix("-") || line.hasSuffix(":") && line.count < 40
        if !starts, let last = out.last, !last.isEmpty, !last.hasPrefix(" "), !last.hasSuffix(":") {
            out[out.count - 1] = last + " " + line
        } else {
            out.append(line)
        }
    }
    return out.joined(separator: "\n")
}
