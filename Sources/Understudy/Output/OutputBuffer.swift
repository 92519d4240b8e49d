import Foundation

/// The output-commit buffer (DESIGN.md invariant 1): every externally visible
/// effect the guest produces (network frames, console bytes) is tagged with the
/// epoch that produced it and released only once that epoch's checkpoint is
/// acknowledged (committed by the replica).
///
/// Epoch numbering follows checkpoints: output produced after checkpoint N-1 was
/// captured and before checkpoint N is captured belongs to epoch N, and goes out
/// when checkpoint N commits. The engine calls `closeEpoch(_:)` while the guest
/// is paused, so no output straddles a boundary; it returns the epoch's output
/// as `OutputRecord` bytes, which travel inside checkpoint N so that a standby
/// taking over can release them (the world may then see that one epoch twice).
///
/// Two modes. *Protected*: output is held as above. *Pass-through* (no standby,
/// or the standby was lost): output is released at once, and going pass-through
/// releases everything held, in order.
///
/// Bounded: at most `capacityBytes` of network frames are held. Past that, new
/// frames are dropped and counted, as a congested link would drop them, and TCP
/// recovers by retransmitting. Holding the guest instead (a vCPU blocked in its
/// transmit) would also block the pause that takes the checkpoint whose
/// acknowledgement frees the space. Console bytes are never dropped: a line of
/// the guest's console that vanished could not be retransmitted.
public final class OutputBuffer: @unchecked Sendable {
    public let capacityBytes: Int
    private let release: @Sendable (OutputRecord.Kind, [UInt8]) -> Void
    private let lock = NSLock()
    /// Held while items go out, so releases never overtake each other (at the
    /// switch to pass-through, the held items go before any new one).
    private let releasing = NSLock()
    private var held: [(epoch: UInt64, record: OutputRecord, since: ContinuousClock.Instant)] = []
    private var heldBytes = 0
    private var currentEpoch: UInt64 = 0
    private var protected: Bool
    /// The current epoch's records, encoded as they arrive (what `closeEpoch` hands out).
    private var openEpoch: [UInt8] = []
    private var droppedCount = 0
    private var longestHeld: Duration = .zero
    /// Frames dropped because the buffer was full.
    public var dropped: Int { lock.withLock { droppedCount } }
    /// The longest any released item was held (a statistic of output commit's cost).
    public var maximumAge: Duration { lock.withLock { longestHeld } }

    /// `release` sends one item to the world (writes a frame to the tap, console
    /// bytes to standard output). Starts protected unless `protected` is false.
    public init(capacityBytes: Int = 16 << 20, protected: Bool = true,
                release: @escaping @Sendable (OutputRecord.Kind, [UInt8]) -> Void) {
        self.capacityBytes = capacityBytes
        self.protected = protected
        self.release = release
    }

    /// Holds one item produced by the guest in the current epoch (or releases it
    /// at once when not protected).
    public func hold(_ kind: OutputRecord.Kind, _ bytes: UnsafeRawBufferPointer) {
        lock.lock()
        guard protected else {
            lock.unlock()
            releasing.withLock { release(kind, Array(bytes)) }
            return
        }
        defer { lock.unlock() }
        if kind == .network {
            guard heldBytes + bytes.count <= capacityBytes else {
                droppedCount += 1
                return
            }
        }
        let record = OutputRecord(kind: kind, bytes: Array(bytes))
        record.append(to: &openEpoch)
        held.append((currentEpoch, record, ContinuousClock.now))
        heldBytes += bytes.count
    }

    /// The guest is paused for checkpoint `sequence`: what comes next belongs to
    /// `sequence + 1`. Returns epoch `sequence`'s output as `OutputRecord` bytes.
    public func closeEpoch(_ sequence: UInt64) -> [UInt8] {
        lock.withLock {
            currentEpoch = sequence &+ 1
            defer { openEpoch.removeAll(keepingCapacity: true) }
            return openEpoch
        }
    }

    /// Checkpoint `sequence` is committed: releases everything of epochs up to it, in order.
    public func commit(upTo sequence: UInt64) {
        releasing.lock()
        defer { releasing.unlock() }
        lock.lock()
        var count = 0
        while count < held.count && held[count].epoch <= sequence { count += 1 }
        let out = held.prefix(count)
        held.removeFirst(count)
        let now = ContinuousClock.now
        for item in out {
            heldBytes -= item.record.bytes.count
            longestHeld = max(longestHeld, now - item.since)
        }
        lock.unlock()
        for item in out { release(item.record.kind, item.record.bytes) }
    }

    /// Starts protecting for a new replication session: epochs count from 0 again
    /// (the session's first checkpoint is 0). Call before the engine starts.
    public func protect() {
        lock.withLock {
            protected = true
            currentEpoch = 0
            openEpoch.removeAll()
        }
    }

    /// No standby any more: releases everything held, in order, and lets later
    /// output through at once. Returns the number of items released.
    @discardableResult
    public func passThrough() -> Int {
        releasing.lock()
        defer { releasing.unlock() }
        lock.lock()
        protected = false
        let out = held
        held.removeAll()
        heldBytes = 0
        openEpoch.removeAll()
        lock.unlock()
        for item in out { release(item.record.kind, item.record.bytes) }
        return out.count
    }

    /// Drops everything not yet committed (a primary that dies loses it; tests
    /// use this to play that part).
    public func discardUncommitted() {
        lock.withLock {
            held.removeAll()
            heldBytes = 0
            openEpoch.removeAll()
        }
    }

    /// Whether output is being held (a standby protects the guest).
    public var isProtected: Bool { lock.withLock { protected } }

    /// Bytes held now.
    public var bytesHeld: Int { lock.withLock { heldBytes } }

    /// How long the oldest held item has waited (zero when nothing is held).
    public var oldestAge: Duration { lock.withLock { held.first.map { ContinuousClock.now - $0.since } ?? .zero } }
}
