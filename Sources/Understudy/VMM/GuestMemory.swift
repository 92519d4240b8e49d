import KVM
import Foundation
import Synchronization

/// Bounds-checked access to guest RAM for the VMM's own reads and writes
/// (virtqueues, DMA of device data), recording every page the VMM writes.
///
/// KVM's dirty log sees only the guest's writes. Whoever harvests dirty pages for
/// a checkpoint merges `takeDirtyPages(into:)` with KVM's log (DESIGN.md §2).
public final class GuestMemory: @unchecked Sendable {
    public let ram: SharedMemory
    public var size: Int { ram.size }
    private let written: Mutex<DirtyBitmap>

    public init(_ ram: SharedMemory) {
        self.ram = ram
        written = Mutex(DirtyBitmap(pageCount: ram.size / 4096))
    }

    /// Whether `[address, address + length)` lies inside RAM.
    public func contains(_ address: UInt64, length: Int) -> Bool {
        length >= 0 && address <= UInt64(ram.size) && UInt64(length) <= UInt64(ram.size) - address
    }

    /// Reads a little-endian integer; nil when out of bounds.
    public func load<I: FixedWidthInteger>(_ address: UInt64, as type: I.Type) -> I? {
        guard contains(address, length: MemoryLayout<I>.size) else { return nil }
        return I(littleEndian: ram.base.loadUnaligned(fromByteOffset: Int(address), as: I.self))
    }

    /// Writes a little-endian integer and marks its page; false when out of bounds.
    @discardableResult
    public func store<I: FixedWidthInteger>(_ value: I, at address: UInt64) -> Bool {
        guard contains(address, length: MemoryLayout<I>.size) else { return false }
        ram.base.storeBytes(of: value.littleEndian, toByteOffset: Int(address), as: I.self)
        mark(address, length: MemoryLayout<I>.size)
        return true
    }

    /// Copies bytes out of guest memory; nil when out of bounds.
    public func read(_ address: UInt64, count: Int) -> [UInt8]? {
        guard contains(address, length: count) else { return nil }
        return Array(UnsafeRawBufferPointer(start: ram.base + Int(address), count: count))
    }

    /// Copies `bytes` into guest memory and marks the pages; false when out of bounds.
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer, at address: UInt64) -> Bool {
        guard contains(address, length: bytes.count) else { return false }
        if bytes.count > 0 { (ram.base + Int(address)).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        mark(address, length: bytes.count)
        return true
    }

    /// A raw pointer to `[address, address + length)`, or nil when out of bounds.
    /// A caller that writes through it must call `mark(_:length:)`.
    public func pointer(_ address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        contains(address, length: length) ? ram.base + Int(address) : nil
    }

    /// Records that the VMM wrote `[address, address + length)`.
    public func mark(_ address: UInt64, length: Int) {
        guard length > 0 else { return }
        let first = Int(address / 4096), last = Int((address + UInt64(length) - 1) / 4096)
        written.withLock { bitmap in
            for page in first...min(last, bitmap.pageCount - 1) { bitmap[page] = true }
        }
    }

    /// Moves the pages written by the VMM since the last call into `bitmap`
    /// (whole-RAM page numbers, OR-ed in) and forgets them.
    public func takeDirtyPages(into bitmap: DirtyBitmap) {
        written.withLock { own in
            bitmap.formUnion(own)
            own.removeAll()
        }
    }
}
