/// Why KVM_RUN returned, decoded from `kvm_run`.
public enum VCPUExit: Sendable, Equatable {
    /// Port I/O. For `.out` the data is in `data`; for `.in` the host writes the
    /// reply with `VCPU.setIOInData` before the next run.
    case io(PortIO)
    /// A guest access to guest-physical memory with no slot. For reads, the host
    /// writes the reply with `VCPU.setMMIOReadData` before the next run.
    case mmio(MMIOAccess)
    /// The guest executed HLT (only exits to user space without an in-kernel LAPIC).
    case hlt
    /// Triple fault or similar: the vCPU cannot continue.
    case shutdown
    /// VM entry failed; `reason` is the hardware entry-failure reason.
    case failEntry(reason: UInt64, cpu: UInt32)
    /// KVM could not handle something (emulation failure and the like).
    case internalError(suberror: UInt32, data: [UInt64])
    /// KVM_SYSTEM_EVENT: shutdown, reset or crash requested by the guest.
    case systemEvent(type: UInt32, flags: UInt64)
    /// This vCPU's dirty ring is full: harvest and reset before running again.
    case dirtyRingFull
    /// KVM_RUN returned EINTR: a signal or `immediate_exit` made it leave early.
    case interrupted
    /// KVM_EXIT_INTR: the run was cut by a pending signal after entry.
    case signalPending
    /// Any other exit reason, raw.
    case unknown(reason: UInt32)
}

/// A port-I/O exit.
public struct PortIO: Sendable, Equatable {
    public enum Direction: Sendable, Equatable { case `in`, out }
    public var direction: Direction
    public var port: UInt16
    /// Bytes per access: 1, 2 or 4.
    public var size: Int
    /// Repetitions (string I/O).
    public var count: Int
    /// For `.out`: the bytes written (size × count). Empty for `.in`.
    public var data: [UInt8]

    public init(direction: Direction, port: UInt16, size: Int, count: Int, data: [UInt8]) {
        self.direction = direction
        self.port = port
        self.size = size
        self.count = count
        self.data = data
    }
}

/// An MMIO exit.
public struct MMIOAccess: Sendable, Equatable {
    public var address: UInt64
    /// Access width in bytes (1 to 8).
    public var length: Int
    public var isWrite: Bool
    /// The value written, little endian, `length` bytes significant. Zero for reads.
    public var data: UInt64

    public init(address: UInt64, length: Int, isWrite: Bool, data: UInt64) {
        self.address = address
        self.length = length
        self.isWrite = isWrite
        self.data = data
    }
}
