import Foundation
import KVM
import Synchronization

/// How the engine checkpoints.
public struct EngineConfiguration: Sendable, Equatable {
    /// Time between checkpoints. Default 5 ms: held output waits at most one
    /// epoch plus the acknowledgement, and on our machines a light writer runs
    /// ~15 % slower at 5 ms against ~40 % at 1 ms and ~9 % at 10 ms (the pause is
    /// ~100-130 µs; re-entering the guest costs it more; Docs/Performance.md).
    /// 1 ms works (down to 0.5 ms) where latency matters more than throughput.
    public var epoch: Duration
    public var level: CodecLevel
    /// Pages the reference cache (for XOR deltas) may hold; nil: all of guest RAM.
    /// Its memory cost is this × 4 KiB on the primary.
    public var referenceCachePages: Int?

    public init(epoch: Duration = .milliseconds(5), level: CodecLevel = .lz4, referenceCachePages: Int? = nil) {
        self.epoch = epoch
        self.level = level
        self.referenceCachePages = referenceCachePages
    }

    /// The shortest epoch the engine accepts.
    public static let minimumEpoch: Duration = .microseconds(500)

    /// Refuses epochs below 0.5 ms and an empty reference cache.
    public func validate() throws(EngineError) {
        guard epoch >= Self.minimumEpoch else { throw .invalidConfiguration("epoch \(epoch) is below \(Self.minimumEpoch)") }
        if let pages = referenceCachePages, pages < 1 {
            throw .invalidConfiguration("reference cache of \(pages) pages")
        }
    }
}

/// Errors of the checkpoint engine's own making (machine errors pass through as they are).
public enum EngineError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidConfiguration(String)
    case alreadyRunning

    public var description: String {
        switch self {
        case .invalidConfiguration(let why): "invalid engine configuration: \(why)"
        case .alreadyRunning: "the engine is already running"
        }
    }
}

/// The primary-side epoch loop: at each epoch boundary pause the guest, harvest
/// the dirty set, copy dirty pages into staging, capture state, resume; encode
/// in the background, overlapping the next epoch; hand each checkpoint to `sink`.
///
/// Two staging buffers: if encoding the previous checkpoint has not finished
/// when the next epoch ends, the epoch stretches (nothing is dropped) and the
/// statistics say so.
public final class CheckpointEngine: @unchecked Sendable {
    public let machine: any ReplicatedMachine
    public let configuration: EngineConfiguration
    /// Receives every checkpoint, in order, on the encoder thread.
    public var sink: (@Sendable (Checkpoint) -> Void)?
    /// Output held until its checkpoint commits; the engine closes its epochs.
    public var outputBuffer: OutputBuffer?
    /// The guest's block writes, closed with each epoch into its checkpoint.
    public var diskLog: DiskWriteLog?
    /// Called (on the epoch thread) when an epoch fails and the loop ends; `stop()` rethrows the error.
    public var failureHandler: (@Sendable (any Error) -> Void)?

    private let dirty: DirtyBitmap
    private let encoder: CheckpointEncoder
    private var nextSequence: UInt64 = 0
    /// Set by `precopy`: the first checkpoint carries only what changed since.
    private var precopied = false
    private let buffers = [StagedCheckpoint(), StagedCheckpoint()]
    private let free = DispatchSemaphore(value: 2)
    private let ready = DispatchSemaphore(value: 0)
    private let queue = Mutex<[Int]>([])
    private let stopping = Atomic<Bool>(false)
    /// Set by `stopLeavingGuestPaused()`: one last checkpoint, and no resume.
    private let leavePaused = Atomic<Bool>(false)
    private let epochDone = Atomic<Bool>(false)
    /// Ends the current epoch early (the disk log reached its epoch budget).
    private let epochWake = DispatchSemaphore(value: 0)
    private let throttleCount = Atomic<Int>(0)
    private let stats = Mutex<EpochLog>(EpochLog())
    private let pending = Mutex<[UInt64: (Duration, Int, Bool, Bool, PauseBreakdown)]>([:])
    private var threads: [Thread] = []
    private let finished = DispatchSemaphore(value: 0)
    private let failure = Mutex<(any Error)?>(nil)

    public init(machine: any ReplicatedMachine, configuration: EngineConfiguration = EngineConfiguration()) {
        self.machine = machine
        self.configuration = configuration
        dirty = DirtyBitmap(pageCount: machine.guestMemorySize / pageSize)
        encoder = CheckpointEncoder(level: configuration.level,
                                    cacheCapacityPages: configuration.referenceCachePages ?? machine.guestMemorySize / pageSize)
    }

    /// Memory the reference cache costs on the primary, in bytes.
    public var referenceCacheBytes: Int { encoder.cache.memoryBytes }

    // MARK: one step at a time (tests, tools)

    /// With the machine paused: harvests the dirty set (everything, for the first
    /// checkpoint), copies those pages, then the state, into `staged`. Returns
    /// the time each step took (`stop` and `resume` are the caller's).
    ///
    /// The pages are copied before the state is read: a machine whose
    /// `pauseForCheckpoint()` started reading vCPU state on other threads has
    /// had the harvest and copy to finish it.
    @discardableResult
    public func captureWhilePaused(into staged: StagedCheckpoint) throws -> PauseBreakdown {
        let clock = ContinuousClock()
        var breakdown = PauseBreakdown()
        var mark = clock.now
        func lap() -> Duration {
            let now = clock.now
            defer { mark = now }
            return now - mark
        }
        dirty.removeAll()
        try machine.collectDirtyPages(into: dirty)
        let isFull = nextSequence == 0 && !precopied
        if isFull { for i in 0..<dirty.pageCount { dirty[i] = true } }
        breakdown.harvest = lap()
        staged.fill(sequence: nextSequence, isFull: isFull, dirty: dirty, memory: machine.guestMemoryBase)
        breakdown.copy = lap()
        let state = try machine.captureCheckpointState()
        let output = outputBuffer?.closeEpoch(nextSequence) ?? []
        let disk = try diskLog?.closeEpoch(nextSequence) ?? []
        staged.attach(state: state, output: output, disk: disk)
        breakdown.state = lap()
        nextSequence += 1
        return breakdown
    }

    /// A piece of the pre-copy (`precopy`), from a first page on.
    public enum PrecopyChunk {
        /// Whole pages, as they are in guest RAM.
        case pages(UnsafeRawBufferPointer)
        /// This many pages that were all zero when read.
        case zeroPages(Int)
    }

    /// Copies all of guest RAM through `send` while the guest runs, before the
    /// first checkpoint, so that checkpoint's pause copies only the pages
    /// dirtied since instead of all of RAM (stop-and-copy). A short pause first
    /// restarts dirty tracking; any page the guest (or the VMM) writes during
    /// the copy, a page read torn included, is in the first checkpoint, which is
    /// then not a full image. `send` gets the first page number and a chunk:
    /// at most `chunkPages` whole pages, or a run of zero pages (any length),
    /// in page order; `progress` (pages done, total) after each.
    ///
    /// A guest that writes its disk budget (`DiskWriteLog.epochBudget`) before
    /// the copy ends is held paused until it ends, so the first checkpoint
    /// never carries more than a budget's worth of disk writes.
    public func precopy(chunkPages: Int = 255, progress: ((Int, Int) -> Void)? = nil,
                        send: (Int, PrecopyChunk) throws -> Void) throws {
        guard nextSequence == 0, threads.isEmpty else { throw EngineError.invalidConfiguration("pre-copy comes before the first checkpoint") }
        try machine.pauseForCheckpoint()
        do {
            dirty.removeAll()
            try machine.collectDirtyPages(into: dirty)
        } catch {
            try? machine.resumeAfterCheckpoint()
            throw error
        }
        try machine.resumeAfterCheckpoint()
        try machine.completeCheckpoint()
        var held = false
        defer {
            if held { try? machine.resumeAfterCheckpoint(); try? machine.completeCheckpoint() }
        }
        let total = dirty.pageCount
        let base = machine.guestMemoryBase
        var page = 0
        while page < total {
            var end = page
            if PageCodec.isZero(base + page * pageSize) {
                while end < total, PageCodec.isZero(base + end * pageSize) { end += 1 }
                try send(page, .zeroPages(end - page))
            } else {
                let limit = min(total, page + max(1, chunkPages))
                while end < limit, end == page || !PageCodec.isZero(base + end * pageSize) { end += 1 }
                try send(page, .pages(UnsafeRawBufferPointer(start: base + page * pageSize, count: (end - page) * pageSize)))
            }
            page = end
            progress?(page, total)
            if !held, diskLog?.isOverBudget == true {
                try machine.pauseForCheckpoint()
                held = true
                throttleCount.add(1, ordering: .relaxed)
            }
        }
        precopied = true
    }

    /// Encodes a staged checkpoint (on the caller's thread).
    public func encode(_ staged: StagedCheckpoint) -> Checkpoint { encoder.encode(staged) }

    // MARK: the loop

    /// Starts the epoch and encoder threads. Throws for an invalid configuration
    /// or when already running.
    public func start() throws(EngineError) {
        try configuration.validate()
        guard threads.isEmpty else { throw .alreadyRunning }
        stopping.store(false, ordering: .relaxed)
        epochDone.store(false, ordering: .sequentiallyConsistent)
        diskLog?.budgetReached = { [epochWake] in epochWake.signal() }
        let epochThread = Thread { [self] in epochLoop(); finished.signal() }
        epochThread.name = "understudy-epoch"
        let encoderThread = Thread { [self] in encoderLoop(); finished.signal() }
        encoderThread.name = "understudy-encoder"
        threads = [epochThread, encoderThread]
        epochThread.start()
        encoderThread.start()
    }

    /// Stops after the current epoch; every captured checkpoint is still encoded
    /// and delivered. Rethrows the first error either thread met.
    public func stop() throws {
        stopping.store(true, ordering: .relaxed)
        for _ in threads { finished.wait() }
        threads = []
        if let error = failure.withLock({ $0 }) { throw error }
    }

    /// Stops like `stop()`, but with one more checkpoint taken after the last
    /// epoch, and the guest left paused (`pauseForCheckpoint()` without its
    /// resume): the guest's final state, for a planned switchover. The caller
    /// either never runs the guest here again or, to abandon the switchover,
    /// calls `resumeAfterCheckpoint()` and `completeCheckpoint()` itself. When
    /// this throws, the guest was resumed (or never paused).
    public func stopLeavingGuestPaused() throws {
        leavePaused.store(true, ordering: .relaxed)
        defer { leavePaused.store(false, ordering: .relaxed) }
        try stop()
    }

    /// Per-epoch figures of the most recent epochs (at most `EpochLog.defaultCapacity`), oldest first.
    public var statistics: [EpochStatistics] { stats.withLock { $0.recent } }
    /// Epochs delivered so far.
    public var epochCount: Int { stats.withLock { $0.count } }
    /// Per-epoch figures of the epochs after the first `count` (as far as still kept).
    public func statistics(since count: Int) -> [EpochStatistics] { stats.withLock { $0.recent(since: count) } }
    /// Totals over every epoch so far (constant size).
    public var totals: EpochTotals { stats.withLock { $0.totals } }
    /// Epochs in which the guest was paused early, waiting for the encoder or
    /// the link, because it had written its disk budget (`DiskWriteLog.epochBudget`).
    public var throttledEpochs: Int { throttleCount.load(ordering: .relaxed) }

    private func epochLoop() {
        let clock = ContinuousClock()
        var deadline = clock.now + configuration.epoch
        var turn = 0
        while !stopping.load(ordering: .relaxed) {
            let now = clock.now
            // The epoch ends at its deadline, or earlier when the guest has
            // written its disk budget.
            if deadline > now { _ = epochWake.wait(timeout: .now() + .nanoseconds(Int((deadline - now).wholeMicroseconds) * 1000)) }
            // A free staging buffer: if none, the encoder (or the link behind it)
            // is behind and this epoch stretches, the guest running on; but a
            // guest that has written its disk budget waits, paused, so that no
            // checkpoint grows towards what a standby accepts.
            var stretched = false
            var pausedEarly = false
            var started = clock.now
            do {
                if free.wait(timeout: .now()) == .timedOut {
                    stretched = true
                    while free.wait(timeout: .now() + .milliseconds(1)) == .timedOut {
                        if !pausedEarly, diskLog?.isOverBudget == true {
                            started = clock.now
                            try machine.pauseForCheckpoint()
                            pausedEarly = true
                            throttleCount.add(1, ordering: .relaxed)
                        }
                    }
                }
            } catch {
                failure.withLock { if $0 == nil { $0 = error } }
                try? machine.resumeAfterCheckpoint()
                stopping.store(true, ordering: .relaxed)
                failureHandler?(error)
                break
            }
            let staged = buffers[turn]
            if !pausedEarly { started = clock.now }
            var breakdown: PauseBreakdown
            var resumed = started
            do {
                if !pausedEarly { try machine.pauseForCheckpoint() }
                let stopped = clock.now
                breakdown = try captureWhilePaused(into: staged)
                breakdown.stop = stopped - started
                let resuming = clock.now
                try machine.resumeAfterCheckpoint()
                resumed = clock.now
                breakdown.resume = resumed - resuming
                try machine.completeCheckpoint()
            } catch {
                failure.withLock { if $0 == nil { $0 = error } }
                try? machine.resumeAfterCheckpoint()        // never leave the guest paused
                free.signal()
                stopping.store(true, ordering: .relaxed)
                failureHandler?(error)
                break
            }
            let pause = resumed - started
            pending.withLock { $0[staged.sequence] = (pause, staged.count, stretched, pausedEarly, breakdown) }
            queue.withLock { $0.append(turn) }
            ready.signal()
            turn = 1 - turn
            // A budget signal that came while this epoch was already ending must
            // not cut the next one short.
            while epochWake.wait(timeout: .now()) == .success {}
            deadline = max(deadline + configuration.epoch, clock.now)
        }
        if leavePaused.load(ordering: .relaxed), failure.withLock({ $0 }) == nil { captureFinal(into: turn) }
        epochDone.store(true, ordering: .sequentiallyConsistent)
        ready.signal()
    }

    /// The last checkpoint of `stopLeavingGuestPaused()`: the guest is paused
    /// and stays so. On failure it is resumed and the error kept for `stop()`.
    private func captureFinal(into turn: Int) {
        free.wait()
        let staged = buffers[turn]
        let clock = ContinuousClock()
        let started = clock.now
        do {
            try machine.pauseForCheckpoint()
            let stopped = clock.now
            var breakdown = try captureWhilePaused(into: staged)
            breakdown.stop = stopped - started
            pending.withLock { $0[staged.sequence] = (clock.now - started, staged.count, false, false, breakdown) }
            queue.withLock { $0.append(turn) }
            ready.signal()
        } catch {
            failure.withLock { if $0 == nil { $0 = error } }
            try? machine.resumeAfterCheckpoint()
            try? machine.completeCheckpoint()
            free.signal()
        }
    }

    private func encoderLoop() {
        let clock = ContinuousClock()
        while true {
            ready.wait()
            while let index = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
                let staged = buffers[index]
                let started = clock.now
                let checkpoint = encoder.encode(staged)
                let encodeTime = clock.now - started
                sink?(checkpoint)
                let (pause, pages, stretched, throttled, breakdown) = pending.withLock { $0.removeValue(forKey: staged.sequence) }
                    ?? (.zero, staged.count, false, false, PauseBreakdown())
                stats.withLock {
                    $0.record(EpochStatistics(sequence: checkpoint.sequence, pause: pause, dirtyPages: pages,
                                              rawBytes: pages * pageSize + staged.state.count + staged.disk.count,
                                              encodedBytes: checkpoint.encodedSize, encodeTime: encodeTime, stretched: stretched,
                                              breakdown: breakdown, throttled: throttled))
                }
                free.signal()
            }
            // The epoch thread sets `epochDone` after queueing its last capture, then signals.
            if epochDone.load(ordering: .sequentiallyConsistent) && queue.withLock({ $0.isEmpty }) { return }
        }
    }
}
