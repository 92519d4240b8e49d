import Foundation
import KVM
import TestGuests
import Testing

/// A CPL3 guest computes a long deterministic sequence; another thread interrupts
/// it; its memory and full vCPU + VM state go through bytes into a brand-new VM
/// (new /dev/kvm descriptor, new VM, new vCPU, new memory); there it finishes with
/// exactly the result of an uninterrupted run.
@Suite("State round trip", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct StateRoundTripTests {
    static let iterations = 60_000_000
    static let mask = (1 << 17) - 1            // 1 MiB of qwords
    static let memorySize = 8 << 20
    static let reference = ComputeReference.run(iterations: iterations, mask: mask)

    /// Reads the three MMIO results (rax, xmm0 low, xmm0 high) the guest reports on finishing.
    static func results(_ machine: TestMachine) throws -> [UInt64] {
        try (0..<3).map { _ in try machine.runToMMIO().data }
    }

    static func expectMatchesReference(_ machine: TestMachine, results: [UInt64]) {
        let reference = Self.reference
        #expect(results == [reference.rax, reference.xmmLow, reference.xmmHigh])
        let buffer = UnsafeRawPointer(machine.memory.base + Int(TestMachine.dataAddress))
            .bindMemory(to: UInt64.self, capacity: mask + 1)
        #expect(UnsafeBufferPointer(start: buffer, count: mask + 1).elementsEqual(reference.buffer),
                "guest memory differs from the reference")
    }

    @Test(arguments: [3, 17, 40, 75, 110])
    func interruptCaptureRestoreResume(delayMilliseconds: Int) throws {
        // Interrupt after the guest has run for the delay. On a loaded machine the vCPU
        // thread may not get a core at once: try again until the guest made progress.
        // On a fast one the guest may finish within the delay: start again with half of it.
        var delay = delayMilliseconds
        var original = try TestMachine(memorySize: Self.memorySize, irqchip: true)
        try original.start(GuestCode.compute, rdi: UInt64(Self.iterations), rsi: TestMachine.dataAddress,
                           rdx: UInt64(Self.mask))
        var progress: UInt64 = 0
        for _ in 0..<20 where progress == 0 {
            original.vcpu.clearExitRequest()
            let runner = ThreadRunner { [original] in try original.vcpu.run() }
            while !original.vcpu.isRunning { usleep(100) }
            usleep(useconds_t(delay * 1000))
            original.vcpu.requestExit()
            let exit = try runner.join()
            if exit != .interrupted {
                try #require(delay > 1, "the guest finished before it was interrupted (\(exit)), even after 1 ms")
                delay /= 2
                original = try TestMachine(memorySize: Self.memorySize, irqchip: true)
                try original.start(GuestCode.compute, rdi: UInt64(Self.iterations), rsi: TestMachine.dataAddress,
                                   rdx: UInt64(Self.mask))
                continue
            }
            progress = try original.vcpu.registers().rcx
        }
        try #require(progress > 0 && progress < UInt64(Self.iterations), "interrupted at iteration \(progress)")

        // Capture everything as bytes.
        let vcpuBytes = try original.vcpu.captureState().encoded()
        let vmBytes = try original.vm.captureState().encoded()
        let memoryBytes = Array(original.memory.bytes)

        // A brand-new VM from the bytes alone.
        let kvm = try KVM()
        let vm = try kvm.createVM()
        try vm.setTSSAddress(0xFFFB_D000)
        try vm.createIRQChip()
        try vm.createPIT2()
        let memory = try SharedMemory(size: Self.memorySize)
        memory.bytes.copyBytes(from: memoryBytes)
        try vm.setUserMemoryRegion(MemoryRegion(slot: 0, guestPhysicalAddress: 0, memory: memory))
        let vcpu = try vm.createVCPU(id: 0)
        try vcpu.restoreState(VCPUState(decoding: vcpuBytes))
        try vm.restoreState(VMState(decoding: vmBytes))
        #expect(try vcpu.registers().rcx == progress)

        let restored = TestMachine(adopting: kvm, vm: vm, memory: memory, vcpu: vcpu)
        Self.expectMatchesReference(restored, results: try Self.results(restored))

        // The original, with its exit request withdrawn, also goes back in and finishes the same.
        original.vcpu.clearExitRequest()
        Self.expectMatchesReference(original, results: try Self.results(original))
    }

    @Test func uninterruptedRunMatchesReference() throws {
        let machine = try TestMachine(memorySize: Self.memorySize)
        try machine.start(GuestCode.compute, rdi: UInt64(Self.iterations), rsi: TestMachine.dataAddress,
                          rdx: UInt64(Self.mask))
        Self.expectMatchesReference(machine, results: try Self.results(machine))
    }

    /// Capturing twice without running in between yields identical bytes; so does
    /// capturing from the restored vCPU (everything KVM holds went across).
    @Test func captureIsStableAndRestoreIsComplete() throws {
        let machine = try TestMachine(memorySize: Self.memorySize, irqchip: true)
        try machine.start(GuestCode.compute, rdi: 100_000, rsi: TestMachine.dataAddress, rdx: UInt64(Self.mask))
        _ = try machine.runToMMIO()
        let first = try machine.vcpu.captureState()
        let second = try machine.vcpu.captureState()
        // The TSC (and, on hardware KVM, Hyper-V's clocks) move on between captures.
        #expect(first.isSame(as: second), "two captures of a stopped vCPU differ beyond its clocks: \(Self.difference(first, second))")
        #expect(second.msrs.contains { $0.index == 0x10 }, "the TSC is part of the state")
        #expect(second.lapic != nil)
        print("vCPU state: \(second.msrs.count) MSRs, XSAVE area \(second.xsave.count) bytes, \(second.cpuid.entries.count) CPUID entries, \(second.encoded().count) bytes encoded")
        #expect(try VCPUState(decoding: second.encoded()) == second)

        // Restored into a fresh vCPU of a fresh VM, it reads back the same.
        let kvm = try KVM()
        let vm = try kvm.createVM()
        try vm.setTSSAddress(0xFFFB_D000)
        try vm.createIRQChip()
        let vcpu = try vm.createVCPU(id: 0)
        try vcpu.restoreState(second)
        let restored = try vcpu.captureState()
        #expect(restored.isSame(as: second), "the restored vCPU differs: \(Self.difference(second, restored))")
    }

    /// What differs between two states, in a line (MSRs by index, other parts by name).
    static func difference(_ a: VCPUState, _ b: VCPUState) -> String {
        var parts: [String] = []
        let msrsA = Dictionary(a.msrs.map { ($0.index, $0.value) }, uniquingKeysWith: { x, _ in x })
        let msrsB = Dictionary(b.msrs.map { ($0.index, $0.value) }, uniquingKeysWith: { x, _ in x })
        for index in Set(msrsA.keys).union(msrsB.keys).sorted() where msrsA[index] != msrsB[index] {
            parts.append("MSR 0x\(String(index, radix: 16)): \(msrsA[index].map { String($0) } ?? "absent") vs \(msrsB[index].map { String($0) } ?? "absent")")
        }
        func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
        for (name, differs) in [("registers", bytes(a.registers) != bytes(b.registers)),
                                ("special registers", bytes(a.specialRegisters) != bytes(b.specialRegisters)),
                                ("xsave", a.xsave != b.xsave), ("xcrs", bytes(a.xcrs) != bytes(b.xcrs)),
                                ("lapic", a.lapic.map(bytes) != b.lapic.map(bytes)), ("events", bytes(a.events) != bytes(b.events)),
                                ("mp state", bytes(a.mpState) != bytes(b.mpState)),
                                ("debug registers", bytes(a.debugRegisters) != bytes(b.debugRegisters)),
                                ("cpuid", a.cpuid != b.cpuid)] where differs {
            parts.append(name)
        }
        return parts.isEmpty ? "nothing" : parts.joined(separator: "; ")
    }
}
