import CKVM

/// One KVM memory slot: guest-physical range backed by host memory
/// (`kvm_userspace_memory_region`).
public struct MemoryRegion: Sendable, Equatable {
    /// The slot number (low 16 bits; the address-space id in the high bits is 0 here).
    public var slot: UInt32
    public var guestPhysicalAddress: UInt64
    public var size: UInt64
    /// The host virtual address of the first byte.
    public var hostAddress: UInt64
    /// KVM_MEM_LOG_DIRTY_PAGES: KVM records guest writes to this slot.
    public var logDirtyPages: Bool
    /// KVM_MEM_READONLY: guest writes become MMIO exits.
    public var readOnly: Bool

    public init(slot: UInt32, guestPhysicalAddress: UInt64, size: UInt64, hostAddress: UInt64,
                logDirtyPages: Bool = false, readOnly: Bool = false) {
        self.slot = slot
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.hostAddress = hostAddress
        self.logDirtyPages = logDirtyPages
        self.readOnly = readOnly
    }

    /// A slot covering the whole of `memory` at `guestPhysicalAddress`.
    public init(slot: UInt32, guestPhysicalAddress: UInt64, memory: SharedMemory, logDirtyPages: Bool = false) {
        self.init(slot: slot, guestPhysicalAddress: guestPhysicalAddress, size: UInt64(memory.size),
                  hostAddress: UInt64(UInt(bitPattern: memory.base)), logDirtyPages: logDirtyPages)
    }

    /// Number of 4 KiB pages in the slot.
    public var pageCount: Int { Int(size / 4096) }

    var raw: kvm_userspace_memory_region {
        var flags: UInt32 = 0
        if logDirtyPages { flags |= UInt32(KVM_MEM_LOG_DIRTY_PAGES) }
        if readOnly { flags |= UInt32(KVM_MEM_READONLY) }
        return kvm_userspace_memory_region(slot: slot, flags: flags, guest_phys_addr: guestPhysicalAddress,
                                           memory_size: size, userspace_addr: hostAddress)
    }
}
