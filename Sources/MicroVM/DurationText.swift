/// Reads durations as operators write them: "5ms", "0.5ms", "500us", "2s".
public enum DurationText {
    /// nil when the text is not a positive number followed by us, ms or s.
    public static func parse(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let value = Double(text.dropLast(suffix.count)), value.isFinite, value > 0, value * scale <= 86_400 else { return nil }
            return .nanoseconds(Int64((value * scale * 1e9).rounded()))
        }
        return nil
    }
}
