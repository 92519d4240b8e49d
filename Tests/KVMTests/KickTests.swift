import Foundation
import KVM
import TestGuests
import Testing

@Suite("Leaving KVM_RUN on request", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct KickTests {
    /// A spinning guest is made to leave KVM_RUN from another thread, and goes back
    /// in to carry on from where it was, many times over. Each round lets the guest
    /// run until it has made progress (a window that begins at 2 ms and doubles
    /// while the guest has not run: a vCPU thread may get no core for a while on a
    /// loaded host, and a nested KVM enters the guest far more slowly).
    @Test func requestExitInterruptsAndGuestContinues() throws {
        let machine = try TestMachine()
        try machine.start(GuestCode.spin)
        var lastCount: UInt64 = 0
        var longestWindow = 0
        for round in 0..<50 {
            var window = 2_000
            while true {
                let runner = ThreadRunner { try machine.vcpu.run() }
                while !machine.vcpu.isRunning { usleep(100) }
                usleep(useconds_t(window))
                machine.vcpu.requestExit()
                #expect(try runner.join() == .interrupted)
                machine.vcpu.clearExitRequest()
                let count = try machine.vcpu.registers().rax
                #expect(count >= lastCount, "the guest's counter never goes back")
                defer { lastCount = count }
                if count > lastCount { break }
                try #require(window < 16_000_000, "round \(round): the guest made no progress in windows up to 16 s")
                window *= 2
            }
            longestWindow = max(longestWindow, window)
        }
        print("50 interruptions, the guest progressed after each; longest window needed \(longestWindow / 1000) ms")
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
