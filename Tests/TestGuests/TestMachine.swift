import KVM

/// A one-vCPU VM with a CPL3 64-bit guest, built the way DESIGN.md's
/// "Guests on our machines" describes: the host writes identity-mapped user
/// page tables and loads 64-bit user segments with KVM_SET_SREGS; the guest
/// never runs CPL0 code and leaves through MMIO writes.
///
/// Guest-physical layout:
/// ```
/// 0x1000 PML4 · 0x2000 PDPT · 0x3000-0x6fff four PDs (2 MiB pages, first 4 GiB)
/// 0x7000 GDT · 0x10000 code · 0x30000 stack top · 0x80000 parameter area
/// 0x200000 ... end of RAM: data the guest works on
/// 0xE000_0000: MMIO (mapped in the page tables, no memory slot)
/// ```
public final class TestMachine: @unchecked Sendable {
    public static let codeAddress: UInt64 = 0x10000
    public static let stackTop: UInt64 = 0x30000
    public static let parameterAddress: UInt64 = 0x80000
    public static let dataAddress: UInt64 = 0x200000
    public static let mmioAddress: UInt64 = 0xE000_0000

    public let kvm: KVM
    public let vm: VirtualMachine
    public let memory: SharedMemory
    public let vcpu: VCPU
    /// Slot 0: the first 2 MiB (page tables, code, stack, parameters), never dirty-logged.
    public let systemSlot: MemoryRegion
    /// Slot 1: from `dataAddress` to the end of memory, dirty-logged when tracking is on.
    public let slot: MemoryRegion

    public enum DirtyTracking: Sendable { case none, bitmap, ring(entries: Int) }

    /// Builds the VM (memory of at least 4 MiB). With `irqchip`, an in-kernel irqchip and PIT are created too.
    public init(memorySize: Int = 16 << 20, tracking: DirtyTracking = .none, irqchip: Bool = false,
                kvm: KVM? = nil) throws {
        let kvm = try kvm ?? KVM()
        self.kvm = kvm
        vm = try kvm.createVM()
        switch tracking {
        case .none: break
        case .bitmap: try vm.enableManualDirtyLogProtect()
        case .ring(let entries): try vm.enableDirtyRing(entries: entries)
        }
        if irqchip {
            try vm.setTSSAddress(0xFFFB_D000)
            try vm.createIRQChip()
            try vm.createPIT2()
        }
        memory = try SharedMemory(size: memorySize, name: "test-guest")
        var logging = false
        if case .none = tracking {} else { logging = true }
        (systemSlot, slot) = Self.slots(memory, logDirtyPages: logging)
        try vm.setUserMemoryRegion(systemSlot)
        try vm.setUserMemoryRegion(slot)
        vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(kvm.supportedCPUID())
        Self.writePageTables(into: memory)
    }

    /// Wraps parts built elsewhere (a VM restored from saved state, say); slot 0 covers `memory`.
    public init(adopting kvm: KVM, vm: VirtualMachine, memory: SharedMemory, vcpu: VCPU) {
        self.kvm = kvm
        self.vm = vm
        self.memory = memory
        self.vcpu = vcpu
        (systemSlot, slot) = Self.slots(memory, logDirtyPages: false)
    }

    /// The two slots over `memory`. The guest only reads slot 0, and keeping it out of
    /// the dirty log matters: under shadow paging, a read through a guest PTE whose
    /// dirty bit is already set maps the page writable and logs it as dirty at once.
    public static func slots(_ memory: SharedMemory, logDirtyPages: Bool) -> (MemoryRegion, MemoryRegion) {
        let host = UInt64(UInt(bitPattern: memory.base))
        let system = MemoryRegion(slot: 0, guestPhysicalAddress: 0, size: dataAddress, hostAddress: host)
        let data = MemoryRegion(slot: 1, guestPhysicalAddress: dataAddress, size: UInt64(memory.size) - dataAddress,
                                hostAddress: host + dataAddress, logDirtyPages: logDirtyPages)
        return (system, data)
    }

    /// Writes identity-mapped user page tables for the first 4 GiB with the
    /// accessed and dirty bits already set, so the CPU never writes them back
    /// (the dirty log then shows only the guest's own writes).
    public static func writePageTables(into memory: SharedMemory) {
        let base = memory.base
        func entry(_ address: UInt64, _ value: UInt64) {
            base.storeBytes(of: value, toByteOffset: Int(address), as: UInt64.self)
        }
        let present: UInt64 = 1, writable: UInt64 = 2, user: UInt64 = 4, accessed: UInt64 = 0x20
        let dirty: UInt64 = 0x40, large: UInt64 = 0x80
        entry(0x1000, 0x2000 | present | writable | user | accessed)
        for gib in 0..<4 {
            entry(0x2000 + UInt64(gib) * 8, (0x3000 + UInt64(gib) * 0x1000) | present | writable | user | accessed)
            for i in 0..<512 {
                let physical = UInt64(gib) << 30 | UInt64(i) << 21
                entry(0x3000 + UInt64(gib) * 0x1000 + UInt64(i) * 8,
                      physical | present | writable | user | accessed | dirty | large)
            }
        }
        // A GDT with user code (0x33) and user data (0x2b) descriptors, for completeness:
        // the hidden segment state comes from KVM_SET_SREGS.
        entry(0x7000 + 5 * 8, 0x00CF_F300_0000_FFFF)   // 0x28: data, DPL3
        entry(0x7000 + 6 * 8, 0x00AF_FB00_0000_FFFF)   // 0x30: code, DPL3, L
    }

    /// Special registers for 64-bit mode at CPL3 with paging, PAE, SSE and the page tables above.
    public static func longModeUserSegments(_ sregs: kvm_sregs) -> kvm_sregs {
        var s = sregs
        s.cr3 = 0x1000
        s.cr4 = 1 << 5 | 1 << 9 | 1 << 10          // PAE, OSFXSR, OSXMMEXCPT
        s.cr0 = 0x8000_0033 | 1 << 16               // PG, WP, NE, ET, MP, PE
        s.efer = 0x500                              // LME, LMA
        var code = kvm_segment()
        code.base = 0; code.limit = 0xFFFF_FFFF; code.selector = 0x33; code.type = 11
        code.present = 1; code.dpl = 3; code.db = 0; code.s = 1; code.l = 1; code.g = 1
        var data = kvm_segment()
        data.base = 0; data.limit = 0xFFFF_FFFF; data.selector = 0x2B; data.type = 3
        data.present = 1; data.dpl = 3; data.db = 1; data.s = 1; data.l = 0; data.g = 1
        s.cs = code
        s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
        var task = kvm_segment()
        task.base = 0x8000; task.limit = 0x67; task.selector = 0x40; task.type = 11; task.present = 1
        s.tr = task
        s.gdt.base = 0x7000; s.gdt.limit = 0x4F
        return s
    }

    /// Loads `code` at the code address and points the vCPU at it in 64-bit user mode,
    /// with `registers` (by name: rdi, rsi, rdx, r10, r11) set.
    public func start(_ code: [UInt8], rdi: UInt64 = 0, rsi: UInt64 = 0, rdx: UInt64 = 0,
                      r10: UInt64 = TestMachine.mmioAddress, r11: UInt64 = TestMachine.parameterAddress) throws {
        try memory.write(code, at: Int(Self.codeAddress))
        try vcpu.setSpecialRegisters(Self.longModeUserSegments(vcpu.specialRegisters()))
        var regs = kvm_regs()
        regs.rip = Self.codeAddress
        regs.rsp = Self.stackTop
        regs.rflags = 2
        regs.rdi = rdi; regs.rsi = rsi; regs.rdx = rdx; regs.r10 = r10; regs.r11 = r11
        try vcpu.setRegisters(regs)
    }

    /// Runs until the next MMIO exit and returns it; any other exit is an error.
    public func runToMMIO() throws -> MMIOAccess {
        while true {
            let exit = try vcpu.run()
            switch exit {
            case .mmio(let access): return access
            case .interrupted, .signalPending: continue
            default: throw UnexpectedExit(exit: exit)
            }
        }
    }

    /// Puts the page-writer's list (count, then addresses) in the parameter area.
    public func setPageList(_ addresses: [UInt64]) throws {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 * (addresses.count + 1))
        for value in [UInt64(addresses.count)] + addresses {
            withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
        }
        try memory.write(bytes, at: Int(Self.parameterAddress))
    }
}

/// A vCPU exit the test guest should not have caused.
public struct UnexpectedExit: Error, CustomStringConvertible {
    public let exit: VCPUExit
    public var description: String { "unexpected vCPU exit: \(exit)" }
}
