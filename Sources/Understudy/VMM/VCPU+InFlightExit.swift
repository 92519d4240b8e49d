import KVM

extension VCPU {
    /// Whether `exit` leaves its instruction half done until KVM_RUN is
    /// entered again: an MMIO or port-I/O exit. KVM finishes such an
    /// instruction on the next entry (it copies an IN's or an MMIO read's data
    /// into the registers and moves RIP past it, and likewise past an OUT or
    /// an MMIO write), so state read before that entry is *before* the
    /// instruction while its effect on the device has already happened.
    public static func leavesInstructionInFlight(_ exit: VCPUExit) -> Bool {
        switch exit {
        case .mmio, .io: true
        default: false
        }
    }

    /// Completes an MMIO or port-I/O exit before the vCPU is parked for a
    /// pause (a checkpoint, a snapshot, a switchover): with `requestExit()` in
    /// force, enters KVM_RUN once, which finishes the instruction and returns
    /// at once without running guest code. Call on the vCPU's own thread,
    /// after the exit was handled (its data filled in) and the pause asked
    /// for. Returns nil once the instruction is complete. Not doing this is a
    /// correctness bug, not a performance one: a checkpoint taken there would
    /// make a replica that repeats an OUT or MMIO write, or loses an IN or
    /// MMIO read, after a takeover.
    ///
    /// If a resume cleared the exit request first, the guest did run: the
    /// result is its next exit, to be handled as usual (and checked again with
    /// `leavesInstructionInFlight`).
    public func completeInFlightExit() throws(KVMError) -> VCPUExit? {
        let exit = try run()
        return exit == .interrupted ? nil : exit
    }
}
