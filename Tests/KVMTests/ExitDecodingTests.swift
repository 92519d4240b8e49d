import CKVM
import KVM
import TestGuests
import Testing

@Suite("Exits", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct ExitDecodingTests {
    /// A real-mode guest: port I/O out and in, MMIO write and read, then HLT.
    /// No in-kernel irqchip, so HLT reaches user space.
    @Test func realModeGuestPortIOMMIOAndHLT() throws {
        let kvm = try KVM()
        let vm = try kvm.createVM()
        try vm.setTSSAddress(0xFFFB_D000)
        let memory = try SharedMemory(size: 0x10000)
        try vm.setUserMemoryRegion(MemoryRegion(slot: 0, guestPhysicalAddress: 0, memory: memory))
        let vcpu = try vm.createVCPU(id: 0)
        try memory.write(GuestCode.realMode, at: 0x1000)
        var sregs = try vcpu.specialRegisters()
        sregs.cs.base = 0
        sregs.cs.selector = 0
        try vcpu.setSpecialRegisters(sregs)
        var regs = kvm_regs()
        regs.rip = 0x1000
        regs.rflags = 2
        try vcpu.setRegisters(regs)

        #expect(try vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 1, count: 1, data: [0x42])))
        #expect(try vcpu.run() == .io(PortIO(direction: .out, port: 0x12, size: 2, count: 1, data: [0xEF, 0xBE])))
        #expect(try vcpu.run() == .io(PortIO(direction: .in, port: 0x11, size: 1, count: 1, data: [])))
        vcpu.setIOInData([0x77])
        #expect(try vcpu.run() == .mmio(MMIOAccess(address: 0x10020, length: 2, isWrite: true, data: 0x1234)))
        #expect(try vcpu.run() == .mmio(MMIOAccess(address: 0x10040, length: 4, isWrite: false, data: 0)))
        vcpu.setMMIOReadData(0xCAFE_BABE)
        #expect(try vcpu.run() == .hlt)
        // The host's replies reached the guest, which stored them.
        #expect(memory.bytes[0x500] == 0x77)
        #expect(memory.base.loadUnaligned(fromByteOffset: 0x504, as: UInt32.self) == 0xCAFE_BABE)
    }

    /// A 64-bit CPL3 guest finishing its computation reports through three MMIO writes.
    @Test func longModeUserGuestExitsThroughMMIO() throws {
        let machine = try TestMachine()
        try machine.start(GuestCode.compute, rdi: 1000, rsi: TestMachine.dataAddress, rdx: 1023)
        let first = try machine.runToMMIO()
        #expect(first.address == TestMachine.mmioAddress)
        #expect(first.length == 8 && first.isWrite)
        #expect(first.data == ComputeReference.run(iterations: 1000, mask: 1023).rax)
        let sregs = try machine.vcpu.specialRegisters()
        #expect(sregs.cs.dpl == 3, "the guest must run at CPL3")
    }

    /// A CPL3 guest executing an undefined instruction with no IDT triple-faults:
    /// the exit is `.shutdown`, a value the VMM can act on.
    @Test func faultingGuestShutsDown() throws {
        let machine = try TestMachine()
        try machine.start([0x0F, 0x0B])                 // ud2
        #expect(try machine.vcpu.run() == .shutdown)
    }

    /// An exit reason this binding has no case for comes back as `.unknown(raw)`,
    /// decoded from the vCPU's real kvm_run mapping, never a crash.
    @Test func unknownExitIsAValue() throws {
        let machine = try TestMachine()
        #expect(machine.vcpu.decodeExit(simulatingReason: 0xFFFF) == .unknown(reason: 0xFFFF))
        #expect(machine.vcpu.decodeExit(simulatingReason: UInt32(KVM_EXIT_DEBUG)) == .unknown(reason: 4))
        #expect(machine.vcpu.decodeExit(simulatingReason: UInt32(KVM_EXIT_HLT)) == .hlt)
    }
}
