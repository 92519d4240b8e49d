import Foundation
@testable import KVM
@testable import MicroVM
import TestGuests
import Testing

/// The checkpoint pause's shortcuts: registers read from kvm_run (KVM_CAP_SYNC_REGS)
/// and vCPU threads reading their own state while the caller works on.
@Suite("Checkpoint pause", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct CheckpointPauseTests {
    static func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    /// 300 checkpoint pauses of a busy two-vCPU machine: the state the vCPU threads
    /// read (registers from kvm_run's synced copy) equals what the GET ioctls
    /// return at that moment, field for field; the workload's output stays exact.
    @Test func syncedRegistersEqualTheIoctls() throws {
        let console = ConsoleBuffer()
        let machine = try Machine(configuration: .init(vcpuCount: 2, memorySize: 64 << 20,
                                                       commandLine: "pages=16 wss=256 every=3000", dirtyTracking: .bitmap),
                                  console: console.sink)
        for vcpu in machine.vcpus {
            #expect(vcpu.syncedRegisterClasses == .all, "this host offers KVM_CAP_SYNC_REGS for registers, sregs and events")
        }
        try machine.start()
        var fromCopy = 0
        for cycle in 0..<300 {
            try machine.pause(capturingVCPUState: true)
            let parked = try machine.vcpus.indices.map { index in try #require(takeParked(machine)[index]).get() }
            for (index, vcpu) in machine.vcpus.enumerated() {
                if vcpu.syncedCopy(of: .all) != nil { fromCopy += 1 }
                let state = parked[index]
                #expect(Self.bytes(state.registers) == Self.bytes(try vcpu.registers()), "cycle \(cycle) vCPU \(index): regs")
                #expect(Self.bytes(state.specialRegisters) == Self.bytes(try vcpu.specialRegisters()), "cycle \(cycle) vCPU \(index): sregs")
                #expect(Self.bytes(state.events) == Self.bytes(try vcpu.events()), "cycle \(cycle) vCPU \(index): events")
            }
            try machine.resume()
            usleep(200)
        }
        // A vCPU that has not entered KVM_RUN since start (the first cycles) has no copy yet.
        #expect(fromCopy >= 300, "\(fromCopy) of 600 captures used the synced copy")
        // A setter makes the copy stale until the next exit: the ioctls are used then.
        try machine.pause()
        let vcpu = machine.vcpus[0]
        try vcpu.setRegisters(try vcpu.registers())
        #expect(vcpu.syncedCopy(of: .all) == nil)
        var refreshed = false
        for _ in 0..<2000 where !refreshed {
            try machine.resume()
            usleep(1000)
            try machine.pause()
            refreshed = vcpu.syncedCopy(of: .all) != nil
        }
        #expect(refreshed, "the vCPU's next exit refreshed the copy")
        try machine.resume()
        stopAndExpectExactWorkload(machine, console: console, cpus: 2, pages: 16, wss: 256, every: 3000, atLeast: 2)
    }

    /// The parked states, waited for as `captureState()` waits.
    func takeParked(_ machine: Machine) -> [Result<VCPUState, KVMError>?] {
        machine.condition.lock()
        defer { machine.condition.unlock() }
        while machine.parkedStates.contains(where: { $0 == nil }) { machine.condition.wait() }
        return machine.parkedStates
    }

    /// A plain pause reads nothing on the vCPU threads; a checkpoint pause's reads
    /// are taken once, and a second save in the same pause reads afresh and agrees.
    @Test func parkedReadsAreTakenOnce() throws {
        let machine = try Machine(configuration: .init(memorySize: 16 << 20, commandLine: "pages=4 wss=16 every=100000",
                                                       dirtyTracking: .bitmap), console: { _ in })
        try machine.start()
        try machine.pause()
        usleep(2000)
        #expect(machine.parkedStates.allSatisfy { $0 == nil })
        try machine.resume()
        try machine.pause(capturingVCPUState: true)
        let first = try machine.saveState()
        #expect(!machine.captureRequested)
        let second = try machine.saveState()
        let a = try VCPUState(decoding: try MachineState(decoding: first).vcpuStates[0])
        let b = try VCPUState(decoding: try MachineState(decoding: second).vcpuStates[0])
        #expect(Self.bytes(a.registers) == Self.bytes(b.registers))
        #expect(Self.bytes(a.specialRegisters) == Self.bytes(b.specialRegisters))
        #expect(a.xsave == b.xsave)
        try machine.resume()
        machine.requestStop()
        #expect(machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) == .requested)
    }
}
