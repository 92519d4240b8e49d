/// Per-epoch figures in constant space and constant time per epoch: the most
/// recent `capacity` epochs in a ring, and totals over all of them.
public struct EpochLog: Sendable {
    /// How many recent epochs are kept whole (16384: ~2.5 MB; 16 s at 1 ms epochs).
    public static let defaultCapacity = 16384

    public let capacity: Int
    private var ring: [EpochStatistics] = []
    private var next = 0
    /// Totals over every epoch recorded.
    public private(set) var totals = EpochTotals()

    public init(capacity: Int = EpochLog.defaultCapacity) {
        self.capacity = max(1, capacity)
        ring.reserveCapacity(self.capacity)
    }

    /// Epochs recorded so far.
    public var count: Int { Int(totals.epochs) }

    public mutating func record(_ epoch: EpochStatistics) {
        if ring.count < capacity {
            ring.append(epoch)
        } else {
            ring[next] = epoch
        }
        next = (next + 1) % capacity
        totals.add(epoch)
    }

    /// The epochs still kept, oldest first.
    public var recent: [EpochStatistics] {
        ring.count < capacity ? ring : Array(ring[next...] + ring[..<next])
    }

    /// The epochs recorded after the first `count` ones, as far as they are
    /// still kept (pass `count` read earlier to get what came since).
    public func recent(since count: Int) -> [EpochStatistics] {
        Array(recent.suffix(max(0, min(self.count - count, ring.count))))
    }
}
