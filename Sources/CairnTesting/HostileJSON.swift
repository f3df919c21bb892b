/// JSON shapes for testing what Cairn (or a workflow) accepts from outside.
public enum HostileJSON {
    /// `depth` levels of arrays and objects alternating (`[{"k":[{"k":…1…}]}]`): the shape
    /// that made a failed decoding attempt costly at every level.
    public static func alternatingNesting(_ depth: Int) -> String {
        var s = ""
        for i in 0..<depth { s += i % 2 == 0 ? "[" : "{\"k\":" }
        s += "1"
        for i in (0..<depth).reversed() { s += i % 2 == 0 ? "]" : "}" }
        return s
    }
}
