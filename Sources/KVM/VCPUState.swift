import CKVM

/// The complete architectural state of one vCPU, as KVM exposes it: enough to
/// continue the vCPU in a fresh VM (same or another process, same or another host
/// with the same CPU features).
///
/// `VCPU.captureState()` reads it, `VCPU.restoreState(_:)` writes it,
/// `encoded()` / `init(decoding:)` turn it into versioned bytes and back.
public struct VCPUState: Sendable, Equatable {
    public var registers: kvm_regs
    public var specialRegisters: kvm_sregs
    /// The XSAVE area (KVM_GET_XSAVE2 size).
    public var xsave: [UInt8]
    public var xcrs: kvm_xcrs
    /// The LAPIC, when the VM has an in-kernel irqchip.
    public var lapic: kvm_lapic_state?
    /// Every saveable MSR the vCPU could read, TSC included, in KVM's list order.
    public var msrs: [MSR]
    public var events: kvm_vcpu_events
    public var mpState: kvm_mp_state
    public var debugRegisters: kvm_debugregs
    /// The CPUID the vCPU was given (restored first, before anything depends on it).
    public var cpuid: CPUID

    /// Byte-for-byte equality of the encoded states, free-running counters included.
    public static func == (lhs: VCPUState, rhs: VCPUState) -> Bool { lhs.encoded() == rhs.encoded() }

    /// Equality of everything but the counters KVM advances by itself
    /// (`MSR.freeRunningIndices`): what "the vCPU did not change" means, since two
    /// captures of a vCPU that did not run differ in those.
    public func isSame(as other: VCPUState) -> Bool {
        withoutFreeRunningCounters == other.withoutFreeRunningCounters
    }

    /// This state with the free-running MSRs left out (for comparisons only:
    /// restoring it would leave those counters where the target vCPU has them).
    public var withoutFreeRunningCounters: VCPUState {
        var copy = self
        copy.msrs.removeAll(where: \.isFreeRunning)
        return copy
    }
}

extension VCPU {
    /// Captures the full state. The vCPU must not be inside `run()`.
    ///
    /// MP state is read first (it settles pending LAPIC events), then the registers.
    /// With synced registers enabled (`enableSyncedRegisters`), registers, special
    /// registers and events come from the copy KVM made at the last exit, saving
    /// three ioctls, when that copy is current and the vCPU is runnable. (Reading
    /// MP state can accept a pending INIT or SIPI, which changes registers without
    /// an exit; an application processor is then not runnable and the ioctls are
    /// used. Only an INIT sent to the boot vCPU by another vCPU in the instant
    /// between their two exits would be missed; guests send that only to reset.)
    public func captureState() throws(KVMError) -> VCPUState {
        let mp = try mpState()
        let regs: kvm_regs, sregs: kvm_sregs, events: kvm_vcpu_events
        if mp.mp_state == UInt32(KVM_MP_STATE_RUNNABLE), let synced = syncedCopy(of: .all) {
            (regs, sregs, events) = (synced.regs, synced.sregs, synced.events)
        } else {
            (regs, sregs, events) = (try registers(), try specialRegisters(), try self.events())
        }
        let xsave = try self.xsave()
        let xcrs = try self.xcrs()
        let lapic = vm.hasIRQChip ? try self.lapic() : nil
        let msrs = try saveableMSRValues()
        let debug = try debugRegisters()
        let cpuid: CPUID
        if let given = givenCPUID.withLock({ $0 }) { cpuid = given } else { cpuid = try self.cpuid() }
        return VCPUState(registers: regs, specialRegisters: sregs, xsave: xsave, xcrs: xcrs, lapic: lapic,
                         msrs: msrs, events: events, mpState: mp, debugRegisters: debug, cpuid: cpuid)
    }

    /// Writes `state` into this vCPU (normally a fresh one of a fresh VM).
    ///
    /// An MSR that KVM refuses is accepted only if this vCPU already holds the saved
    /// value (some hosts list MSRs they do not let user space write); otherwise
    /// `KVMError.msrRejected` names it.
    public func restoreState(_ state: VCPUState) throws(KVMError) {
        try setCPUID(state.cpuid)
        try setSpecialRegisters(state.specialRegisters)
        try restoreMSRs(state.msrs)
        try setRegisters(state.registers)
        try setXCRS(state.xcrs)
        try setXSave(state.xsave)
        try setDebugRegisters(state.debugRegisters)
        if let lapic = state.lapic {
            guard vm.hasIRQChip else { throw .invalidArgument("saved state has a LAPIC but this VM has no irqchip") }
            try setLAPIC(lapic)
        }
        try setMPState(state.mpState)
        try setEvents(state.events)
    }

    /// Reads every saveable MSR, learning on first use which of KVM's list this vCPU can read.
    func saveableMSRValues() throws(KVMError) -> [MSR] {
        if let known = readableMSRs.withLock({ $0 }) { return try msrs(known) }
        var candidates = try vm.kvm.saveableMSRs()
        var values: [MSR] = []
        while !candidates.isEmpty {
            let read = try msrs(candidates)
            values += read
            candidates.removeFirst(min(read.count + 1, candidates.count))   // skip the unreadable one
        }
        let readable = values.map(\.index)
        readableMSRs.withLock { $0 = readable }
        return values
    }

    func restoreMSRs(_ saved: [MSR]) throws(KVMError) {
        var remaining = saved[...]
        while !remaining.isEmpty {
            let written = try setMSRs(Array(remaining))
            remaining = remaining.dropFirst(written)
            guard let refused = remaining.first else { break }
            let current = try msrs([refused.index]).first?.value
            guard current == refused.value else {
                throw .msrRejected(index: refused.index, saved: refused.value, current: current ?? 0)
            }
            remaining = remaining.dropFirst()
        }
    }
}
