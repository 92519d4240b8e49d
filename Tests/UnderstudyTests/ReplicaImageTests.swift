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
        func next(dirty: [Int]) -> Checkpoint {
            let bitmap = DirtyBitmap(pageCount: ReplicaImageTests.pages)
            for page in dirty {
                for _ in 0..<4 {
                    memory.storeBytes(of: generator.next(), toByteOffset: page * pageSize + Int(generator.next() % 512) * 8, as: UInt64.self)
                }
                bitmap[page] = true
            }
            if sequence == 0 { for i in 0..<ReplicaImageTests.pages { bitmap[i] = true } }
            staged.fill(sequence: sequence, isFull: sequence == 0, dirty: bitmap, memory: memory, state: [1, 2, UInt8(sequence & 0xFF)])
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
}
