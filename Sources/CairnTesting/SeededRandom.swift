import Foundation

/// The tests' randomness: a generator from a seed that is printed, so that a failure can be
/// reproduced. The seed is `CAIRN_TEST_SEED` when set, else a fresh one; each test derives
/// its own stream from it and a label (so one seed reproduces every test of a run).
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64
    /// The seed this generator started from (print it to reproduce a failure).
    public let seed: UInt64

    /// The run's seed, chosen once per process.
    public static let runSeed: UInt64 = {
        if let s = ProcessInfo.processInfo.environment["CAIRN_TEST_SEED"], let n = UInt64(s) { return n }
        return UInt64.random(in: 1...UInt64.max)
    }()

    /// A generator for `label` (the test and its argument), printing the seed it uses.
    public init(_ label: String, seed: UInt64 = SeededRandom.runSeed) {
        self.seed = seed
        // FNV-1a of the label, mixed with the seed: a stream per test, the same every run.
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in label.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        state = seed ^ h
        print("random: \(label) uses seed \(seed) (CAIRN_TEST_SEED=\(seed) reproduces it)")
    }

    /// SplitMix64.
    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
