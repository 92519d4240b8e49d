import CKVM

extension VCPU {
    /// The register classes KVM_CAP_SYNC_REGS can copy into `kvm_run` on every exit.
    public struct SyncedClasses: OptionSet, Sendable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// KVM_SYNC_X86_REGS: the general-purpose registers (what KVM_GET_REGS returns).
        public static let registers = SyncedClasses(rawValue: UInt64(KVM_SYNC_X86_REGS))
        /// KVM_SYNC_X86_SREGS: segments, control registers, EFER, APIC base (KVM_GET_SREGS).
        public static let specialRegisters = SyncedClasses(rawValue: UInt64(KVM_SYNC_X86_SREGS))
        /// KVM_SYNC_X86_EVENTS: pending exceptions, interrupts, NMIs (KVM_GET_VCPU_EVENTS).
        public static let events = SyncedClasses(rawValue: UInt64(KVM_SYNC_X86_EVENTS))
        public static let all: SyncedClasses = [.registers, .specialRegisters, .events]
    }

    /// Asks KVM to copy `classes` into `kvm_run` on every exit (KVM_CAP_SYNC_REGS),
    /// so that `captureState()` reads them from memory instead of issuing one
    /// ioctl each (~7.5 µs apiece on some hosts). Returns the classes this host
    /// offers of those asked for (empty: the capability is absent, nothing changes).
    ///
    /// Set it before the vCPU first runs, or from the vCPU's own thread: `kvm_run`
    /// is read by KVM at every entry.
    @discardableResult
    public func enableSyncedRegisters(_ classes: SyncedClasses = .all) throws(KVMError) -> SyncedClasses {
        let offered = SyncedClasses(rawValue: UInt64(max(0, try vm.check(.syncRegisters))))
        let enabled = offered.intersection(classes)
        runState.pointee.kvm_valid_regs = enabled.rawValue
        syncedClasses.store(enabled.rawValue, ordering: .releasing)
        return enabled
    }

    /// The classes KVM copies on every exit (see `enableSyncedRegisters`).
    public var syncedRegisterClasses: SyncedClasses {
        SyncedClasses(rawValue: syncedClasses.load(ordering: .acquiring))
    }

    /// The copy of `classes` KVM made at the vCPU's last exit, when that copy is
    /// still the vCPU's state: the vCPU is out of `run()`, it has returned from
    /// `run()` at least once, and no setter was called since. Nil otherwise.
    func syncedCopy(of classes: SyncedClasses) -> kvm_sync_regs? {
        guard syncedRegisterClasses.isSuperset(of: classes), !isRunning,
              syncedCopyCurrent.load(ordering: .acquiring) else { return nil }
        return runState.pointee.s.regs
    }

    /// Called by every setter: KVM refreshes the synced copy only on the next exit.
    func stateWillChange() {
        syncedCopyCurrent.store(false, ordering: .releasing)
    }
}
