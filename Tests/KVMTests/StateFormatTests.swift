import KVM
import TestGuests
import Testing

/// Saved state is untrusted input: damaged bytes are refused with an error that
/// names the part, never a crash.
@Suite("State format", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct StateFormatTests {
    static func capturedState() throws -> (vcpu: [UInt8], vm: [UInt8]) {
        let machine = try TestMachine(irqchip: true)
        try machine.start(GuestCode.compute, rdi: 10, rsi: TestMachine.dataAddress, rdx: 15)
        _ = try machine.runToMMIO()
        return (try machine.vcpu.captureState().encoded(), try machine.vm.captureState().encoded())
    }

    /// Offsets of each section's payload in `bytes`, by section tag.
    static func sectionOffsets(_ bytes: [UInt8]) -> [(tag: UInt16, payload: Range<Int>)] {
        var result: [(UInt16, Range<Int>)] = []
        var offset = 8
        while offset + 10 <= bytes.count {
            let tag = UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
            let length = Int(bytes[offset + 2]) | Int(bytes[offset + 3]) << 8 | Int(bytes[offset + 4]) << 16 | Int(bytes[offset + 5]) << 24
            result.append((tag, (offset + 10)..<(offset + 10 + length)))
            offset += 10 + length
        }
        return result
    }

    static let vcpuPartNames: [UInt16: String] = [
        1: "vCPU regs", 2: "vCPU sregs", 3: "vCPU xsave", 4: "vCPU xcrs", 5: "vCPU lapic", 6: "vCPU msrs",
        7: "vCPU vcpu events", 8: "vCPU mp state", 9: "vCPU debug registers", 10: "vCPU cpuid",
    ]

    @Test func eachCorruptedVCPUSectionIsNamed() throws {
        let bytes = try Self.capturedState().vcpu
        let sections = Self.sectionOffsets(bytes)
        #expect(sections.count == 10)
        for (tag, payload) in sections {
            var damaged = bytes
            damaged[payload.lowerBound + payload.count / 2] ^= 0x5A
            #expect {
                try VCPUState(decoding: damaged)
            } throws: { error in
                guard case let KVMError.invalidState(part, _) = error else { return false }
                return part == Self.vcpuPartNames[tag]
            }
        }
    }

    @Test func eachCorruptedVMSectionIsNamed() throws {
        let bytes = try Self.capturedState().vm
        let names: [UInt16: String] = [1: "VM clock", 2: "VM PIC master", 3: "VM PIC slave", 4: "VM IOAPIC", 5: "VM PIT"]
        let sections = Self.sectionOffsets(bytes)
        #expect(sections.count == 5)
        for (tag, payload) in sections {
            var damaged = bytes
            damaged[payload.lowerBound] ^= 1
            #expect {
                try VMState(decoding: damaged)
            } throws: { error in
                guard case let KVMError.invalidState(part, _) = error else { return false }
                return part == names[tag]
            }
        }
    }

    @Test func everyTruncationIsRefused() throws {
        let bytes = try Self.capturedState().vcpu
        for length in stride(from: 0, to: bytes.count, by: 7) {
            #expect(throws: KVMError.self) { try VCPUState(decoding: Array(bytes[0..<length])) }
        }
        #expect(throws: KVMError.self) { try VCPUState(decoding: bytes + [0]) }
        #expect(throws: KVMError.self) { try VMState(decoding: bytes) }       // wrong magic
    }

    @Test func wrongVersionIsRefused() throws {
        var bytes = try Self.capturedState().vcpu
        bytes[4] = 99
        #expect {
            try VCPUState(decoding: bytes)
        } throws: { error in
            guard case let KVMError.invalidState(part, reason) = error else { return false }
            return part == "vCPU state header" && reason.contains("version 99")
        }
    }

    /// Random damage (flipped bytes, cut tails, spliced lengths) never crashes the decoder.
    @Test func randomDamageNeverCrashes() throws {
        let original = try Self.capturedState().vcpu
        var generator = SplitMix(seed: 42)
        var accepted = 0
        for _ in 0..<5000 {
            var bytes = original
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                let index = Int.random(in: 0..<bytes.count, using: &generator)
                bytes[index] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { bytes.removeLast(Int.random(in: 0..<bytes.count, using: &generator)) }
            if (try? VCPUState(decoding: bytes)) != nil { accepted += 1 }
        }
        // A byte change lands in a checksummed payload or a checked header field;
        // only changes that restore the same byte can be accepted.
        #expect(accepted < 50)
    }
}
