import Foundation
import KVM
@testable import MicroVM
import TestGuests
import Testing

/// Whether any descriptor or mapping of this process refers to the memfd called `name`.
func memfdInUse(_ name: String) -> Bool {
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    let linked = fds.contains { fd in
        ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")) ?? "").contains("memfd:\(name) ")
    }
    let maps = (try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8)) ?? ""
    return linked || maps.contains("memfd:\(name) ")
}

@Suite("Guests that misbehave", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5), .serialized)
struct FaultTests {
    /// Each runs as a raw image at 0x100000 and must end the machine with the given reason.
    static let cases: [(String, [UInt8], @Sendable (StopReason?) -> Bool)] = [
        ("ud2 with no IDT", [0x0F, 0x0B], { if case .shutdown(vcpu: 0) = $0 { true } else { false } }),
        ("write outside RAM and devices", [
            0x48, 0xB8, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,   // movabs rax, 0x80000000
            0xC7, 0x00, 0x2A, 0x00, 0x00, 0x00,                           // mov dword [rax], 42
        ], { $0 == .badAccess(vcpu: 0, address: 0x8000_0000, isWrite: true) }),
        ("read from an unmapped virtual address", [
            0x48, 0xB8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00,   // movabs rax, 1 << 47 (no PML4 entry)
            0x48, 0x8B, 0x00,                                             // mov rax, [rax]
        ], { if case .shutdown(vcpu: 0) = $0 { true } else { false } }),
        ("garbage bytes", [UInt8](repeating: 0xFF, count: 64), { reason in
            switch reason { case .shutdown, .internalError, .unexpectedExit: true; default: false }
        }),
        ("port I/O at CPL3", [0xE6, 0x80], { if case .shutdown(vcpu: 0) = $0 { true } else if case .unexpectedExit = $0 { true } else { false } }),
        ("PUTS of an address outside RAM", [
            0x48, 0xB8, 0x18, 0x10, 0x00, 0xD0, 0x00, 0x00, 0x00, 0x00,   // movabs rax, doorbell PUTS
            0x48, 0xB9, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,   // movabs rcx, 0x1000000000
            0x48, 0x89, 0x08,                                             // mov [rax], rcx
        ], { $0 == .badAccess(vcpu: 0, address: 0x10_0000_0000, isWrite: false) }),
    ]

    @Test func eachFaultEndsTheMachineWithAReason() throws {
        for (index, (name, code, check)) in Self.cases.enumerated() {
            let memfdName = "fault-test-\(index)"
            let configuration = MachineConfiguration(name: memfdName, memorySize: 8 << 20,
                                                     image: GuestImage(raw: code, loadAddress: GuestLayout.imageBase))
            weak var released: Machine?
            do {
                let machine = try Machine(configuration: configuration, console: { _ in })
                released = machine
                try machine.start()
                #expect(memfdInUse("\(memfdName)-ram"))
                let reason = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(30)))
                #expect(check(reason), "\(name): stopped with \(String(describing: reason))")
            }
            // The machine, and with it the KVM, VM and vCPU descriptors, the kvm_run
            // mappings and guest RAM, is gone: nothing holds it after the guest failed.
            #expect(released == nil, "\(name): machine still alive")
            #expect(!memfdInUse("\(memfdName)-ram"), "\(name): guest RAM still open or mapped")
        }
    }

    @Test func imagesOutsideRAMAreRefused() {
        let high = MachineConfiguration(memorySize: 8 << 20, image: GuestImage(raw: [0x90], loadAddress: 16 << 20))
        #expect(throws: MachineError.self) { try Machine(configuration: high, console: { _ in }) }
        let low = MachineConfiguration(memorySize: 8 << 20, image: GuestImage(raw: [0x90], loadAddress: 0x1000))
        #expect(throws: MachineError.self) { try Machine(configuration: low, console: { _ in }) }
        let entry = MachineConfiguration(memorySize: 8 << 20,
                                         image: GuestImage(raw: [0x90], loadAddress: GuestLayout.imageBase, entry: 0x200000))
        #expect(throws: MachineError.self) { try Machine(configuration: entry, console: { _ in }) }
        #expect(throws: MachineError.self) { try Machine(configuration: .init(vcpuCount: 9), console: { _ in }) }
        #expect(throws: MachineError.self) { try Machine(configuration: .init(memorySize: 5 << 20), console: { _ in }) }
    }
}
