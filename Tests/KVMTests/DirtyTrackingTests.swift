import KVM
import TestGuests
import Testing

/// A guest writes a known set of pages; the harvest must report exactly those,
/// then, after clearing, exactly the next set.
@Suite("Dirty tracking", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct DirtyTrackingTests {
    static let memorySize = 128 << 20

    /// Pages (numbers within the data slot) for one round, chosen with a seeded generator.
    static func pageSet(count: Int, seed: UInt64) -> [Int] {
        var generator = SplitMix(seed: seed)
        let first = 0
        let last = (memorySize - Int(TestMachine.dataAddress)) / 4096 - 1
        var pages = Set<Int>()
        while pages.count < count { pages.insert(Int.random(in: first...last, using: &generator)) }
        return pages.sorted()
    }

    static func addresses(_ pages: [Int]) -> [UInt64] { pages.map { TestMachine.dataAddress + UInt64($0) * 4096 } }

    static let rounds: [(Int, UInt64)] = [(37, 1), (2000, 2), (1, 3), (0, 4), (5000, 5)]

    @Test func bitmapReportsExactlyTheWrittenPages() throws {
        let machine = try TestMachine(memorySize: Self.memorySize, tracking: .bitmap)
        try machine.start(GuestCode.pageWriter)
        let bitmap = DirtyBitmap(pageCount: machine.slot.pageCount)
        for (count, seed) in Self.rounds {
            let expected = Self.pageSet(count: count, seed: seed)
            try machine.setPageList(Self.addresses(expected))
            _ = try machine.runToMMIO()
            try machine.vm.dirtyLog(slot: 1, into: bitmap)
            #expect(bitmap.pages == expected, "round of \(count) pages")
            try machine.vm.clearDirtyLog(slot: 1, bitmap: bitmap)
        }
        // After the last clear, a harvest with no guest writes is empty.
        try machine.vm.dirtyLog(slot: 1, into: bitmap)
        #expect(bitmap.count == 0)
    }

    @Test func bitmapRepeatedPageIsReportedAgainAfterClear() throws {
        let machine = try TestMachine(memorySize: Self.memorySize, tracking: .bitmap)
        try machine.start(GuestCode.pageWriter)
        let bitmap = DirtyBitmap(pageCount: machine.slot.pageCount)
        let page = 7
        for _ in 0..<3 {
            try machine.setPageList(Self.addresses([page]))
            _ = try machine.runToMMIO()
            try machine.vm.dirtyLog(slot: 1, into: bitmap)
            #expect(bitmap.pages == [page])
            try machine.vm.clearDirtyLog(slot: 1, bitmap: bitmap)
        }
    }

    @Test func ringReportsExactlyTheWrittenPages() throws {
        let machine = try TestMachine(memorySize: Self.memorySize, tracking: .ring(entries: 16384))
        try machine.start(GuestCode.pageWriter)
        #expect(machine.vcpu.dirtyRingEntries == 16384)
        for (count, seed) in Self.rounds {
            let expected = Self.pageSet(count: count, seed: seed)
            try machine.setPageList(Self.addresses(expected))
            _ = try machine.runToMMIO()
            var seen: [Int] = []
            try machine.vcpu.harvestDirtyRing { slot, offset in
                #expect(slot == 1)
                seen.append(Int(offset))
            }
            #expect(seen.sorted() == expected, "round of \(count) pages")
            #expect(Set(seen).count == seen.count, "each page once per round")
            try machine.vm.resetDirtyRings()
        }
    }

    /// A ring smaller than the dirty set fills: the vCPU exits with `.dirtyRingFull`,
    /// the host harvests and resets, and the guest continues; together the harvests
    /// hold exactly the written pages.
    @Test func ringFullExitThenContinue() throws {
        let machine = try TestMachine(memorySize: Self.memorySize, tracking: .ring(entries: 1024))
        try machine.start(GuestCode.pageWriter)
        let expected = Self.pageSet(count: 3000, seed: 9)
        try machine.setPageList(Self.addresses(expected))
        var seen = Set<Int>()
        var fullExits = 0
        loop: while true {
            let exit = try machine.vcpu.run()
            try machine.vcpu.harvestDirtyRing { _, offset in seen.insert(Int(offset)) }
            try machine.vm.resetDirtyRings()
            switch exit {
            case .dirtyRingFull: fullExits += 1
            case .mmio: break loop
            default: Issue.record("unexpected exit \(exit)"); return
            }
        }
        #expect(fullExits >= 2)
        #expect(seen.sorted() == expected)
    }

    @Test func ringMustBeEnabledBeforeVCPUs() throws {
        let vm = try KVM().createVM()
        _ = try vm.createVCPU(id: 0)
        #expect(throws: KVMError.self) { try vm.enableDirtyRing(entries: 4096) }
    }
}

