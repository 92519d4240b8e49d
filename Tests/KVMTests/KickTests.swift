import Foundation
import KVM
import TestGuests
import Testing

@Suite("Leaving KVM_RUN on request", .enabled(if: KVMAvailability.available, "needs /dev/kvm"))
struct KickTests {
    /// A spinning guest is made to leave KVM_RUN from another thread, and goes back
    /// in to carry on from where it was, many times over.
    @Test func requestExitInterruptsAndGuestContinues() throws {
        let machine = try TestMachine()
        try machine.start(GuestCode.spin)
        var lastCount: UInt64 = 0
        var progressed = 0
        for _ in 0..<50 {
            let runner = ThreadRunner { try machine.vcpu.run() }
            while !machine.vcpu.isRunning { usleep(100) }
            usleep(2000)
            machine.vcpu.requestExit()
            #expect(try runner.join() == .interrupted)
            let count = try machine.vcpu.registers().rax
            #expect(count >= lastCount, "the guest's counter never goes back")
            if count > lastCount { progressed += 1 }
            lastCount = count
            machine.vcpu.clearExitRequest()
        }
        // On a loaded two-core machine a vCPU thread can be descheduled for a whole
        // 2 ms window (more so while guests build); it must still have run in half of them.
        #expect(progressed >= 25, "the guest ran in only \(progressed) of 50 windows")
    }

    /// A request made while no thread is inside `run()` holds: the next run returns at once.
    @Test func requestBeforeRunReturnsImmediately() throws {
        let machine = try TestMachine()
        try machine.start(GuestCode.spin)
        machine.vcpu.requestExit()
        #expect(machine.vcpu.exitRequested)
        #expect(try machine.vcpu.run() == .interrupted)
        #expect(try machine.vcpu.registers().rax == 0, "the guest never ran")
        #expect(try machine.vcpu.run() == .interrupted, "the request stays until cleared")
        machine.vcpu.clearExitRequest()
        #expect(!machine.vcpu.exitRequested)
    }
}
