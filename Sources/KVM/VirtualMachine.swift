import CKVM
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A KVM virtual machine: one VM file descriptor, one method per VM ioctl.
public final class VirtualMachine: @unchecked Sendable {
    /// The VM descriptor.
    public let fd: Int32
    /// The system handle this VM came from.
    public let kvm: KVM
    let ioctl: IOCtl
    let vcpuMmapSize: Int
    /// Entries per vCPU dirty ring, once `enableDirtyRing` succeeded.
    private let ringEntries = Atomic<Int>(0)
    private let vcpuCount = Atomic<Int>(0)

    private let irqchipCreated = Atomic<Bool>(false)
    private let pitCreated = Atomic<Bool>(false)

    /// Whether `createIRQChip()` succeeded (the vCPUs then have an in-kernel LAPIC).
    public var hasIRQChip: Bool { irqchipCreated.load(ordering: .acquiring) }
    /// Whether `createPIT2()` succeeded.
    public var hasPIT: Bool { pitCreated.load(ordering: .acquiring) }

    func setDirtyRingEntries(_ entries: Int) { ringEntries.store(entries, ordering: .releasing) }

    /// vCPUs created so far.
    public var createdVCPUCount: Int { vcpuCount.load(ordering: .relaxed) }

    init(fd: Int32, kvm: KVM) throws(KVMError) {
        self.fd = fd
        self.kvm = kvm
        self.ioctl = IOCtl(fd)
        do {
            self.vcpuMmapSize = try kvm.vcpuMmapSize()
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    deinit { closeDescriptor(fd) }

    /// Wraps KVM_CHECK_EXTENSION on the VM descriptor (some capabilities differ per VM).
    public func check(_ capability: Capability) throws(KVMError) -> Int32 {
        try ioctl.call("KVM_CHECK_EXTENSION", CKVM_CHECK_EXTENSION, UInt(capability.rawValue))
    }

    private let xsave2 = Atomic<Int>(-1)

    /// KVM_CAP_XSAVE2's value on this VM (0 when absent), checked once.
    func xsave2Size() throws(KVMError) -> Int {
        let known = xsave2.load(ordering: .relaxed)
        if known >= 0 { return known }
        let size = Int(max(0, try check(.xsave2)))
        xsave2.store(size, ordering: .relaxed)
        return size
    }

    /// Entries per vCPU dirty ring, or 0 if the ring is not enabled.
    public var dirtyRingEntries: Int { ringEntries.load(ordering: .acquiring) }

    // MARK: vCPUs

    /// Wraps KVM_CREATE_VCPU and maps its `kvm_run` (and dirty ring, if enabled).
    public func createVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let vcpufd = try ioctl.call("KVM_CREATE_VCPU", CKVM_CREATE_VCPU, UInt(id))
        vcpuCount.add(1, ordering: .relaxed)
        return try VCPU(fd: vcpufd, id: id, vm: self, mmapSize: vcpuMmapSize, ringEntries: dirtyRingEntries)
    }

    // MARK: memory

    /// Wraps KVM_SET_USER_MEMORY_REGION: adds, changes the flags of, or (with size 0) removes a slot.
    public func setUserMemoryRegion(_ region: MemoryRegion) throws(KVMError) {
        guard region.guestPhysicalAddress % 4096 == 0, region.size % 4096 == 0, region.hostAddress % 4096 == 0 else {
            throw .invalidArgument("memory region addresses and size must be 4 KiB aligned")
        }
        var raw = region.raw
        try ioctl.call("KVM_SET_USER_MEMORY_REGION", CKVM_SET_USER_MEMORY_REGION, &raw)
    }

    /// Removes slot `slot` (KVM_SET_USER_MEMORY_REGION with size 0).
    public func removeMemoryRegion(slot: UInt32) throws(KVMError) {
        var raw = kvm_userspace_memory_region(slot: slot, flags: 0, guest_phys_addr: 0, memory_size: 0, userspace_addr: 0)
        try ioctl.call("KVM_SET_USER_MEMORY_REGION", CKVM_SET_USER_MEMORY_REGION, &raw)
    }

    // MARK: platform

    /// Wraps KVM_CREATE_IRQCHIP (PIC pair + IOAPIC + per-vCPU LAPIC in the kernel). Needs KVM_CAP_IRQCHIP.
    /// Call before creating vCPUs. With an in-kernel LAPIC, HLT is handled in the kernel and no longer exits.
    public func createIRQChip() throws(KVMError) {
        try ioctl.call("KVM_CREATE_IRQCHIP", CKVM_CREATE_IRQCHIP)
        irqchipCreated.store(true, ordering: .releasing)
    }

    /// Wraps KVM_CREATE_PIT2 (in-kernel i8254). Needs KVM_CAP_PIT2 and an irqchip.
    public func createPIT2() throws(KVMError) {
        var config = kvm_pit_config()
        try ioctl.call("KVM_CREATE_PIT2", CKVM_CREATE_PIT2, &config)
        pitCreated.store(true, ordering: .releasing)
    }

    /// Wraps KVM_REINJECT_CONTROL: whether the in-kernel PIT delivers the ticks
    /// a guest missed (it was descheduled, paused for a checkpoint, or slower
    /// than the tick) in a burst, each as soon as the previous one is
    /// acknowledged (KVM's default), or drops them. Needs a PIT.
    public func setPITReinjection(_ enabled: Bool) throws(KVMError) {
        var control = kvm_reinject_control()
        control.pit_reinject = enabled ? 1 : 0
        try ioctl.call("KVM_REINJECT_CONTROL", CKVM_REINJECT_CONTROL, &control)
    }

    /// Wraps KVM_SET_TSS_ADDR: three pages of guest-physical space KVM may use on Intel hosts.
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        try ioctl.call("KVM_SET_TSS_ADDR", CKVM_SET_TSS_ADDR, UInt(address))
    }

    /// Wraps KVM_SET_IDENTITY_MAP_ADDR: one page of guest-physical space for the
    /// real-mode identity map on Intel hosts. Needs KVM_CAP_SET_IDENTITY_MAP_ADDR; before vCPUs.
    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var value = address
        try ioctl.call("KVM_SET_IDENTITY_MAP_ADDR", CKVM_SET_IDENTITY_MAP_ADDR, &value)
    }

    /// Wraps KVM_IRQ_LINE: raises (`level` true) or lowers an interrupt line of the in-kernel irqchip.
    public func setIRQLine(_ irq: UInt32, level: Bool) throws(KVMError) {
        var line = kvm_irq_level()
        line.irq = irq
        line.level = level ? 1 : 0
        try ioctl.call("KVM_IRQ_LINE", CKVM_IRQ_LINE, &line)
    }

    /// Wraps KVM_GET_CLOCK: the kvmclock value. Needs KVM_CAP_ADJUST_CLOCK.
    public func clock() throws(KVMError) -> kvm_clock_data {
        var data = kvm_clock_data()
        try ioctl.call("KVM_GET_CLOCK", CKVM_GET_CLOCK, &data)
        return data
    }

    /// Wraps KVM_SET_CLOCK. Only `clock` and `flags` the kernel understands are passed on.
    public func setClock(_ data: kvm_clock_data) throws(KVMError) {
        var value = kvm_clock_data()
        value.clock = data.clock
        // KVM_SET_CLOCK accepts KVM_CLOCK_REALTIME only together with a realtime value;
        // keep just that flag and drop read-only ones (TSC_STABLE, HOST_TSC).
        value.flags = data.flags & UInt32(KVM_CLOCK_REALTIME)
        value.realtime = data.realtime
        try ioctl.call("KVM_SET_CLOCK", CKVM_SET_CLOCK, &value)
    }

    /// The in-kernel interrupt controllers, as KVM_GET_IRQCHIP numbers them.
    public enum IRQChipID: UInt32, Sendable, CaseIterable {
        case picMaster = 0, picSlave = 1, ioapic = 2
    }

    /// Wraps KVM_GET_IRQCHIP for one chip.
    public func irqChip(_ id: IRQChipID) throws(KVMError) -> kvm_irqchip {
        var chip = kvm_irqchip()
        chip.chip_id = id.rawValue
        try ioctl.call("KVM_GET_IRQCHIP", CKVM_GET_IRQCHIP, &chip)
        return chip
    }

    /// Wraps KVM_SET_IRQCHIP. `chip.chip_id` says which.
    public func setIRQChip(_ chip: kvm_irqchip) throws(KVMError) {
        var value = chip
        try ioctl.call("KVM_SET_IRQCHIP", CKVM_SET_IRQCHIP, &value)
    }

    /// Wraps KVM_GET_PIT2. Needs KVM_CAP_PIT_STATE2 and a PIT.
    public func pit2() throws(KVMError) -> kvm_pit_state2 {
        var state = kvm_pit_state2()
        try ioctl.call("KVM_GET_PIT2", CKVM_GET_PIT2, &state)
        return state
    }

    /// Wraps KVM_SET_PIT2.
    public func setPIT2(_ state: kvm_pit_state2) throws(KVMError) {
        var value = state
        try ioctl.call("KVM_SET_PIT2", CKVM_SET_PIT2, &value)
    }

    // MARK: capabilities

    /// Wraps KVM_ENABLE_CAP on the VM descriptor.
    public func enable(_ capability: Capability, _ arguments: UInt64...) throws(KVMError) {
        var cap = kvm_enable_cap()
        cap.cap = UInt32(capability.rawValue)
        withUnsafeMutableBytes(of: &cap.args) { raw in
            let args = raw.bindMemory(to: UInt64.self)
            for (i, value) in arguments.prefix(4).enumerated() { args[i] = value }
        }
        try ioctl.call("KVM_ENABLE_CAP(\(capability))", CKVM_ENABLE_CAP, &cap)
    }
}
