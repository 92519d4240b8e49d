import KVM
import Foundation

/// Which pages of guest RAM were written since the last harvest, for a
/// checkpoint: the guest's writes from KVM's dirty log (a bitmap per slot, or
/// each vCPU's dirty ring) merged with the VMM's own writes (`GuestMemory`).
/// What any VMM that is checkpointed needs; MicroVM uses it.
///
/// Two rules keep the set complete (a page missing from it would leave the
/// replica with a stale page, found only after a takeover):
///
/// - **Late re-arming and its carry** (bitmap mode): re-arming KVM's log
///   (KVM_CLEAR_DIRTY_LOG) is the costly part of a harvest, so
///   `collect(into:rearmingLate:)` can leave it to `rearm()`, called once the
///   guest runs again. A page the guest writes between the resume and its
///   re-arming leaves no mark in KVM's log, so every page re-armed late is
///   carried into the next harvest: never fewer pages than were written, and
///   no more for a guest that keeps writing the same pages. A slot with more
///   than `lateRearmLimit` dirty pages is re-armed in the pause (there the
///   re-arming is a small share of the pause, and late re-arming measured slower).
/// - **A full ring is absorbed, not lost** (ring mode): a vCPU whose ring fills
///   between harvests exits with KVM_EXIT_DIRTY_RING_FULL; `absorbFullRing(of:)`
///   (on that vCPU's thread) moves its entries aside and resets the rings so it
///   runs on, and the next harvest includes them.
///
/// `collect` is called paused only (every vCPU out of KVM_RUN), from one
/// thread at a time; `rearm` from the same thread, after the resume and before
/// the next harvest.
///
/// Page numbers are guest-physical (page n is guest-physical n × 4096): the
/// harvest's bitmap, and the mapping the engine copies from, cover guest RAM
/// from guest-physical 0 without holes (`ReplicatedMachine.guestMemoryBase`).
/// Each slot starts on a multiple of 64 pages (256 KiB), so a slot's log
/// merges word by word.
public final class DirtyTracker: @unchecked Sendable {
    public enum Mode: Sendable, Equatable {
        /// KVM_GET_DIRTY_LOG with manual protection (`VirtualMachine.enableManualDirtyLogProtect()`).
        case bitmap
        /// The per-vCPU dirty ring (`VirtualMachine.enableDirtyRing(entries:)`).
        case ring
    }

    /// Slots with at most this many dirty pages are re-armed after the resume.
    public static let lateRearmLimit = 256

    public let mode: Mode
    /// Pages of guest RAM (the harvest's whole-RAM numbering).
    public let pageCount: Int
    private let vm: VirtualMachine
    private let slots: [MemoryRegion]
    /// Per KVM slot id, its index in `slots` (-1: not one of them): a ring
    /// entry names its slot by id, and a harvest looks up every entry.
    private let slotIndex: [Int]
    private let vcpus: [VCPU]
    private let ownWrites: GuestMemory?
    /// One reusable KVM dirty bitmap per slot.
    private let slotBitmaps: [DirtyBitmap]
    /// Per slot, the pages re-armed late: the next harvest includes them.
    private let rearmedBitmaps: [DirtyBitmap]
    private var rearmPending = false
    private var rearmedPending = false
    /// Pages taken from full rings between harvests (allocated on first use).
    private var ringOverflow: DirtyBitmap?
    private let ringOverflowLock = NSLock()

    /// Tracks the slots of `vm` (set up with dirty logging, in the mode's
    /// capability enabled before the vCPUs were created). `ownWrites`: where
    /// the VMM records its own writes into guest RAM (nil: it makes none).
    public init(vm: VirtualMachine, slots: [MemoryRegion], vcpus: [VCPU], mode: Mode, ownWrites: GuestMemory?) {
        self.vm = vm
        self.slots = slots
        self.vcpus = vcpus
        self.mode = mode
        self.ownWrites = ownWrites
        pageCount = slots.map { Int($0.guestPhysicalAddress / 4096) + $0.pageCount }.max() ?? 0
        var index = [Int](repeating: -1, count: Int(slots.map(\.slot).max() ?? 0) + 1)
        for (position, region) in slots.enumerated() { index[Int(region.slot)] = position }
        slotIndex = index
        slotBitmaps = slots.map { DirtyBitmap(pageCount: $0.pageCount) }
        rearmedBitmaps = slots.map { DirtyBitmap(pageCount: $0.pageCount) }
    }

    /// Moves every page written since the last call into `bitmap` (whole-RAM
    /// page numbers, OR-ed in). Paused only. With `rearmingLate` (bitmap mode)
    /// small slots are re-armed by `rearm()` after the resume; without it
    /// everything is re-armed here.
    public func collect(into bitmap: DirtyBitmap, rearmingLate: Bool) throws(KVMError) {
        switch mode {
        case .bitmap:
            for (index, slot) in slots.enumerated() {
                let log = slotBitmaps[index]
                let firstPage = Int(slot.guestPhysicalAddress / 4096)
                try vm.dirtyLog(slot: slot.slot, into: log)
                if rearmedPending { bitmap.formUnion(rearmedBitmaps[index], atPage: firstPage) }
                // Slots start on 2 MiB boundaries, so the merge is word by word; an
                // empty log needs no KVM_CLEAR_DIRTY_LOG.
                if bitmap.formUnion(log, atPage: firstPage) && !(rearmingLate && log.count <= Self.lateRearmLimit) {
                    try vm.clearDirtyLog(slot: slot.slot, bitmap: log)
                    if rearmingLate { log.removeAll() }          // nothing left to re-arm late
                }
            }
            rearmedPending = false
            rearmPending = rearmingLate
        case .ring:
            for vcpu in vcpus { try harvestRing(of: vcpu, into: bitmap) }
            _ = try vm.resetDirtyRings()
            ringOverflowLock.withLock {
                if let overflow = ringOverflow {
                    bitmap.formUnion(overflow)
                    overflow.removeAll()
                }
            }
        }
        ownWrites?.takeDirtyPages(into: bitmap)
    }

    /// Whether the last harvest left re-arming to `rearm()`.
    public var isRearmPending: Bool { rearmPending }
    /// Pages the last `rearm()` re-armed late (the next harvest includes them).
    public var pagesRearmedLate: Int { rearmedPending ? rearmedBitmaps.reduce(0) { $0 + $1.count } : 0 }

    /// Re-arms KVM's log for the pages the last harvest left armed (with the
    /// guest running), remembering them for the next harvest. Does nothing
    /// when the last harvest left no work.
    public func rearm() throws(KVMError) {
        guard rearmPending else { return }
        rearmPending = false
        for (index, slot) in slots.enumerated() {
            let log = slotBitmaps[index]
            let rearmed = rearmedBitmaps[index]
            var any: UInt64 = 0
            for i in 0..<log.wordCount {
                rearmed.words[i] = log.words[i]
                any |= log.words[i]
            }
            if any != 0 { try vm.clearDirtyLog(slot: slot.slot, bitmap: log) }
        }
        rearmedPending = true
    }

    /// `vcpu`'s dirty ring filled before anyone harvested it (a guest that
    /// wrote more pages than the ring holds in one epoch, or nobody harvesting:
    /// no standby, a copy in progress, a machine that took over): moves its
    /// entries aside and resets the rings, so the vCPU runs on; the next
    /// `collect` includes those pages. Call on `vcpu`'s own thread while the
    /// machine runs (never at the same time as a harvest).
    public func absorbFullRing(of vcpu: VCPU) throws(KVMError) {
        do {
            try ringOverflowLock.withLock {
                let overflow = ringOverflow ?? DirtyBitmap(pageCount: pageCount)
                ringOverflow = overflow
                try harvestRing(of: vcpu, into: overflow)
                _ = try vm.resetDirtyRings()
            }
        } catch let error as KVMError {
            throw error
        } catch {
            throw .missingCapability(.dirtyLogRing)
        }
    }

    /// Moves `vcpu`'s harvested ring entries into `bitmap` (whole-RAM page numbers).
    private func harvestRing(of vcpu: VCPU, into bitmap: DirtyBitmap) throws(KVMError) {
        do {
            _ = try vcpu.harvestDirtyRing { slotID, offset in
                let slot = Int(slotID & 0xFFFF)
                guard slot < slotIndex.count, slotIndex[slot] >= 0 else { return }
                let region = slots[slotIndex[slot]]
                guard offset < UInt64(region.pageCount) else { return }
                bitmap[Int(region.guestPhysicalAddress / 4096) + Int(offset)] = true
            }
        } catch let error as KVMError {
            throw error
        } catch {
            throw .missingCapability(.dirtyLogRing)
        }
    }
}
