/// Durations as written in the spool and on the command line (SPEC §5): `90s`, `15m`, `2h`,
/// `7d`, `250ms`. `Duration.parse` (module Cairn) is the public face of this.
public enum DurationText {
    /// nil when malformed.
    public static func parse(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
        for (suffix, mult) in units where text.hasSuffix(suffix) {
            let num = text.dropLast(suffix.count)
            if suffix == "s" && num.hasSuffix("m") { continue }
            guard let v = Double(num), v >= 0, v.isFinite else { return nil }
            return .milliseconds(Int64((v * mult * 1000).rounded()))
        }
        return nil
    }
}
