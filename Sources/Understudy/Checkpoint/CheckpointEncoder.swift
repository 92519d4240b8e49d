import KVM

/// Turns staged checkpoints into encoded ones, keeping the reference cache of
/// what the receiver holds. Not thread-safe: one encoder thread owns it.
public final class CheckpointEncoder {
    public let codec: PageCodec
    public let cache: ReferenceCache
    /// Pages per encoding, for statistics.
    public private(set) var encodingCounts = [Int](repeating: 0, count: PageEncoding.allCases.count)

    public init(level: CodecLevel, cacheCapacityPages: Int) {
        codec = PageCodec(level: level)
        cache = ReferenceCache(capacityPages: cacheCapacityPages)
    }

    /// Encodes `staged`. A full checkpoint encodes every page without deltas.
    public func encode(_ staged: StagedCheckpoint) -> Checkpoint {
        var pages: [UInt8] = []
        pages.reserveCapacity(staged.count * 64 + 64)
        for index in 0..<staged.count {
            let page = staged.pageNumbers[index]
            let contents = staged.contents(index)
            StateWriter.append(page, to: &pages)
            let tagOffset = pages.count
            pages.append(0)
            let lengthOffset = pages.count
            pages.append(contentsOf: [0, 0, 0, 0])
            let start = pages.count
            let encoding = codec.encode(contents, previous: staged.isFull ? nil : cache.previous(page), into: &pages)
            let length = UInt32(pages.count - start)
            pages[tagOffset] = encoding.rawValue
            for i in 0..<4 { pages[lengthOffset + i] = UInt8(truncatingIfNeeded: length >> (8 * UInt32(i))) }
            encodingCounts[Int(encoding.rawValue)] += 1
            cache.store(page, contents: contents)
        }
        return Checkpoint(sequence: staged.sequence, isFull: staged.isFull, pageCount: staged.count,
                          pages: pages, state: staged.state, output: staged.output, disk: staged.disk)
    }
}
