/// Durations as written in the spool and on the command line (SPEC §5): `90s`, `15m`, `2h`,
/// `7d`, `250ms`. `package`: the CLI's `DurationArgument` and `Duration.parse` (module Cairn) use it;
/// it is not part of what `import Cairn` gives a workflow author.
package enum DurationText {
    /// nil when malformed.
    package static func parse(_ text: String) -> Duration? {
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
