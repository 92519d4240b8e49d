import CKVM

/// A KVM capability, checked with KVM_CHECK_EXTENSION.
public struct Capability: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let irqchip = Capability(rawValue: KVM_CAP_IRQCHIP)
    public static let pit2 = Capability(rawValue: KVM_CAP_PIT2)
    public static let setTSSAddress = Capability(rawValue: KVM_CAP_SET_TSS_ADDR)
    public static let setIdentityMapAddress = Capability(rawValue: KVM_CAP_SET_IDENTITY_MAP_ADDR)
    public static let adjustClock = Capability(rawValue: KVM_CAP_ADJUST_CLOCK)
    public static let immediateExit = Capability(rawValue: KVM_CAP_IMMEDIATE_EXIT)
    public static let userMemory = Capability(rawValue: KVM_CAP_USER_MEMORY)
    public static let nrMemorySlots = Capability(rawValue: KVM_CAP_NR_MEMSLOTS)
    public static let nrVCPUs = Capability(rawValue: KVM_CAP_NR_VCPUS)
    public static let maxVCPUs = Capability(rawValue: KVM_CAP_MAX_VCPUS)
    public static let manualDirtyLogProtect2 = Capability(rawValue: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
    public static let dirtyLogRing = Capability(rawValue: KVM_CAP_DIRTY_LOG_RING)
    public static let dirtyLogRingAcquireRelease = Capability(rawValue: KVM_CAP_DIRTY_LOG_RING_ACQ_REL)
    public static let syncRegisters = Capability(rawValue: KVM_CAP_SYNC_REGS)
    public static let xsave = Capability(rawValue: KVM_CAP_XSAVE)
    public static let xsave2 = Capability(rawValue: KVM_CAP_XSAVE2)
    public static let xcrs = Capability(rawValue: KVM_CAP_XCRS)
    public static let debugRegisters = Capability(rawValue: KVM_CAP_DEBUGREGS)
    public static let vcpuEvents = Capability(rawValue: KVM_CAP_VCPU_EVENTS)
    public static let mpState = Capability(rawValue: KVM_CAP_MP_STATE)
    public static let extendedCPUID = Capability(rawValue: KVM_CAP_EXT_CPUID)
    public static let getTSCKHz = Capability(rawValue: KVM_CAP_GET_TSC_KHZ)
    public static let tscControl = Capability(rawValue: KVM_CAP_TSC_CONTROL)

    static let names: [Int32: String] = [
        KVM_CAP_IRQCHIP: "KVM_CAP_IRQCHIP", KVM_CAP_PIT2: "KVM_CAP_PIT2",
        KVM_CAP_SET_TSS_ADDR: "KVM_CAP_SET_TSS_ADDR", KVM_CAP_SET_IDENTITY_MAP_ADDR: "KVM_CAP_SET_IDENTITY_MAP_ADDR",
        KVM_CAP_ADJUST_CLOCK: "KVM_CAP_ADJUST_CLOCK", KVM_CAP_IMMEDIATE_EXIT: "KVM_CAP_IMMEDIATE_EXIT",
        KVM_CAP_USER_MEMORY: "KVM_CAP_USER_MEMORY", KVM_CAP_NR_MEMSLOTS: "KVM_CAP_NR_MEMSLOTS",
        KVM_CAP_NR_VCPUS: "KVM_CAP_NR_VCPUS", KVM_CAP_MAX_VCPUS: "KVM_CAP_MAX_VCPUS",
        KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
        KVM_CAP_DIRTY_LOG_RING: "KVM_CAP_DIRTY_LOG_RING", KVM_CAP_DIRTY_LOG_RING_ACQ_REL: "KVM_CAP_DIRTY_LOG_RING_ACQ_REL",
        KVM_CAP_SYNC_REGS: "KVM_CAP_SYNC_REGS", KVM_CAP_XSAVE: "KVM_CAP_XSAVE", KVM_CAP_XSAVE2: "KVM_CAP_XSAVE2",
        KVM_CAP_XCRS: "KVM_CAP_XCRS", KVM_CAP_DEBUGREGS: "KVM_CAP_DEBUGREGS", KVM_CAP_VCPU_EVENTS: "KVM_CAP_VCPU_EVENTS",
        KVM_CAP_MP_STATE: "KVM_CAP_MP_STATE", KVM_CAP_EXT_CPUID: "KVM_CAP_EXT_CPUID",
        KVM_CAP_GET_TSC_KHZ: "KVM_CAP_GET_TSC_KHZ", KVM_CAP_TSC_CONTROL: "KVM_CAP_TSC_CONTROL",
    ]

    public var description: String { Self.names[rawValue] ?? "KVM_CAP(\(rawValue))" }
}
