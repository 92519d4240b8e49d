import Foundation
import Glibc

/// The primary's record of the guest's block writes (DESIGN.md invariant 4).
///
/// Every write the guest makes is written to the primary's image as usual and
/// recorded here with its epoch; `closeEpoch(_:)` (called by the engine while
/// the guest is paused) hands the epoch's writes, and whether the guest asked
/// for a flush, to its checkpoint as `DiskRecord` bytes. The standby applies
/// them if and only if that checkpoint commits.
///
/// While a new standby receives the whole image (`DiskSync`), writes are only
/// tracked as extents; the first checkpoint after the copy carries the current
/// contents of every extent written during it, read from the image while the
/// guest is paused, so no write is missed.
///
/// Until a standby acknowledges a checkpoint, the extents its epoch wrote are
/// remembered (offsets and lengths only). When a session ends for a resync,
/// the standby's disk is still at its last committed checkpoint; the next
/// session (`beginResync()`) then sends the current contents of every extent
/// written since the last acknowledged checkpoint with its full image, instead
/// of the whole disk.
///
/// Bounded: an epoch's records are capped at `recordCap` (32 MiB); past the cap
/// the epoch's writes collapse into extents, re-read from the image at the
/// checkpoint (same result, no extra memory). A checkpoint may carry at most
/// `CheckpointBegin.maximumDiskBytes` (256 MiB) of writes; an epoch that has
/// written `epochBudget` (64 MiB) is ended early by the engine, and when the
/// link is behind the guest is paused until it catches up, so a checkpoint
/// stays far below the bound however fast the guest writes.
public final class DiskWriteLog: @unchecked Sendable {
    /// The primary's image, read when extents must be resent.
    public let fd: Int32
    public let size: UInt64
    private let lock = NSLock()
    private var records: [UInt8] = []
    private var flushed = false
    /// Extents written while syncing or past the cap: (offset, length).
    private var extents: [(UInt64, Int)] = []
    private var tracking = false
    /// Off without a standby: nothing is kept.
    private var recording = false
    /// Extents of the open epoch (records or tracked).
    private var epochExtents: [(UInt64, Int)] = []
    /// Extents of this session's closed, unacknowledged epochs, by sequence (unmerged).
    private var unacknowledged: [(sequence: UInt64, extents: [(UInt64, Int)])] = []
    /// Extents written since the last acknowledged checkpoint of an earlier
    /// session that ended for a resync.
    private var carried: [(UInt64, Int)] = []
    /// Bytes of writes recorded per epoch, for statistics (the latest closed epoch).
    public private(set) var lastEpochBytes = 0

    /// Bytes the guest wrote in the open epoch (records and extents alike).
    private var epochBytes = 0
    private var budgetSignalled = false
    /// What one epoch may write before the engine ends it early, or, when the
    /// link is behind, pauses the guest until it catches up: a quarter of what
    /// a standby accepts in one checkpoint (`CheckpointBegin.maximumDiskBytes`),
    /// so a checkpoint never approaches that bound.
    public let epochBudget: Int
    /// Called (on the writing thread, once per epoch) when the open epoch's
    /// writes reach `epochBudget`. The engine sets it to end the epoch early.
    public var budgetReached: (@Sendable () -> Void)? {
        get { lock.withLock { onBudget } }
        set { lock.withLock { onBudget = newValue } }
    }
    private var onBudget: (@Sendable () -> Void)?

    /// The default `epochBudget`: a quarter of what a standby accepts in one checkpoint.
    public static let defaultEpochBudget = CheckpointBegin.maximumDiskBytes / 4
    /// The largest `epochBudget`: half of what a standby accepts in one checkpoint.
    public static let maximumEpochBudget = CheckpointBegin.maximumDiskBytes / 2

    /// `fd` must stay open as long as the log is used; `epochBudget` is
    /// clamped to 1...`maximumEpochBudget`.
    public init(fd: Int32, size: UInt64, epochBudget: Int = DiskWriteLog.defaultEpochBudget) {
        self.fd = fd
        self.size = size
        self.epochBudget = max(1, min(epochBudget, Self.maximumEpochBudget))
    }

    /// Whether the open epoch's writes reached `epochBudget`.
    public var isOverBudget: Bool { lock.withLock { epochBytes >= epochBudget } }

    /// The guest wrote `bytes` at byte `offset` (already on the primary's image).
    public func write(offset: UInt64, _ bytes: UnsafeRawBufferPointer) {
        let signal: (@Sendable () -> Void)? = lock.withLock {
            guard recording else { return nil }
            epochExtents.append((offset, bytes.count))
            epochBytes += bytes.count
            if tracking || records.count + bytes.count + 13 > Self.recordCap {
                extents.append((offset, bytes.count))
                tracking = true
            } else {
                DiskRecord.appendWrite(offset: offset, bytes, to: &records)
            }
            guard epochBytes >= epochBudget, !budgetSignalled else { return nil }
            budgetSignalled = true
            return onBudget
        }
        signal?()
    }

    /// Writes kept as records per epoch; past this, as extents re-read at the checkpoint.
    public static let recordCap = 32 << 20

    /// The guest flushed (the primary's image is already synced).
    public func flush() { lock.withLock { if recording { flushed = true } } }

    /// No standby any more: drops what is kept and keeps nothing until the next `beginSync`.
    public func stopRecording() {
        lock.withLock {
            recording = false
            tracking = false
            flushed = false
            records.removeAll()
            extents.removeAll()
            epochExtents.removeAll()
            unacknowledged.removeAll()
            carried.removeAll()
        }
    }

    /// From now until the next `closeEpoch`, only track extents (a new standby
    /// is being sent the whole image).
    public func beginSync() {
        lock.withLock {
            records.removeAll()
            extents.removeAll()
            epochExtents.removeAll()
            unacknowledged.removeAll()
            carried.removeAll()
            tracking = true
            recording = true
            flushed = false
        }
    }

    /// Checkpoint `sequence` of the current session is committed on the standby:
    /// its epoch's extents, and those of every epoch before it, need not be
    /// resent by a resync any more.
    public func acknowledge(through sequence: UInt64) {
        lock.withLock {
            unacknowledged.removeAll { $0.sequence <= sequence }
            carried.removeAll()
        }
    }

    /// The session ended for a resync: what was written since the last
    /// acknowledged checkpoint is carried to the next session.
    public func endSessionForResync() {
        lock.withLock {
            carried += unacknowledged.flatMap(\.extents) + epochExtents
            carried = Self.merged(carried)
            unacknowledged.removeAll()
            epochExtents.removeAll()
            records.removeAll()
            extents.removeAll()
            flushed = false
            tracking = false
        }
    }

    /// A new session whose standby kept its disk at its last committed
    /// checkpoint: the session's first checkpoint carries the current contents
    /// of everything written since the last acknowledged checkpoint.
    public func beginResync() {
        lock.withLock {
            extents = carried + epochExtents
            epochExtents = extents
            records.removeAll()
            tracking = true
            recording = true
            flushed = true          // the full image makes the replica's disk durable
        }
    }

    /// Extents written since `beginSync` (merged), left tracked.
    public func trackedExtents() -> [(UInt64, Int)] { lock.withLock { Self.merged(extents) } }

    /// Extents written since `beginSync` or the last take (merged); tracking goes on.
    public func takeTrackedExtents() -> [(UInt64, Int)] {
        lock.withLock {
            defer { extents.removeAll() }
            return Self.merged(extents)
        }
    }

    /// Paused, for checkpoint `sequence`: the epoch's disk records.
    public func closeEpoch(_ sequence: UInt64) throws(DiskError) -> [UInt8] {
        lock.lock()
        var out = records
        let resend = extents
        let flush = flushed
        records.removeAll(keepingCapacity: true)
        extents.removeAll()
        tracking = false
        flushed = false
        // Handed over as they are: merging (a sort) waits for a resync, off the pause.
        if recording { unacknowledged.append((sequence, epochExtents)) }
        epochExtents = []
        epochBytes = 0
        budgetSignalled = false
        lock.unlock()
        for (offset, length) in DiskWriteLog.merged(resend) {
            var chunkStart = offset
            let end = offset + UInt64(length)
            while chunkStart < end {
                let count = Int(min(end - chunkStart, 1 << 20))
                var buffer = [UInt8](repeating: 0, count: count)
                let read = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(chunkStart)) }
                guard read == count else { throw .system(call: "pread", errno: read < 0 ? errno : EIO) }
                buffer.withUnsafeBytes { DiskRecord.appendWrite(offset: chunkStart, $0, to: &out) }
                chunkStart += UInt64(count)
            }
        }
        if flush { DiskRecord.appendFlush(to: &out) }
        lastEpochBytes = out.count
        return out
    }

    /// Sorted, overlapping and touching extents joined.
    static func merged(_ extents: [(UInt64, Int)]) -> [(UInt64, Int)] {
        var result: [(UInt64, Int)] = []
        for (offset, length) in extents.sorted(by: { $0.0 < $1.0 }) {
            if let last = result.last, offset <= last.0 + UInt64(last.1) {
                let end = max(last.0 + UInt64(last.1), offset + UInt64(length))
                result[result.count - 1].1 = Int(end - last.0)
            } else {
                result.append((offset, length))
            }
        }
        return result
    }
}
