import CKVM
import Foundation
import KVM
import Logging
import MicroVM
import Synchronization
import TestGuests
import Testing
@testable import Understudy

/// CRC-32C of a whole file (tests compare disk images with it).
func fileDigest(_ path: String) throws -> UInt32 {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    return data.withUnsafeBytes { ckvm_crc32c(0, $0.baseAddress, $0.count) }
}

/// Block writes replicated with their checkpoint (DESIGN.md invariant 4), with
/// the journal guest appending and flushing records on a real virtio-blk disk.
@Suite("Disk replication", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5), .serialized)
struct DiskReplicationTests {
    /// A journal machine on `image`, its writes recorded in a `DiskWriteLog`.
    static func journal(image: String, options: String = "flush_every=4", epochBudget: Int? = nil) throws -> (Machine, DiskWriteLog) {
        var configuration = MachineConfiguration(name: "journal", memorySize: 32 << 20, image: try GuestPrograms.image("journal"),
                                                 commandLine: options, dirtyTracking: .bitmap)
        configuration.disk = DiskConfiguration(path: image)
        let machine = try Machine(configuration: configuration, console: { _ in })
        let block = try #require(machine.block)
        let log = epochBudget.map { DiskWriteLog(fd: block.fd, size: block.sectors * 512, epochBudget: $0) }
            ?? DiskWriteLog(fd: block.fd, size: block.sectors * 512)
        block.writeHook = { offset, bytes in log.write(offset: offset, bytes) }
        block.flushHook = { log.flush() }
        return (machine, log)
    }

    /// An engine recording `log` into its checkpoints, and a replica with an
    /// emptied disk on `standbyImage`.
    static func replication(of machine: Machine, log: DiskWriteLog,
                            standbyImage: String) throws -> (ReplicaImage, ReplicaDisk, CheckpointEngine) {
        let replica = try ReplicaImage(memorySize: machine.memory.size)
        let disk = try ReplicaDisk(path: standbyImage)
        try disk.reset()
        replica.disk = disk
        let engine = CheckpointEngine(machine: machine)
        engine.diskLog = log
        return (replica, disk, engine)
    }

    /// After every committed checkpoint the standby's image is byte-identical to
    /// the primary's at that checkpoint; a checkpoint torn in transit applies
    /// none of its writes (the standby's image stays at the previous one).
    @Test func writesApplyIfAndOnlyIfTheirCheckpointCommits() throws {
        let primaryImage = JournalImage.makeImage(megabytes: 16)
        let standbyImage = JournalImage.makeImage(megabytes: 16)
        defer { try? FileManager.default.removeItem(atPath: primaryImage); try? FileManager.default.removeItem(atPath: standbyImage) }
        let (machine, log) = try Self.journal(image: primaryImage)
        defer { machine.requestStop(); _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) }
        let (replica, disk, engine) = try Self.replication(of: machine, log: log, standbyImage: standbyImage)
        let staged = StagedCheckpoint()
        try machine.start()
        log.beginSync()
        try DiskSync.copy(log: log, send: { offset, bytes in try disk.write(offset: offset, bytes[...]) })
        var committedDigest: UInt32 = 0
        var epochsWithWrites = 0
        for epoch in 0..<25 {
            usleep(3000)
            try machine.pause()
            try engine.captureWhilePaused(into: staged)
            let primaryDigest = try fileDigest(primaryImage)
            try machine.resume()
            let checkpoint = engine.encode(staged)
            if !checkpoint.disk.isEmpty { epochsWithWrites += 1 }
            if epoch < 24 {
                try replica.apply(checkpoint)
                committedDigest = primaryDigest
                #expect(try fileDigest(standbyImage) == primaryDigest, "epoch \(epoch): the standby's disk differs from the primary's")
            } else {
                // Torn in transit: a chunk goes missing; the assembler refuses, nothing is applied.
                #expect(!checkpoint.disk.isEmpty, "the last epoch wrote to the disk")
                var frames = CheckpointFrames.frames(for: checkpoint, chunkSize: 256)
                frames.remove(at: frames.count - 3)
                var assembler = CheckpointAssembler(guestPages: replica.pageCount)
                #expect(throws: WireError.self) { for frame in frames { _ = try assembler.take(frame) } }
                // And if it arrived whole but damaged, the replica refuses it.
                var damaged = checkpoint
                damaged.disk[damaged.disk.count / 2] ^= 0xFF
                #expect(throws: ReplicaImage.ApplyError.digestMismatch) { try replica.apply(damaged) }
                #expect(try fileDigest(standbyImage) == committedDigest, "no write of the torn epoch reached the standby")
                #expect(primaryDigest != committedDigest)
            }
        }
        #expect(epochsWithWrites > 10)
        #expect(try JournalImage.recordCount(path: standbyImage) > 20)
    }

    /// A guest writing its disk as fast as it can while the link is slower than
    /// it (here each checkpoint takes the sink 100 ms): an epoch that reaches
    /// the disk budget ends early, and while the link is behind the guest waits,
    /// paused, instead of writing on into a checkpoint that would grow towards
    /// what a standby accepts. No checkpoint carries much more than the budget,
    /// every one applies, and the guest still makes progress.
    @Test func aFastWriterOnASlowLinkIsThrottled() throws {
        let budget = 32 << 10
        let primaryImage = JournalImage.makeImage(megabytes: 64)
        let standbyImage = JournalImage.makeImage(megabytes: 64)
        defer { try? FileManager.default.removeItem(atPath: primaryImage); try? FileManager.default.removeItem(atPath: standbyImage) }
        let (machine, log) = try Self.journal(image: primaryImage, options: "flush_every=64", epochBudget: budget)
        defer { machine.requestStop(); _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) }
        let (replica, disk, engine) = try Self.replication(of: machine, log: log, standbyImage: standbyImage)
        try machine.start()
        log.beginSync()
        try DiskSync.copy(log: log, send: { offset, bytes in try disk.write(offset: offset, bytes[...]) })
        let largest = Mutex<Int>(0), applied = Mutex<Int>(0), failure = Mutex<String?>(nil)
        engine.sink = { checkpoint in
            largest.withLock { $0 = max($0, checkpoint.disk.count) }
            do { try replica.apply(checkpoint) } catch { failure.withLock { $0 = "\(error)" } }
            usleep(100_000)                                     // the slow link
            applied.withLock { $0 += 1 }
        }
        try engine.start()
        #expect(eventually(timeout: 300) { applied.withLock { $0 } >= 30 })
        try engine.stop()
        #expect(failure.withLock { $0 } == nil)
        #expect(engine.throttledEpochs > 0, "the guest was held back while the link was behind")
        // The budget, plus what one request in flight and the record headers add.
        #expect(largest.withLock { $0 } <= budget + (64 << 10), "largest checkpoint: \(largest.withLock { $0 }) bytes of disk writes")
        #expect(try JournalImage.recordCount(path: standbyImage) > 100, "the guest went on writing")
    }

    /// The initial copy to a new standby over a link slower than the guest
    /// writes: the rounds never converge, so the rest is sent with the guest
    /// held (once), instead of all landing in the first checkpoint; and at that
    /// checkpoint the standby's image is byte-identical to the primary's. (The
    /// copy used to drop what its last round had taken: the images differed.)
    @Test func aFastWriterDuringTheInitialCopyIsHeld() throws {
        let primaryImage = JournalImage.makeImage(megabytes: 64)
        let standbyImage = JournalImage.makeImage(megabytes: 64)
        defer { try? FileManager.default.removeItem(atPath: primaryImage); try? FileManager.default.removeItem(atPath: standbyImage) }
        let (machine, log) = try Self.journal(image: primaryImage, options: "flush_every=64", epochBudget: 32 << 10)
        defer { machine.requestStop(); _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) }
        let (replica, disk, engine) = try Self.replication(of: machine, log: log, standbyImage: standbyImage)
        try machine.start()
        log.beginSync()
        // The journal first scans its disk; copy once it writes.
        #expect(eventually(timeout: 120) { log.trackedExtents().reduce(0) { $0 + $1.1 } > 256 << 10 })
        var held = 0
        try DiskSync.copy(log: log, send: { offset, bytes in
            try disk.write(offset: offset, bytes[...])
            usleep(UInt32(50_000 * TestHost.slowdown))          // the slow link (as slow for the guest in the box)
        }, pauseGuest: {
            held += 1
            try machine.pauseForCheckpoint()
            return { try machine.resumeAfterCheckpoint(); try machine.completeCheckpoint() }
        })
        #expect(held == 1, "the guest was held for the last round")
        try machine.pause()
        let staged = StagedCheckpoint()
        try engine.captureWhilePaused(into: staged)
        let primaryDigest = try fileDigest(primaryImage)
        try machine.resume()
        try replica.apply(engine.encode(staged))
        #expect(try fileDigest(standbyImage) == primaryDigest, "the standby's disk is the primary's at the first checkpoint")
    }

    /// A new standby receives a 1 GiB sparse image while the guest writes to it:
    /// at the first committed checkpoint (compared with the guest paused) the
    /// two images are byte-identical, and only the allocated parts were copied.
    @Test func initialSyncOfABusyGigabyteImage() throws {
        let primaryImage = JournalImage.makeImage(megabytes: 1024)
        let standbyImage = JournalImage.makeImage(megabytes: 1024)
        defer { try? FileManager.default.removeItem(atPath: primaryImage); try? FileManager.default.removeItem(atPath: standbyImage) }
        // Allocated data scattered over the image (the journal writes from sector 0).
        let fd = open(primaryImage, O_RDWR)
        var generator = SplitMix(state: 5)
        for megabyte in stride(from: 16, to: 1024, by: 61) {
            let chunk = (0..<(1 << 20)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            _ = chunk.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(megabyte << 20)) }
        }
        close(fd)
        // The standby's image starts with stale data that must not survive.
        let stale = open(standbyImage, O_RDWR)
        _ = [UInt8](repeating: 0xEE, count: 1 << 20).withUnsafeBytes { pwrite(stale, $0.baseAddress, $0.count, 300 << 20) }
        close(stale)

        let (machine, log) = try Self.journal(image: primaryImage, options: "flush_every=2")
        defer { machine.requestStop(); _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) }
        let (replica, disk, engine) = try Self.replication(of: machine, log: log, standbyImage: standbyImage)
        try machine.start()
        usleep(100_000)
        log.beginSync()
        let allocated = DiskSync.allocatedExtents(fd: log.fd, size: log.size).reduce(0) { $0 + $1.1 }
        let copied = try DiskSync.copy(log: log, send: { offset, bytes in try disk.write(offset: offset, bytes[...]) })
        #expect(allocated < 64 << 20, "the image is sparse: \(allocated) bytes allocated")
        #expect(copied >= allocated && copied < allocated + (32 << 20), "only allocated parts (and rewritten extents) were copied")
        #expect(log.trackedExtents().count > 0, "the guest wrote during the copy")

        let staged = StagedCheckpoint()
        try machine.pause()
        try engine.captureWhilePaused(into: staged)
        let primaryDigest = try fileDigest(primaryImage)
        let checkpoint = engine.encode(staged)
        try replica.apply(checkpoint)
        #expect(try fileDigest(standbyImage) == primaryDigest, "byte-identical at the first committed checkpoint")
        try machine.resume()
        print("initial sync: \(allocated >> 20) MiB allocated of 1024, \(copied >> 10) KiB copied while the guest wrote, \(checkpoint.disk.count >> 10) KiB resent in checkpoint 0")
    }

    @Test func diskRecordsRoundTripAndRejectDamage() throws {
        var bytes: [UInt8] = []
        [UInt8](repeating: 7, count: 512).withUnsafeBytes { DiskRecord.appendWrite(offset: 4096, $0, to: &bytes) }
        DiskRecord.appendFlush(to: &bytes)
        #expect(try DiskRecord.decode(bytes, diskSize: 8192) == [.write(offset: 4096, bytes: bytes[13..<525]), .flush])
        #expect(throws: DiskError.self) { try DiskRecord.decode(bytes, diskSize: 4096 + 511) }
        for cut in 1..<bytes.count where cut != 525 {
            #expect(throws: DiskError.self) { try DiskRecord.decode(Array(bytes.prefix(cut)), diskSize: 8192) }
        }
        var badKind = bytes
        badKind[0] = 9
        #expect(throws: DiskError.self) { try DiskRecord.decode(badKind, diskSize: 8192) }
        // Random damage never crashes.
        var generator = SplitMix(state: 17)
        for _ in 0..<20_000 {
            var damaged = bytes
            damaged[Int(generator.next() % UInt64(damaged.count))] = UInt8(truncatingIfNeeded: generator.next())
            _ = try? DiskRecord.decode(damaged, diskSize: 8192)
        }
        #expect(DiskWriteLog.merged([(0, 10), (5, 10), (20, 5), (15, 5)]).map { [$0.0, UInt64($0.1)] } == [[0, 25]])
        #expect(DiskWriteLog.merged([(100, 1), (0, 10)]).map { [$0.0, UInt64($0.1)] } == [[0, 10], [100, 1]])
    }
}
