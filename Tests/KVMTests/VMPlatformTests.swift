import CKVM
import KVM
import TestGuests
import Testing

@Suite("VM platform state", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct VMPlatformTests {
    /// Interrupt controllers, PIT and clock go into a second VM and read back the same.
    @Test func chipsAndClockRoundTrip() throws {
        let kvm = try KVM()
        let source = try kvm.createVM()
        try source.setTSSAddress(0xFFFB_D000)
        try source.setIdentityMapAddress(0xFFFB_C000)
        try source.createIRQChip()
        try source.createPIT2()
        _ = try source.createVCPU(id: 0)
        try source.setIRQLine(4, level: true)          // leaves a mark in the PIC/IOAPIC state
        try source.setIRQLine(4, level: false)
        let state = try source.captureState()
        #expect(state.picMaster != nil && state.picSlave != nil && state.ioapic != nil && state.pit != nil)

        let target = try kvm.createVM()
        try target.createIRQChip()
        try target.createPIT2()
        _ = try target.createVCPU(id: 0)
        try target.restoreState(VMState(decoding: state.encoded()))
        let after = try target.captureState()
        for chip in VirtualMachine.IRQChipID.allCases {
            let a = try source.irqChip(chip), b = try target.irqChip(chip)
            #expect(withUnsafeBytes(of: a) { Array($0) } == withUnsafeBytes(of: b) { Array($0) }, "\(chip)")
        }
        #expect(withUnsafeBytes(of: after.pit!.channels) { Array($0) } != [],
                "PIT state readable after restore")
        // The clock was set to the saved value; it has only moved forward by the time since.
        #expect(after.clock.clock >= state.clock.clock)
        #expect(after.clock.clock - state.clock.clock < 1_000_000_000)
    }

    /// Turning the PIT's reinjection of missed ticks off works on a VM with a
    /// PIT, and without one is an error naming the call.
    @Test func pitReinjectionNeedsAPIT() throws {
        let kvm = try KVM()
        let bare = try kvm.createVM()
        #expect { try bare.setPITReinjection(false) } throws: { "\($0)".contains("KVM_REINJECT_CONTROL") }
        let vm = try kvm.createVM()
        try vm.createIRQChip()
        try vm.createPIT2()
        try vm.setPITReinjection(false)
        try vm.setPITReinjection(true)
    }

    @Test func restoringChipsIntoAVMWithoutThemIsRefused() throws {
        let kvm = try KVM()
        let source = try kvm.createVM()
        try source.createIRQChip()
        let state = try source.captureState()
        let bare = try kvm.createVM()
        #expect(throws: KVMError.self) { try bare.restoreState(state) }
    }
}
