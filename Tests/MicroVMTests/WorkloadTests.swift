import Foundation
import KVM
@testable import MicroVM
import TestGuests
import Testing

@Suite("Workload guest", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct WorkloadTests {
    @Test(arguments: [1, 2])
    func printsExactlyTheComputedSequence(vcpus: Int) throws {
        let console = ConsoleBuffer()
        let options = "pages=32 wss=512 every=200 count=40"
        let machine = try Machine(configuration: .init(vcpuCount: vcpus, memorySize: 64 << 20, commandLine: options),
                                  console: console.sink)
        try machine.start()
        let reason = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(60)))
        #expect(reason == .guestExit(code: 0))
        for cpu in 0..<vcpus {
            let expected = WorkloadReference.lines(cpu: cpu, pages: 32, wss: 512, every: 200, count: 40)
            #expect(console.lines(cpu: cpu) == expected, "vCPU \(cpu)")
        }
        #expect(console.lines.count == 40 * vcpus, "no other output")
        for (index, vcpu) in machine.vcpus.enumerated() {
            #expect(try vcpu.captureState().cpuid.entry(function: 1)!.ebx >> 24 == UInt32(index), "vCPU \(index)'s CPUID names its own APIC ID")
        }
    }

    @Test func embeddedImageParses() throws {
        let image = try GuestImage(elf: WorkloadImage.elf)
        #expect(image.entry == GuestLayout.imageBase)
        #expect(image == GuestImage.workload)
    }

    @Test func workingSetThatDoesNotFitIsReported() throws {
        let console = ConsoleBuffer()
        let machine = try Machine(configuration: .init(memorySize: 8 << 20, commandLine: "wss=100000"), console: console.sink)
        try machine.start()
        #expect(machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(30))) == .guestExit(code: 2))
        #expect(console.text.contains("does not fit"))
    }
}
