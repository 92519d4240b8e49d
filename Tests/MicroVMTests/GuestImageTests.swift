@testable import MicroVM
import Testing

@Suite("Guest images")
struct GuestImageTests {
    @Test func workloadELFHasOneLoadSegmentAtTheImageBase() throws {
        let image = try GuestImage(elf: WorkloadImage.elf)
        #expect(image.segments.count == 1)
        #expect(image.segments[0].address == GuestLayout.imageBase)
        #expect(image.segments[0].memorySize >= UInt64(image.segments[0].data.count))
    }

    @Test func nonELFAndDamagedHeadersAreRefused() {
        #expect(throws: GuestImageError.notELF) { try GuestImage(elf: []) }
        #expect(throws: GuestImageError.notELF) { try GuestImage(elf: [UInt8](repeating: 0, count: 100)) }
        var wrongMachine = WorkloadImage.elf
        wrongMachine[18] = 3
        #expect(throws: GuestImageError.self) { try GuestImage(elf: wrongMachine) }
        var headersPastEnd = WorkloadImage.elf
        headersPastEnd[32] = 0xFF; headersPastEnd[33] = 0xFF; headersPastEnd[34] = 0xFF
        #expect(throws: GuestImageError.self) { try GuestImage(elf: headersPastEnd) }
    }

    /// Random damage anywhere in a real ELF never crashes the parser, and whatever
    /// it accepts has segments that lie inside the file's bounds.
    @Test func randomDamageNeverCrashes() {
        var generator = SystemRandomNumberGenerator()
        let original = WorkloadImage.elf
        for _ in 0..<20_000 {
            var bytes = original
            for _ in 0..<Int.random(in: 1...6, using: &generator) {
                let index = Int.random(in: 0..<min(bytes.count, 256), using: &generator)
                bytes[index] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { bytes.removeLast(Int.random(in: 0..<bytes.count, using: &generator)) }
            if let image = try? GuestImage(elf: bytes) {
                #expect(image.segments.allSatisfy { UInt64($0.data.count) <= $0.memorySize })
            }
        }
    }

    @Test func memorySizesParse() {
        #expect(MemorySize.parse("256M") == 256 << 20)
        #expect(MemorySize.parse("1G") == 1 << 30)
        #expect(MemorySize.parse("64MiB") == 64 << 20)
        #expect(MemorySize.parse("4096") == 4096)
        #expect(MemorySize.parse("lots") == nil)
        #expect(MemorySize.parse("99999999999999G") == nil)
    }
}
