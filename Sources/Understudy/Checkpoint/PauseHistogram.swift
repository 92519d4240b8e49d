/// Counts of durations in fixed buckets, log-linear in microseconds (16 steps
/// per power of two: a quantile is within 1/16 of the true value). Constant
/// size, O(1) to add to, and two can be subtracted: what a status line needs
/// to report the quantiles of one interval out of a run of any length.
public struct PauseHistogram: Sendable, Equatable {
    static let subBuckets = 16
    static let bucketCount = 16 + 56 * subBuckets          // up to 2^60 µs
    private var counts = [UInt64](repeating: 0, count: PauseHistogram.bucketCount)
    /// Durations counted.
    public private(set) var count: UInt64 = 0

    public init() {}

    /// Counts one duration (negative counts as zero).
    public mutating func add(_ duration: Duration) {
        counts[Self.bucket(microseconds: duration.wholeMicroseconds)] += 1
        count += 1
    }

    /// The smallest bucket value at or above the `fraction` quantile (0...1), in
    /// microseconds; 0 when empty.
    public func quantileMicroseconds(_ fraction: Double) -> Int {
        guard count > 0 else { return 0 }
        let rank = max(1, UInt64((Double(count) * min(max(fraction, 0), 1)).rounded(.up)))
        var seen: UInt64 = 0
        for (bucket, n) in counts.enumerated() where n > 0 {
            seen += n
            if seen >= rank { return Self.lowerBound(bucket) }
        }
        return Self.lowerBound(counts.count - 1)
    }

    /// Bucket of a value in microseconds.
    static func bucket(microseconds value: Int) -> Int {
        guard value >= subBuckets else { return max(0, value) }
        let exponent = Int.bitWidth - 1 - value.leadingZeroBitCount           // >= 4
        let sub = (value >> (exponent - 4)) & (subBuckets - 1)
        return min(bucketCount - 1, subBuckets + (exponent - 4) * subBuckets + sub)
    }

    /// The smallest value in microseconds that falls in `bucket`.
    static func lowerBound(_ bucket: Int) -> Int {
        guard bucket >= subBuckets else { return bucket }
        let exponent = (bucket - subBuckets) / subBuckets + 4
        let sub = (bucket - subBuckets) % subBuckets
        return (subBuckets + sub) << (exponent - 4)
    }

    public static func + (a: PauseHistogram, b: PauseHistogram) -> PauseHistogram {
        var sum = a
        for i in sum.counts.indices { sum.counts[i] += b.counts[i] }
        sum.count += b.count
        return sum
    }

    /// What `a` counted beyond `b` (`b` an earlier reading of the same histogram).
    public static func - (a: PauseHistogram, b: PauseHistogram) -> PauseHistogram {
        var difference = a
        for i in difference.counts.indices { difference.counts[i] -= min(difference.counts[i], b.counts[i]) }
        difference.count -= min(difference.count, b.count)
        return difference
    }
}
