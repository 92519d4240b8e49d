import Foundation
import Glibc
import KVM
import TestGuests
import Testing
@testable import Understudy

/// The replica applies only whole, verified checkpoints in sequence; anything
/// else is refused and leaves the image exactly as it was. No KVM needed.
@Suite("Replica image")
struct ReplicaImageTests {
    static let pages = 64

    /// A memory image, a staged checkpoint over it, and an encoder.
    final class Source {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: ReplicaImageTests.pages * pageSize, alignment: 64)
        let staged = StagedCheckpoint()
        let encoder = CheckpointEncoder(level: .lz4, cacheCapacityPages: ReplicaImageTests.pages)
        var sequence: UInt64 = 0
        var generator = SplitMix(state: 9)

        init() { memory.initializeMemory(as: UInt8.self, repeating: 0, count: ReplicaImageTests.pages * pageSize) }
        deinit { memory.deallocate() }

        /// Scribbles on `dirty` pages and returns the encoded checkpoint of them (all pages the first time).
        func next(dirty: [Int], disk: [UInt8] = []) -> Checkpoint {
            let bitmap = DirtyBitmap(pageCount: ReplicaImageTests.pages)
            for page in dirty {
                for _ in 0..<4 {
                    memory.storeBytes(of: generator.next(), toByteOffset: page * pageSize + Int(generator.next() % 512) * 8, as: UInt64.self)
                }
                bitmap[page] = true
            }
            if sequence == 0 { for i in 0..<ReplicaImageTests.pages { bitmap[i] = true } }
            staged.fill(sequence: sequence, isFull: sequence == 0, dirty: bitmap, memory: memory, state: [1, 2, UInt8(sequence & 0xFF)], disk: disk)
            sequence += 1
            return encoder.encode(staged)
        }

        var digest: [UInt8] { Array(UnsafeRawBufferPointer(start: memory, count: ReplicaImageTests.pages * pageSize)) }
    }

    func image(_ replica: ReplicaImage) -> [UInt8] { Array(replica.memory.bytes) }

    @Test func appliesInOrderAndMatches() throws {
        let source = Source()
        let replica = try ReplicaImage(memorySize: Self.pages * pageSize)
        try replica.apply(source.next(dirty: [1, 2, 3]))
        for round in 0..<30 {
            try replica.apply(source.next(dirty: [round % Self.pages, (round * 7) % Self.pages]))
            #expect(image(replica) == source.digest)
        }
        #expect(replica.committedSequence == 30)
    }

    @Test func refusesWhatIsNotAWholeNextCheckpoint() throws {
        let source = Source()
        let replica = try ReplicaImage(memorySize: Self.pages * pageSize)
        let first = source.next(dirty: [])
        let second = source.next(dirty: [5])
        #expect(throws: ReplicaImage.ApplyError.firstMustBeFull) { try replica.apply(second) }
        try replica.apply(first)
        let committed = image(replica)

        var corrupt = second
        corrupt.pages[corrupt.pages.count / 2] ^= 0x40
        #expect(throws: ReplicaImage.ApplyError.digestMismatch) { try replica.apply(corrupt) }

        // Damage that keeps the digest right (a buggy or hostile sender): still refused.
        for damage in 0..<4 {
            var resealed = second
            switch damage {
            case 0: resealed.pages.removeLast(3)                                     // torn
            case 1: resealed.pages[0] = 0xFF; resealed.pages[1] = 0xFF               // page beyond RAM
            case 2: resealed.pages[4] = 99                                           // unknown encoding
            default: resealed.pageCount += 1                                          // record missing
            }
            resealed.digest = resealed.computedDigest
            #expect(throws: ReplicaImage.ApplyError.self) { try replica.apply(resealed) }
        }
        #expect(image(replica) == committed, "refused checkpoints leave the image untouched")
        #expect(replica.committedSequence == 0)

        try replica.apply(second)
        #expect(throws: ReplicaImage.ApplyError.outOfSequence(expected: 2, got: 1)) { try replica.apply(second) }   // duplicate
        let third = source.next(dirty: [6])
        let fourth = source.next(dirty: [7])
        #expect(throws: ReplicaImage.ApplyError.self) { try replica.apply(fourth) }                                // skipped one
        try replica.apply(third)
        try replica.apply(fourth)
        #expect(image(replica) == source.digest)
    }

    /// Pre-copied pages and zero runs land where they say and cover RAM;
    /// anything outside it, or not whole pages, is refused.
    @Test func precopiedRunsOutsideRAMAreRefused() throws {
        let replica = try ReplicaImage(memorySize: 1 << 20)
        replica.memory.base.initializeMemory(as: UInt8.self, repeating: 0xAA, count: 1 << 20)   // a torn replica's leftovers
        #expect(throws: ReplicaImage.ApplyError.self) { try replica.precopyZeroPages(firstPage: 200, count: 100) }
        #expect(throws: ReplicaImage.ApplyError.self) { try replica.precopyZeroPages(firstPage: 0, count: Int(UInt32.max)) }
        #expect(throws: ReplicaImage.ApplyError.self) { try replica.precopy(firstPage: 256, [UInt8](repeating: 1, count: 4096)[...]) }
        #expect(throws: ReplicaImage.ApplyError.self) { try replica.precopy(firstPage: 0, [UInt8](repeating: 1, count: 100)[...]) }
        try replica.precopy(firstPage: 0, [UInt8](repeating: 1, count: 255 * 4096)[...])
        #expect(!replica.isPrecopied)
        try replica.precopyZeroPages(firstPage: 255, count: 1)
        #expect(replica.isPrecopied)
        #expect(replica.memory.base.load(fromByteOffset: 255 * 4096 + 17, as: UInt8.self) == 0)
        #expect(replica.memory.base.load(fromByteOffset: 254 * 4096 + 17, as: UInt8.self) == 1)
    }

    @Test func referenceCacheEvictsAndStaysCorrect() throws {
        // A cache of 8 pages for 64: deltas where it knows the page, whole pages where it forgot.
        let encoder = CheckpointEncoder(level: .lz4, cacheCapacityPages: 8)
        let source = Source()
        let replica = try ReplicaImage(memorySize: Self.pages * pageSize)
        var generator = SplitMix(state: 5)
        for round in 0..<40 {
            let dirty = (0..<6).map { _ in Int(generator.next() % UInt64(Self.pages)) }
            let bitmap = DirtyBitmap(pageCount: Self.pages)
            for page in dirty {
                source.memory.storeBytes(of: generator.next(), toByteOffset: page * pageSize, as: UInt64.self)
                bitmap[page] = true
            }
            if round == 0 { for i in 0..<Self.pages { bitmap[i] = true } }
            source.staged.fill(sequence: UInt64(round), isFull: round == 0, dirty: bitmap, memory: source.memory, state: [])
            try replica.apply(encoder.encode(source.staged))
            #expect(image(replica) == source.digest, "round \(round)")
        }
        #expect(encoder.cache.memoryBytes == 8 * pageSize)
        #expect(encoder.encodingCounts[Int(PageEncoding.xorZeroRun.rawValue)] > 0)
    }

    /// The disk half of a commit fails part way (a real ENOSPC: the standby's
    /// image lives on a 64 KiB tmpfs): the writes already made are undone, the
    /// image is still checkpoint 0, memory too, and it can still be taken over
    /// from; the next checkpoint that fits applies.
    @Test(.enabled(if: getuid() == 0, "needs root to mount a small tmpfs"))
    func diskFailureInTheMiddleOfAnApplyIsUndone() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-enospc-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        guard mount("tmpfs", directory, "tmpfs", 0, "size=64k") == 0 else {
            Issue.record("mount tmpfs failed: errno \(errno)")
            return
        }
        defer { umount2(directory, Int32(MNT_DETACH)) }
        let path = directory + "/replica.img"
        let before = [UInt8](repeating: 0xA5, count: 16 << 10)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(before)))
        #expect(truncate(path, 1 << 20) == 0)

        let source = Source()
        let replica = try ReplicaImage(memorySize: Self.pages * pageSize)
        replica.disk = try ReplicaDisk(path: path)
        try replica.apply(source.next(dirty: []))
        let memoryAtZero = image(replica)

        var writes: [UInt8] = []
        [UInt8](repeating: 0x11, count: 4096).withUnsafeBytes { DiskRecord.appendWrite(offset: 0, $0, to: &writes) }
        [UInt8](repeating: 0x22, count: 128 << 10).withUnsafeBytes { DiskRecord.appendWrite(offset: 512 << 10, $0, to: &writes) }
        DiskRecord.appendFlush(to: &writes)
        let tooBig = source.next(dirty: [3, 4], disk: writes)
        #expect {
            try replica.apply(tooBig)
        } throws: { error in
            guard case ReplicaImage.ApplyError.diskFailed(let reason) = error else { return false }
            return reason.contains("errno \(ENOSPC)") && reason.contains("undone")
        }
        let disk = try ReplicaDisk(path: path)
        #expect(try disk.read(offset: 0, count: before.count) == before, "the first write was undone")
        #expect(try disk.read(offset: 512 << 10, count: 128 << 10).allSatisfy { $0 == 0 }, "the torn write was undone")
        #expect(image(replica) == memoryAtZero, "memory is still checkpoint 0")
        #expect(replica.committedSequence == 0)
        #expect(replica.isIntact)

        // With room again, the same checkpoint commits whole: nothing of it was half-applied.
        #expect(mount("tmpfs", directory, "tmpfs", UInt(MS_REMOUNT), "size=1m") == 0, "remount: errno \(errno)")
        try replica.apply(tooBig)
        #expect(replica.committedSequence == 1)
        #expect(image(replica) == source.digest)
        #expect(try disk.read(offset: 0, count: 4096) == [UInt8](repeating: 0x11, count: 4096))
        #expect(try disk.read(offset: 4096, count: 4096) == Array(before[4096..<8192]))
        #expect(try disk.read(offset: 512 << 10, count: 128 << 10) == [UInt8](repeating: 0x22, count: 128 << 10))
    }
}
