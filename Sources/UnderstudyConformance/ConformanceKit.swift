import Foundation
import KVM
import Understudy

/// Proves a VMM's `ReplicatedMachine` to Understudy's engine: what MicroVM's
/// own suite runs against MicroVM (Docs/WritingAVMM.md, "Prove it").
///
/// 1. The machine runs under a `CheckpointEngine`, one checkpoint per
///    `interval`, taken in the engine's own sequence (pause, harvest, copy,
///    capture, resume, complete). Each is applied to a `ReplicaImage`, and
///    while the guest is still paused the replica's RAM is compared with
///    guest RAM page by page: any difference is a page the dirty set missed
///    (KVM's log, the VMM's own writes, a late re-arming not carried) or
///    copied torn, and is reported with its page numbers.
/// 2. The last checkpoint is taken with the guest left paused
///    (`stopLeavingGuestPaused`'s step), compared the same way, and the
///    machine stopped: the replica is now a takeover point.
/// 3. `restore` builds a second machine from that replica (its state and
///    memory, as a standby taking over does); its RAM must be the replica's
///    before it runs (this catches a VMM that copies RAM on restore; one that
///    maps the replica's memory, as it should, passes by construction); then
///    it runs and is checkpointed in turn, each checkpoint compared the same
///    way: the restored guest runs, and is itself replicable.
///
/// The guest should write memory all the time (the more pages, vCPUs and
/// device traffic the better): a guest that writes nothing proves nothing.
/// What the kit cannot see is the in-flight exit rule
/// (`VCPU.completeInFlightExit`): its break shows as a device operation done
/// twice or lost after a restore, which only the VMM's own device tests can
/// tell; Docs/WritingAVMM.md says how to test it.
public enum ConformanceKit {
    /// What a run checked.
    public struct Report: Sendable, CustomStringConvertible {
        /// Checkpoints compared, before and after the restore.
        public var checkpoints = 0
        public var restoredCheckpoints = 0
        /// Dirty pages per checkpoint after the first (min, max, total).
        public var fewestDirtyPages = Int.max
        public var mostDirtyPages = 0
        public var dirtyPages = 0

        public var description: String {
            "\(checkpoints) checkpoints and \(restoredCheckpoints) after a restore, each replica byte-identical to guest RAM; " +
                "dirty pages per checkpoint \(fewestDirtyPages == .max ? 0 : fewestDirtyPages)-\(mostDirtyPages) (\(dirtyPages) in all)"
        }
    }

    /// Runs the checks (see the type) with `checkpoints` checkpoints before
    /// the restore and `restoredCheckpoints` after it, one every `interval`.
    /// Throws the first `ConformanceFailure`.
    public static func check(_ subject: ConformanceSubject, restore: (ReplicaImage) throws -> ConformanceSubject,
                             checkpoints: Int = 200, restoredCheckpoints: Int = 50, interval: Duration = .milliseconds(2),
                             configuration: EngineConfiguration = EngineConfiguration()) throws(ConformanceFailure) -> Report {
        var report = Report()
        let replica: ReplicaImage
        do { replica = try ReplicaImage(memorySize: subject.machine.guestMemorySize) } catch {
            throw .machineFailed(phase: "setup", step: "a replica of \(subject.machine.guestMemorySize) bytes", error: "\(error)")
        }
        report.checkpoints = try run(subject, into: replica, checkpoints: checkpoints, interval: interval,
                                     configuration: configuration, phase: "original", report: &report)
        let restored: ConformanceSubject
        do { restored = try restore(replica) } catch {
            throw .machineFailed(phase: "restore", step: "building a machine from the replica", error: "\(error)")
        }
        let (differing, count) = differences(restored.machine.guestMemoryBase, replica.memory.base, bytes: replica.memory.size)
        guard count == 0 else { throw .restoredMemoryDiffers(pages: differing, count: count) }
        let second: ReplicaImage
        do { second = try ReplicaImage(memorySize: restored.machine.guestMemorySize) } catch {
            throw .machineFailed(phase: "restore", step: "a second replica", error: "\(error)")
        }
        report.restoredCheckpoints = try run(restored, into: second, checkpoints: restoredCheckpoints, interval: interval,
                                             configuration: configuration, phase: "restored", report: &report)
        return report
    }

    /// Starts `subject`, checkpoints it into `replica` comparing each, takes
    /// the last one with the guest left paused, stops it. Returns the count.
    private static func run(_ subject: ConformanceSubject, into replica: ReplicaImage, checkpoints: Int, interval: Duration,
                            configuration: EngineConfiguration, phase: String, report: inout Report) throws(ConformanceFailure) -> Int {
        let machine = subject.machine
        let engine = CheckpointEngine(machine: machine, configuration: configuration)
        let staged = StagedCheckpoint()
        @discardableResult
        func step<T>(_ name: String, _ body: () throws -> T) throws(ConformanceFailure) -> T {
            do { return try body() } catch { throw .machineFailed(phase: phase, step: name, error: "\(error)") }
        }
        try step("start") { try subject.start() }
        defer { subject.stop() }
        var taken = 0
        for index in 0...checkpoints {
            let last = index == checkpoints
            Thread.sleep(forTimeInterval: Double(interval.wholeNanoseconds) / 1e9)
            try step("pauseForCheckpoint") { try machine.pauseForCheckpoint() }
            try step("capture") { try engine.captureWhilePaused(into: staged) }
            // Compared while paused: guest RAM is the checkpoint's.
            let checkpoint = engine.encode(staged)
            do { try replica.apply(checkpoint) } catch {
                throw .applyFailed(phase: phase, sequence: checkpoint.sequence, error: "\(error)")
            }
            let (differing, count) = differences(replica.memory.base, machine.guestMemoryBase, bytes: replica.memory.size)
            guard count == 0 else { throw .replicaDiffers(phase: phase, sequence: checkpoint.sequence, pages: differing, count: count) }
            taken += 1
            if checkpoint.sequence > 0 {
                report.fewestDirtyPages = min(report.fewestDirtyPages, checkpoint.pageCount)
                report.mostDirtyPages = max(report.mostDirtyPages, checkpoint.pageCount)
                report.dirtyPages += checkpoint.pageCount
            }
            if last { break }           // the last one leaves the guest paused, as a switchover does
            try step("resumeAfterCheckpoint") { try machine.resumeAfterCheckpoint() }
            try step("completeCheckpoint") { try machine.completeCheckpoint() }
        }
        return taken
    }

    /// The first few pages (and how many in all) where two `bytes`-long areas differ.
    static func differences(_ a: UnsafeMutableRawPointer, _ b: UnsafeMutableRawPointer, bytes: Int) -> ([Int], Int) {
        var first: [Int] = []
        var count = 0
        for page in 0..<bytes / 4096 where memcmp(a + page * 4096, b + page * 4096, 4096) != 0 {
            if first.count < 8 { first.append(page) }
            count += 1
        }
        return (first, count)
    }
}
