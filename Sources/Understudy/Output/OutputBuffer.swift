import Foundation

/// The output-commit buffer (DESIGN.md invariant 1): every externally visible
/// effect the guest produces (network frames, console bytes) is tagged with the
/// epoch that produced it and released only once that epoch's checkpoint is
/// acknowledged (committed by the replica).
///
/// Epoch numbering follows checkpoints: output produced after checkpoint N-1 was
/// captured and before checkpoint N is captured belongs to epoch N, and goes out
/// when checkpoint N commits. The engine calls `closeEpoch(_:)` while the guest
/// is paused, so no output straddles a boundary.
///
/// Bounded: at most `capacityBytes` are held. Past that, new output is dropped
/// and counted, as a congested link would drop it; TCP recovers. (A vCPU that
/// blocked instead could never be paused for the checkpoint that would free space.)
public final class OutputBuffer: @unchecked Sendable {
    public let capacityBytes: Int
    private let release: @Sendable ([UInt8]) -> Void
    private let lock = NSLock()
    private var held: [(epoch: UInt64, bytes: [UInt8], since: ContinuousClock.Instant)] = []
    private var heldBytes = 0
    private var currentEpoch: UInt64 = 0
    /// Items dropped because the buffer was full.
    public private(set) var dropped = 0
    /// The longest any released item was held.
    public private(set) var maximumAge: Duration = .zero

    /// `release` sends one item to the world (e.g. writes a frame to the tap).
    public init(capacityBytes: Int = 16 << 20, release: @escaping @Sendable ([UInt8]) -> Void) {
        self.capacityBytes = capacityBytes
        self.release = release
    }

    /// Holds one item produced by the guest in the current epoch.
    public func hold(_ bytes: UnsafeRawBufferPointer) {
        lock.lock()
        defer { lock.unlock() }
        guard heldBytes + bytes.count <= capacityBytes else {
            dropped += 1
            return
        }
        held.append((currentEpoch, Array(bytes), ContinuousClock.now))
        heldBytes += bytes.count
    }

    /// The guest is paused for checkpoint `sequence`: what comes next belongs to `sequence + 1`.
    public func closeEpoch(_ sequence: UInt64) {
        lock.withLock { currentEpoch = sequence &+ 1 }
    }

    /// Checkpoint `sequence` is committed: releases everything of epochs up to it, in order.
    public func commit(upTo sequence: UInt64) {
        lock.lock()
        var count = 0
        while count < held.count && held[count].epoch <= sequence { count += 1 }
        let out = held.prefix(count)
        held.removeFirst(count)
        let now = ContinuousClock.now
        for item in out {
            heldBytes -= item.bytes.count
            maximumAge = max(maximumAge, now - item.since)
        }
        lock.unlock()
        for item in out { release(item.bytes) }
    }

    /// Drops everything not yet committed (the primary lost its standby and is
    /// starting over, or is shutting down without one).
    public func discardUncommitted() {
        lock.withLock {
            held.removeAll()
            heldBytes = 0
        }
    }

    /// Bytes held now.
    public var bytesHeld: Int { lock.withLock { heldBytes } }
}
