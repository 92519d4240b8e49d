import Foundation
import KVM
@testable import MicroVM
import TestGuests
import Testing

@Suite("Corrupt saved state", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct CorruptStateTests {
    static func savedMachine() throws -> (state: [UInt8], memory: [UInt8]) {
        let machine = try Machine(configuration: .init(vcpuCount: 2, memorySize: 16 << 20, commandLine: "every=500"),
                                  console: { _ in })
        try machine.start()
        usleep(5000)
        try machine.pause()
        let state = try machine.saveState()
        let memory = Array(machine.memory.bytes)
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        return (state, memory)
    }

    /// Sections of the machine state by tag, as (tag, payload range).
    static func sections(_ bytes: [UInt8]) -> [(UInt16, Range<Int>)] {
        var result: [(UInt16, Range<Int>)] = []
        var offset = 8
        while offset + 10 <= bytes.count {
            let tag = UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
            let length = (2..<6).reduce(0) { $0 | Int(bytes[offset + $1]) << (8 * ($1 - 2)) }
            result.append((tag, (offset + 10)..<(offset + 10 + length)))
            offset += 10 + length
        }
        return result
    }

    func restore(_ state: [UInt8], _ memory: [UInt8]) throws {
        let copy = try SharedMemory(size: memory.count)
        copy.bytes.copyBytes(from: memory)
        _ = try Machine(restoring: state, memory: copy, console: { _ in })
    }

    /// Damage in each part (machine header, VM state, each vCPU, serial, doorbell) is
    /// refused with an error naming that part.
    @Test func eachDamagedPartIsNamed() throws {
        let (state, memory) = try Self.savedMachine()
        try restore(state, memory)                           // the undamaged state restores
        let expectedNames: [UInt16: String] = [1: "machine header", 2: "VM state", 3: "serial", 4: "doorbell",
                                               0x100: "vCPU 0 state", 0x101: "vCPU 1 state"]
        let sections = Self.sections(state)
        #expect(Set(sections.map(\.0)) == Set(expectedNames.keys))
        for (tag, payload) in sections {
            var damaged = state
            damaged[payload.lowerBound + payload.count / 3] ^= 0x10
            #expect {
                try restore(damaged, memory)
            } throws: { error in
                guard case let MachineError.invalidState(part, _) = error else { return false }
                return part.contains(expectedNames[tag]!)
            }
        }
    }

    @Test func truncationsAndMismatchesAreRefused() throws {
        let (state, memory) = try Self.savedMachine()
        for length in [0, 4, 8, 20, state.count / 2, state.count - 1] {
            #expect(throws: MachineError.self) { try restore(Array(state[0..<length]), memory) }
        }
        // Memory of the wrong size.
        #expect {
            try restore(state, Array(memory[0..<(8 << 20)]))
        } throws: { error in
            guard case let MachineError.invalidState(part, _) = error else { return false }
            return part == "machine header"
        }
    }

    /// Inner damage that keeps the outer checksum right (re-sealed section) is still
    /// caught by the vCPU state's own checks and named.
    @Test func resealedInnerDamageIsNamed() throws {
        let (state, memory) = try Self.savedMachine()
        let vcpu0 = try #require(Self.sections(state).first { $0.0 == 0x100 })
        var inner = Array(state[vcpu0.1])
        inner[4] = 77                                     // vCPU state format version
        var writer = StateWriter(magic: Array("UMVM".utf8), version: 1)
        for (tag, payload) in Self.sections(state) {
            writer.section(tag, payload: tag == 0x100 ? inner : Array(state[payload]))
        }
        #expect {
            try restore(writer.bytes, memory)
        } throws: { error in
            guard case let MachineError.invalidState(part, reason) = error else { return false }
            return part.hasPrefix("vCPU 0 state") && reason.contains("version 77")
        }
    }
}
