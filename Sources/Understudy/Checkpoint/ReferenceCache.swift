/// What the receiver holds of each page, kept by the sender so it can send XOR
/// deltas. Bounded: at most `capacity` pages (capacity × 4 KiB of memory, plus
/// a small index); when full, the least recently sent page (clock order) is
/// forgotten and its next version goes as a whole (compressed) page.
public final class ReferenceCache {
    public let capacity: Int
    private let storage: UnsafeMutableRawPointer
    private var slotOfPage: [UInt32: Int] = [:]
    private var pageOfSlot: [UInt32]
    private var referenced: [Bool]
    private var hand = 0
    private var used = 0

    public init(capacityPages: Int) {
        capacity = max(1, capacityPages)
        storage = .allocate(byteCount: capacity * pageSize, alignment: 64)
        pageOfSlot = [UInt32](repeating: 0, count: capacity)
        referenced = [Bool](repeating: false, count: capacity)
        slotOfPage.reserveCapacity(capacity)
    }

    deinit { storage.deallocate() }

    /// Bytes of page copies this cache holds at most.
    public var memoryBytes: Int { capacity * pageSize }

    /// The receiver's copy of `page`, if known.
    public func previous(_ page: UInt32) -> UnsafeRawPointer? {
        guard let slot = slotOfPage[page] else { return nil }
        referenced[slot] = true
        return UnsafeRawPointer(storage + slot * pageSize)
    }

    /// Records that the receiver now holds `contents` for `page`.
    public func store(_ page: UInt32, contents: UnsafeRawPointer) {
        let slot: Int
        if let existing = slotOfPage[page] {
            slot = existing
        } else if used < capacity {
            slot = used
            used += 1
        } else {
            while referenced[hand] {
                referenced[hand] = false
                hand = (hand + 1) % capacity
            }
            slot = hand
            slotOfPage.removeValue(forKey: pageOfSlot[slot])
            hand = (hand + 1) % capacity
        }
        slotOfPage[page] = slot
        pageOfSlot[slot] = page
        referenced[slot] = true
        (storage + slot * pageSize).copyMemory(from: contents, byteCount: pageSize)
    }
}
