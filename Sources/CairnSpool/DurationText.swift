/// Durations as written in the spool and on the command line (SPEC §5): `90s`, `15m`, `2h`,
/// `7d`, `250ms`. `package`: the CLI's `DurationArgument` and `Duration.parse` (module Cairn) use it;
/// it is not part of what `import Cairn` gives a workflow author.
package enum DurationText {
    /// The longest duration accepted: 100 years (36500d). Anything longer is a mistake, and
    /// a number past it (`1e308h`) would overflow every clock it reaches.
    package static let maximumSeconds: Double = 36500 * 86400

    /// nil when malformed: the number is decimal digits with an optional fraction (`1.5h`;
    /// not `1e3s`, `0x10s`, `+5s`, `5.s`), at most `maximumSeconds` in all.
    package static func parse(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
        for (suffix, mult) in units where text.hasSuffix(suffix) {
            let num = text.dropLast(suffix.count)
            if suffix == "s" && num.hasSuffix("m") { continue }
            let parts = num.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
            guard !num.isEmpty, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }),
                  let v = Double(num), v * mult <= maximumSeconds else { return nil }
            return .milliseconds(Int64((v * mult * 1000).rounded()))
        }
        return nil
    }
}
