import CKVM
import Foundation
import KVM
import MicroVM
import TestGuests
import Testing
@testable import Understudy

/// Console lines from the workload, collected from vCPU threads.
final class Lines: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    var sink: @Sendable ([UInt8]) -> Void { { [self] data in lock.withLock { bytes += data } } }
    var lines: [String] {
        let text = lock.withLock { String(decoding: bytes, as: UTF8.self) }
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        lines.removeLast()
        return lines
    }
}

func memoryDigest(_ machine: Machine) -> UInt32 { ckvm_crc32c(0, machine.memory.base, machine.memory.size) }

@Suite("Checkpoint engine", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 10), .serialized)
struct CheckpointEngineTests {
    /// After every checkpoint the replica's memory is byte-identical to the guest's
    /// memory at that checkpoint (CRC-32C of all RAM), for dirty rates from almost
    /// nothing to 10,000 pages per epoch, with the bitmap and with the ring: 2,000
    /// epochs at 1 ms at low dirty rates; fewer where debug builds encode each
    /// epoch for hundreds of ms (the benchmarks measure the release build), and
    /// a tenth (at least 12) in the KVM box, where everything is emulated.
    @Test(arguments: [
        (MachineConfiguration.DirtyTracking.bitmap, "pages=1 wss=64 every=100000", 2000, 16),
        (.ring(entries: 65536), "pages=1 wss=64 every=100000", 2000, 16),
        (.bitmap, "pages=64 wss=1000 every=100000", 200, 64),
        (.bitmap, "pages=500 wss=3000 every=100000", 60, 64),
        (.ring(entries: 65536), "pages=500 wss=3000 every=100000", 60, 64),
        (.bitmap, "pages=4000 wss=10000 every=100000", 12, 64),
    ])
    func replicaMatchesGuestAtEveryCheckpoint(tracking: MachineConfiguration.DirtyTracking, options: String,
                                              epochs nativeEpochs: Int, megabytes: Int) throws {
        let epochs = TestHost.rounds(nativeEpochs, minimum: 12)     // fewer where KVM is emulated (the box)
        let machine = try Machine(configuration: .init(memorySize: UInt64(megabytes) << 20, maxSlotSize: 32 << 20, commandLine: options,
                                                       dirtyTracking: tracking), console: { _ in })
        let engine = CheckpointEngine(machine: machine, configuration: .init(epoch: .milliseconds(1)))
        let replica = try ReplicaImage(memorySize: machine.memory.size)
        let staged = StagedCheckpoint()
        try machine.start()
        var dirtyCounts: [Int] = []
        for epoch in 0..<epochs {
            usleep(1000)
            try machine.pauseForCheckpoint()            // the engine loop's own sequence
            try engine.captureWhilePaused(into: staged)
            let digest = memoryDigest(machine)
            try machine.resumeAfterCheckpoint()
            try machine.completeCheckpoint()
            let checkpoint = engine.encode(staged)
            try replica.apply(checkpoint)
            #expect(replica.memoryDigest == digest, "epoch \(epoch): replica differs from the guest")
            #expect(replica.state == checkpoint.state)
            if epoch > 0 { dirtyCounts.append(checkpoint.pageCount) }
        }
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        print("\(tracking) \(options): \(epochs) epochs (\(nativeEpochs) on native KVM; \(TestHost.description)), dirty pages per epoch min \(dirtyCounts.min()!) max \(dirtyCounts.max()!)")
    }

    /// Guest RAM copied to the replica while two vCPUs write all over a
    /// 600-page working set (pages read torn included): the first checkpoint then carries
    /// only the pages dirtied since the copy began, not all of RAM, and after it
    /// the replica is byte-identical to the guest, as after every later one.
    /// A replica that holds an intact committed checkpoint takes no pre-copy.
    @Test(arguments: [MachineConfiguration.DirtyTracking.bitmap, .ring(entries: 4096)])
    func precopiedReplicaMatchesFromTheFirstCheckpoint(tracking: MachineConfiguration.DirtyTracking) throws {
        let machine = try Machine(configuration: .init(vcpuCount: 2, memorySize: 64 << 20, maxSlotSize: 32 << 20,
                                                       commandLine: "pages=16 wss=600 every=100000", dirtyTracking: tracking),
                                  console: { _ in })
        defer { machine.requestStop(); _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) }
        let engine = CheckpointEngine(machine: machine)
        let replica = try ReplicaImage(memorySize: machine.memory.size)
        let staged = StagedCheckpoint()
        try machine.start()
        var chunks = 0
        var zeroRuns = 0
        try engine.precopy { firstPage, chunk in
            switch chunk {
            case .pages(let pages): try replica.precopy(firstPage: firstPage, Array(pages)[...])
            case .zeroPages(let count): try replica.precopyZeroPages(firstPage: firstPage, count: count); zeroRuns += 1
            }
            chunks += 1
            if chunks % 16 == 0 { usleep(1000) }            // a link slower than memcpy: the guest writes meanwhile
        }
        #expect(replica.isPrecopied)
        #expect(zeroRuns > 0, "untouched RAM goes as runs of zero pages")
        for epoch in 0..<TestHost.rounds(20, minimum: 6) {
            usleep(1000)
            try machine.pauseForCheckpoint()
            try engine.captureWhilePaused(into: staged)
            let digest = memoryDigest(machine)
            try machine.resumeAfterCheckpoint()
            try machine.completeCheckpoint()
            let checkpoint = engine.encode(staged)
            if epoch == 0 {
                #expect(!checkpoint.isFull && checkpoint.pageCount > 0 && checkpoint.pageCount < replica.pageCount / 2,
                        "the first checkpoint carries \(checkpoint.pageCount) of \(replica.pageCount) pages")
            }
            try replica.apply(checkpoint)
            #expect(replica.memoryDigest == digest, "epoch \(epoch): replica differs from the guest")
        }
        #expect(throws: ReplicaImage.ApplyError.self) { try replica.precopy(firstPage: 0, [UInt8](repeating: 0, count: 4096)[...]) }
    }

    /// Starts `machine` and an engine loop on it whose checkpoints go into a
    /// fresh replica; what fails to apply is collected.
    static func loop(_ machine: Machine, epoch: Duration) throws -> (CheckpointEngine, ReplicaImage, Lines) {
        let engine = CheckpointEngine(machine: machine, configuration: .init(epoch: epoch))
        let replica = try ReplicaImage(memorySize: machine.memory.size)
        let errors = Lines()
        engine.sink = { checkpoint in
            do { try replica.apply(checkpoint) } catch { errors.sink(Array("\(error)\n".utf8)) }
        }
        try machine.start()
        try engine.start()
        return (engine, replica, errors)
    }

    /// The background loop at 1 ms: checkpoints arrive in order; after it stops, one
    /// more checkpoint taken while paused brings the replica to exactly the guest.
    @Test func backgroundLoopAtOneMillisecond() throws {
        let machine = try Machine(configuration: .init(memorySize: 32 << 20, commandLine: "pages=4 wss=200 every=100000",
                                                       dirtyTracking: .bitmap), console: { _ in })
        let (engine, replica, errors) = try Self.loop(machine, epoch: .milliseconds(1))
        // Wait for checkpoints, not for a time: a loaded CI machine runs fewer epochs per
        // second (the first one, the full image, alone can take a second in a debug build).
        let ran = eventually(timeout: 120) { engine.statistics.count >= 20 }
        try engine.stop()
        #expect(ran, "the loop produced 20 checkpoints")
        #expect(errors.lines.isEmpty, "\(errors.lines.prefix(3))")
        let stats = engine.statistics
        #expect(stats.count >= 20, "the loop ran")
        #expect(stats.map(\.sequence) == Array(0..<UInt64(stats.count)))
        // Every pause is timed step by step, and the steps account for the pause.
        for stat in stats {
            let steps = stat.breakdown
            #expect(steps.stop > .zero && steps.harvest > .zero && steps.copy > .zero && steps.state > .zero && steps.resume > .zero,
                    "checkpoint \(stat.sequence): \(steps)")
            #expect(steps.total <= stat.pause, "checkpoint \(stat.sequence)")
        }
        try machine.pause()
        let staged = StagedCheckpoint()
        try engine.captureWhilePaused(into: staged)
        try replica.apply(engine.encode(staged))
        #expect(replica.memoryDigest == memoryDigest(machine))
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        let pauses = stats.dropFirst().map { Double($0.pause.components.attoseconds) / 1e12 + Double($0.pause.components.seconds) * 1e6 }.sorted()
        print(String(format: "engine at 1 ms: %d epochs, pause p50 %.0f µs p99 %.0f µs, %d stretched, mean %.0f dirty pages, %.1fx compression",
                     stats.count, pauses[pauses.count / 2], pauses[pauses.count * 99 / 100], stats.filter(\.stretched).count,
                     Double(stats.dropFirst().map(\.dirtyPages).reduce(0, +)) / Double(stats.count - 1),
                     Double(stats.dropFirst().map(\.rawBytes).reduce(0, +)) / Double(max(1, stats.dropFirst().map(\.encodedBytes).reduce(0, +)))))
    }

    /// A switchover's end (`stopLeavingGuestPaused`): the loop ends with one
    /// more checkpoint and the guest stays paused, so the replica is exactly
    /// guest RAM and stays so (nothing runs any more); the workload's console
    /// does not move either. Resumed by hand (an abandoned switchover), the
    /// guest goes on.
    @Test func theLastCheckpointLeavesTheGuestPausedAndTheReplicaExact() throws {
        let lines = Lines()
        let machine = try Machine(configuration: .init(memorySize: 32 << 20, commandLine: "pages=16 wss=400 every=2000",
                                                       dirtyTracking: .bitmap), console: lines.sink)
        let (engine, replica, errors) = try Self.loop(machine, epoch: .milliseconds(2))
        #expect(eventually(timeout: 120) { engine.statistics.count >= 10 && lines.lines.count >= 3 }, "the loop ran")
        try engine.stopLeavingGuestPaused()
        #expect(errors.lines.isEmpty, "\(errors.lines.prefix(3))")
        #expect(machine.isPaused, "the guest stays paused after the last checkpoint")
        let digest = memoryDigest(machine)
        #expect(replica.memoryDigest == digest, "the replica is exactly the paused guest")
        #expect(replica.committedSequence == engine.statistics.last?.sequence, "the last checkpoint is the one committed")
        let printed = lines.lines.count
        try machine.resumeAfterCheckpoint()
        try machine.completeCheckpoint()
        #expect(eventually(timeout: 60) { lines.lines.count > printed }, "resumed, the guest goes on")
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
    }

    /// Resume from the replica at random checkpoints in a fresh VM: the workload's
    /// output continues exactly as the original's would have.
    @Test func resumeFromReplicaContinuesExactly() throws {
        var generator = SystemRandomNumberGenerator()
        let options = "pages=16 wss=1000 every=300"
        for round in 0..<4 {
            let console = Lines()
            let machine = try Machine(configuration: .init(vcpuCount: 1 + round % 2, memorySize: 32 << 20, commandLine: options,
                                                           dirtyTracking: .bitmap), console: console.sink)
            let engine = CheckpointEngine(machine: machine)
            let replica = try ReplicaImage(memorySize: machine.memory.size)
            let staged = StagedCheckpoint()
            try machine.start()
            let target = Int.random(in: 5...60, using: &generator)
            var linesAtTarget: [String] = []
            for epoch in 0...target {
                usleep(2000)
                try machine.pauseForCheckpoint()
                try engine.captureWhilePaused(into: staged)
                if epoch == target { linesAtTarget = console.lines }
                try machine.resumeAfterCheckpoint()
                try machine.completeCheckpoint()
                try replica.apply(engine.encode(staged))
            }
            machine.requestStop()
            _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))

            let memory = try SharedMemory(size: replica.memory.size)
            memory.bytes.copyBytes(from: UnsafeRawBufferPointer(replica.memory.bytes))
            let after = Lines()
            let restored = try Machine(restoring: replica.state, memory: memory, console: after.sink)
            try restored.start()
            _ = eventually { (0..<(1 + round % 2)).allSatisfy { cpu in after.lines.filter { $0.hasSuffix("cpu=\(cpu)") }.count >= 10 } }
            restored.requestStop()
            _ = restored.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
            for cpu in 0..<(1 + round % 2) {
                let all = (linesAtTarget + after.lines).filter { $0.hasSuffix("cpu=\(cpu)") }
                #expect(all.count >= 10)
                #expect(all == WorkloadReference.lines(cpu: cpu, pages: 16, wss: 1000, every: 300, count: all.count),
                        "round \(round), checkpoint \(target), vCPU \(cpu)")
            }
        }
    }
}
