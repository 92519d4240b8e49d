/// The library's conversions of `Duration` to whole units (timeouts, status
/// lines, histograms): one place, so every figure rounds the same way.
extension Duration {
    /// Whole milliseconds, rounded down.
    public var milliseconds: Int {
        let (seconds, attoseconds) = components
        return Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
    }

    /// Whole microseconds, rounded down (negative durations are 0).
    public var wholeMicroseconds: Int {
        let (seconds, attoseconds) = components
        return max(0, Int(seconds) * 1_000_000 + Int(attoseconds / 1_000_000_000_000))
    }

    /// Whole nanoseconds, rounded down.
    public var wholeNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
