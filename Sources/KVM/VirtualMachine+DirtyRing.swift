import CKVM

extension VirtualMachine {
    /// Wraps KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING_ACQ_REL, or KVM_CAP_DIRTY_LOG_RING where
    /// only that exists): each vCPU gets a ring of `entries` dirty-page records (a power of
    /// two; 16 bytes each, at most what the capability reports). Must be called before any
    /// vCPU is created. Slots still need `logDirtyPages`; KVM_GET_DIRTY_LOG is then refused.
    ///
    /// A vCPU whose ring fills leaves KVM_RUN with `.dirtyRingFull`; harvest and reset, then run again.
    public func enableDirtyRing(entries: Int) throws(KVMError) {
        guard entries >= 64, entries & (entries - 1) == 0 else {
            throw .invalidArgument("dirty ring entries must be a power of two >= 64, got \(entries)")
        }
        let acquireRelease = try check(.dirtyLogRingAcquireRelease)
        let plain = try check(.dirtyLogRing)
        let capability: Capability = acquireRelease > 0 ? .dirtyLogRingAcquireRelease : .dirtyLogRing
        let maximumBytes = Int(acquireRelease > 0 ? acquireRelease : plain)
        guard maximumBytes > 0 else { throw .missingCapability(.dirtyLogRing) }
        let bytes = entries * MemoryLayout<kvm_dirty_gfn>.stride
        guard bytes <= maximumBytes else {
            throw .invalidArgument("dirty ring of \(bytes) bytes exceeds KVM's maximum of \(maximumBytes)")
        }
        guard createdVCPUCount == 0 else { throw .invalidArgument("the dirty ring must be enabled before vCPUs are created") }
        guard dirtyRingEntries == 0 else { throw .invalidArgument("dirty ring already enabled") }
        try enable(capability, UInt64(bytes))
        setDirtyRingEntries(entries)
    }

    /// Wraps KVM_RESET_DIRTY_RINGS: write-protects again every page whose ring entry
    /// was harvested (marked for reset). Returns how many entries were reset.
    @discardableResult
    public func resetDirtyRings() throws(KVMError) -> Int {
        Int(try ioctl.call("KVM_RESET_DIRTY_RINGS", CKVM_RESET_DIRTY_RINGS))
    }
}
