import CKVM
#if canImport(Glibc)
import Glibc
#endif

extension VCPU {
    /// Wraps KVM_GET_REGS.
    public func registers() throws(KVMError) -> kvm_regs {
        var value = kvm_regs()
        try ioctl.call("KVM_GET_REGS", CKVM_GET_REGS, &value)
        return value
    }

    /// Wraps KVM_SET_REGS.
    public func setRegisters(_ registers: kvm_regs) throws(KVMError) {
        stateWillChange()
        var value = registers
        try ioctl.call("KVM_SET_REGS", CKVM_SET_REGS, &value)
    }

    /// Wraps KVM_GET_SREGS.
    public func specialRegisters() throws(KVMError) -> kvm_sregs {
        var value = kvm_sregs()
        try ioctl.call("KVM_GET_SREGS", CKVM_GET_SREGS, &value)
        return value
    }

    /// Wraps KVM_SET_SREGS.
    public func setSpecialRegisters(_ registers: kvm_sregs) throws(KVMError) {
        stateWillChange()
        var value = registers
        try ioctl.call("KVM_SET_SREGS", CKVM_SET_SREGS, &value)
    }

    /// Wraps KVM_GET_FPU (the legacy FPU/SSE view; `xsave()` is the complete one).
    public func fpu() throws(KVMError) -> kvm_fpu {
        var value = kvm_fpu()
        try ioctl.call("KVM_GET_FPU", CKVM_GET_FPU, &value)
        return value
    }

    /// Size in bytes of this host's XSAVE area: KVM_CAP_XSAVE2's value, or 4096.
    public func xsaveSize() throws(KVMError) -> Int {
        max(try vm.xsave2Size(), MemoryLayout<kvm_xsave>.size)
    }

    /// Wraps KVM_GET_XSAVE2 (or KVM_GET_XSAVE where XSAVE2 is absent): the full
    /// extended register state (x87, SSE, AVX, ...). Needs KVM_CAP_XSAVE.
    public func xsave() throws(KVMError) -> [UInt8] {
        let size = try xsaveSize()
        let useXSave2 = try vm.xsave2Size() > 0
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0)
        if useXSave2 {
            try ioctl.call("KVM_GET_XSAVE2", CKVM_GET_XSAVE2, pointer: raw.baseAddress)
        } else {
            try ioctl.call("KVM_GET_XSAVE", CKVM_GET_XSAVE, pointer: raw.baseAddress)
        }
        return Array(raw)
    }

    /// Wraps KVM_SET_XSAVE. `area` may be shorter than this host's area (zero-filled)
    /// but not longer.
    public func setXSave(_ area: [UInt8]) throws(KVMError) {
        stateWillChange()
        let size = try xsaveSize()
        guard area.count <= size else {
            throw .invalidArgument("XSAVE area of \(area.count) bytes exceeds this host's \(size)")
        }
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0)
        raw.copyBytes(from: area)
        try ioctl.call("KVM_SET_XSAVE", CKVM_SET_XSAVE, pointer: raw.baseAddress)
    }

    /// Wraps KVM_GET_XCRS (XCR0). Needs KVM_CAP_XCRS.
    public func xcrs() throws(KVMError) -> kvm_xcrs {
        var value = kvm_xcrs()
        try ioctl.call("KVM_GET_XCRS", CKVM_GET_XCRS, &value)
        return value
    }

    /// Wraps KVM_SET_XCRS.
    public func setXCRS(_ xcrs: kvm_xcrs) throws(KVMError) {
        stateWillChange()
        var value = xcrs
        try ioctl.call("KVM_SET_XCRS", CKVM_SET_XCRS, &value)
    }

    /// Wraps KVM_GET_LAPIC. Needs an in-kernel irqchip.
    public func lapic() throws(KVMError) -> kvm_lapic_state {
        var value = kvm_lapic_state()
        try ioctl.call("KVM_GET_LAPIC", CKVM_GET_LAPIC, &value)
        return value
    }

    /// Wraps KVM_SET_LAPIC.
    public func setLAPIC(_ state: kvm_lapic_state) throws(KVMError) {
        stateWillChange()
        var value = state
        try ioctl.call("KVM_SET_LAPIC", CKVM_SET_LAPIC, &value)
    }

    /// Wraps KVM_GET_MSRS. KVM reads the MSRs in order and stops at the first it
    /// cannot read; the result holds those it read (a prefix of `indices`).
    public func msrs(_ indices: [UInt32]) throws(KVMError) -> [MSR] {
        guard !indices.isEmpty else { return [] }
        guard let raw = ckvm_msrs_alloc(UInt32(indices.count)) else { throw .systemCall(name: "calloc", errno: ENOMEM) }
        defer { free(raw) }
        let entries = ckvm_msrs_entries(raw)!
        for (i, index) in indices.enumerated() { entries[i].index = index }
        let read = Int(try ioctl.call("KVM_GET_MSRS", CKVM_GET_MSRS, pointer: raw))
        return (0..<min(read, indices.count)).map { MSR(index: entries[$0].index, value: entries[$0].data) }
    }

    /// Wraps KVM_SET_MSRS. Returns how many were set: KVM stops at the first it refuses.
    @discardableResult
    public func setMSRs(_ msrs: [MSR]) throws(KVMError) -> Int {
        stateWillChange()
        guard !msrs.isEmpty else { return 0 }
        guard let raw = ckvm_msrs_alloc(UInt32(msrs.count)) else { throw .systemCall(name: "calloc", errno: ENOMEM) }
        defer { free(raw) }
        let entries = ckvm_msrs_entries(raw)!
        for (i, msr) in msrs.enumerated() {
            entries[i].index = msr.index
            entries[i].data = msr.value
        }
        return Int(try ioctl.call("KVM_SET_MSRS", CKVM_SET_MSRS, pointer: raw))
    }

    /// Wraps KVM_GET_VCPU_EVENTS (pending exceptions, interrupts, NMIs, SMM). Needs KVM_CAP_VCPU_EVENTS.
    public func events() throws(KVMError) -> kvm_vcpu_events {
        var value = kvm_vcpu_events()
        try ioctl.call("KVM_GET_VCPU_EVENTS", CKVM_GET_VCPU_EVENTS, &value)
        return value
    }

    /// Wraps KVM_SET_VCPU_EVENTS.
    public func setEvents(_ events: kvm_vcpu_events) throws(KVMError) {
        stateWillChange()
        var value = events
        try ioctl.call("KVM_SET_VCPU_EVENTS", CKVM_SET_VCPU_EVENTS, &value)
    }

    /// Wraps KVM_GET_MP_STATE. Needs KVM_CAP_MP_STATE.
    public func mpState() throws(KVMError) -> kvm_mp_state {
        var value = kvm_mp_state()
        try ioctl.call("KVM_GET_MP_STATE", CKVM_GET_MP_STATE, &value)
        return value
    }

    /// Wraps KVM_SET_MP_STATE.
    public func setMPState(_ state: kvm_mp_state) throws(KVMError) {
        stateWillChange()
        var value = state
        try ioctl.call("KVM_SET_MP_STATE", CKVM_SET_MP_STATE, &value)
    }

    /// Wraps KVM_GET_DEBUGREGS. Needs KVM_CAP_DEBUGREGS.
    public func debugRegisters() throws(KVMError) -> kvm_debugregs {
        var value = kvm_debugregs()
        try ioctl.call("KVM_GET_DEBUGREGS", CKVM_GET_DEBUGREGS, &value)
        return value
    }

    /// Wraps KVM_SET_DEBUGREGS.
    public func setDebugRegisters(_ registers: kvm_debugregs) throws(KVMError) {
        stateWillChange()
        var value = registers
        try ioctl.call("KVM_SET_DEBUGREGS", CKVM_SET_DEBUGREGS, &value)
    }

    /// Wraps KVM_SET_CPUID2: what CPUID reports to the guest. Set before the first run.
    public func setCPUID(_ cpuid: CPUID) throws(KVMError) {
        stateWillChange()
        try cpuid.withRaw { (raw) throws(KVMError) in
            try ioctl.call("KVM_SET_CPUID2", CKVM_SET_CPUID2, pointer: raw)
        }
        givenCPUID.withLock { $0 = cpuid }
    }

    /// Wraps KVM_GET_CPUID2: the CPUID entries this vCPU was given.
    public func cpuid() throws(KVMError) -> CPUID {
        var capacity: UInt32 = 128
        while true {
            guard let raw = ckvm_cpuid2_alloc(capacity) else { throw .systemCall(name: "calloc", errno: ENOMEM) }
            defer { free(raw) }
            do {
                try ioctl.call("KVM_GET_CPUID2", CKVM_GET_CPUID2, pointer: raw)
                return CPUID(entries: Array(UnsafeBufferPointer(start: ckvm_cpuid2_entries(raw), count: Int(raw.pointee.nent))))
            } catch where error.errno == E2BIG && capacity < 4096 {
                capacity *= 2
            }
        }
    }

    /// Wraps KVM_GET_TSC_KHZ: the guest TSC frequency. Needs KVM_CAP_GET_TSC_KHZ.
    public func tscKHz() throws(KVMError) -> UInt32 {
        UInt32(try ioctl.call("KVM_GET_TSC_KHZ", CKVM_GET_TSC_KHZ))
    }
}

/// One model-specific register and its value.
public struct MSR: Sendable, Equatable, Hashable {
    public var index: UInt32
    public var value: UInt64
    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }

    /// MSRs whose value KVM advances by itself, even while the vCPU is out of
    /// KVM_RUN: counters of time. They are part of a vCPU's state (a restored vCPU
    /// must get them back), but two captures of a stopped vCPU differ in them, so
    /// "the same state" means equal in everything else (`VCPUState.isSame(as:)`).
    ///
    /// - 0x10 IA32_TIME_STAMP_COUNTER, on every KVM;
    /// - 0x40000010 HV_X64_MSR_VP_RUNTIME and 0x40000020 HV_X64_MSR_TIME_REF_COUNT,
    ///   Hyper-V's per-vCPU run time and reference clock, which hardware KVM
    ///   (kvm_intel, kvm_amd) lists as saveable and kvm_pvm does not.
    public static let freeRunningIndices: Set<UInt32> = [0x10, 0x4000_0010, 0x4000_0020]

    /// Whether KVM advances this MSR by itself (see `freeRunningIndices`).
    public var isFreeRunning: Bool { Self.freeRunningIndices.contains(index) }
}
