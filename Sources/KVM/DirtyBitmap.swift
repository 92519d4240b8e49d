/// A dirty-page bitmap for one memory slot: bit `n` set means page `n` of the
/// slot (4 KiB each, counted from the slot's start) was written.
///
/// Allocated once per slot and reused for every harvest, so harvesting
/// allocates nothing.
public final class DirtyBitmap: @unchecked Sendable {
    /// Pages the bitmap covers.
    public let pageCount: Int
    /// 64-bit words, `(pageCount + 63) / 64` of them, as KVM_GET_DIRTY_LOG fills them.
    public let words: UnsafeMutableBufferPointer<UInt64>

    public init(pageCount: Int) {
        precondition(pageCount >= 0, "page count must not be negative")
        self.pageCount = pageCount
        self.words = .allocate(capacity: Swift.max(1, (pageCount + 63) / 64))
        words.initialize(repeating: 0)
    }

    deinit { words.deallocate() }

    /// Number of 64-bit words in use.
    public var wordCount: Int { (pageCount + 63) / 64 }

    /// Whether page `page` is marked.
    public subscript(page: Int) -> Bool {
        get { words[page >> 6] & (1 << UInt64(page & 63)) != 0 }
        set {
            if newValue { words[page >> 6] |= 1 << UInt64(page & 63) } else { words[page >> 6] &= ~(1 << UInt64(page & 63)) }
        }
    }

    /// Number of marked pages.
    public var count: Int {
        var total = 0
        for i in 0..<wordCount { total += words[i].nonzeroBitCount }
        return total
    }

    /// Unmarks every page.
    public func removeAll() {
        for i in 0..<wordCount { words[i] = 0 }
    }

    /// Marks every page that is marked in `other` (same size).
    public func formUnion(_ other: DirtyBitmap) {
        precondition(other.pageCount == pageCount, "bitmaps of different slots")
        for i in 0..<wordCount { words[i] |= other.words[i] }
    }

    /// Marks, word by word, every page marked in `other`, shifted by `firstPage`
    /// (a multiple of 64: a slot's bitmap merged into a whole-RAM one). Returns
    /// whether `other` had any page marked.
    @discardableResult
    public func formUnion(_ other: DirtyBitmap, atPage firstPage: Int) -> Bool {
        precondition(firstPage % 64 == 0 && firstPage + other.pageCount <= pageCount, "slot bitmap outside this bitmap")
        var any: UInt64 = 0
        let base = firstPage / 64
        for i in 0..<other.wordCount {
            any |= other.words[i]
            words[base + i] |= other.words[i]
        }
        return any != 0
    }

    /// Calls `body` with each marked page number, in increasing order.
    @inlinable
    public func forEachPage(_ body: (Int) throws -> Void) rethrows {
        for i in 0..<((pageCount + 63) / 64) {
            var word = words[i]
            while word != 0 {
                let bit = word.trailingZeroBitCount
                try body(i << 6 | bit)
                word &= word - 1
            }
        }
    }

    /// The marked pages, in increasing order (allocates; for tests and tools).
    public var pages: [Int] {
        var result: [Int] = []
        forEachPage { result.append($0) }
        return result
    }
}
