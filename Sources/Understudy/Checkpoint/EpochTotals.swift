/// Running totals over every epoch of a run, in constant space: what status
/// lines and benchmarks compute rates and quantiles from (the difference of
/// two readings covers the epochs between them).
public struct EpochTotals: Sendable, Equatable {
    public var epochs: UInt64 = 0
    public var stretched: UInt64 = 0
    /// Epochs in which the guest was held until the link caught up.
    public var throttled: UInt64 = 0
    public var dirtyPages: UInt64 = 0
    public var rawBytes: UInt64 = 0
    public var encodedBytes: UInt64 = 0
    public var pauses = PauseHistogram()
    public var encodeTimes = PauseHistogram()

    public init() {}

    public mutating func add(_ epoch: EpochStatistics) {
        epochs += 1
        if epoch.stretched { stretched += 1 }
        if epoch.throttled { throttled += 1 }
        dirtyPages += UInt64(epoch.dirtyPages)
        rawBytes += UInt64(epoch.rawBytes)
        encodedBytes += UInt64(epoch.encodedBytes)
        pauses.add(epoch.pause)
        encodeTimes.add(epoch.encodeTime)
    }

    public static func + (a: EpochTotals, b: EpochTotals) -> EpochTotals {
        var sum = a
        sum.epochs += b.epochs
        sum.stretched += b.stretched
        sum.throttled += b.throttled
        sum.dirtyPages += b.dirtyPages
        sum.rawBytes += b.rawBytes
        sum.encodedBytes += b.encodedBytes
        sum.pauses = a.pauses + b.pauses
        sum.encodeTimes = a.encodeTimes + b.encodeTimes
        return sum
    }

    /// The epochs counted in `a` after the reading `b`.
    public static func - (a: EpochTotals, b: EpochTotals) -> EpochTotals {
        var difference = a
        difference.epochs -= min(a.epochs, b.epochs)
        difference.stretched -= min(a.stretched, b.stretched)
        difference.throttled -= min(a.throttled, b.throttled)
        difference.dirtyPages -= min(a.dirtyPages, b.dirtyPages)
        difference.rawBytes -= min(a.rawBytes, b.rawBytes)
        difference.encodedBytes -= min(a.encodedBytes, b.encodedBytes)
        difference.pauses = a.pauses - b.pauses
        difference.encodeTimes = a.encodeTimes - b.encodeTimes
        return difference
    }
}
