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
/// Bounded: at most `capacityBytes` of network frames and `consoleCapacityBytes`
/// of console bytes are held (counted as encoded: each item plus its record header) (so one checkpoint's output always fits the
/// standby's bound, `CheckpointBegin.maximumOutputBytes`). Past the bound, new
/// frames are dropped and counted, as a congested link would drop them, and TCP
/// recovers by retransmitting. Console bytes past the bound are dropped too and
/// counted, and the loss is never silent: once there is room again, the console
/// gets a line `[understudy: N bytes of console output dropped ...]` in their
/// place. Holding the guest instead (a vCPU blocked in its write) would also
/// block the pause that takes the checkpoint whose acknowledgement frees the
/// space. Only a standby that falls far behind fills either bound.
public final class OutputBuffer: @unchecked Sendable {
    public let capacityBytes: Int
    public let consoleCapacityBytes: Int
    private let release: @Sendable (OutputRecord.Kind, [UInt8]) -> Void
    private let lock = NSLock()
    /// Held while items go out, so releases never overtake each other (at the
    /// switch to pass-through, the held items go before any new one).
    private let releasing = NSLock()
    private var held: [(epoch: UInt64, record: OutputRecord, since: ContinuousClock.Instant)] = []
    private var heldBytes = 0
    private var heldConsoleBytes = 0
    /// Console bytes dropped since the last marker line went into the stream.
    private var consoleDroppedSinceMarker = 0
    private var consoleDroppedTotal = 0
    private var released: UInt64?
    private var sealed = false
    /// Set by `suspendReleases()`.
    private var suspended = false
    private var currentEpoch: UInt64 = 0
    private var protected: Bool
    /// The current epoch's records, encoded as they arrive (what `closeEpoch` hands out).
    private var openEpoch: [UInt8] = []
    private var droppedCount = 0
    private var longestHeld: Duration = .zero
    /// The newest acknowledged epoch (protected mode).
    private var committed: UInt64?
    private var gate: (@Sendable () -> Bool)?

    /// Whether this copy may release output now: set by fencing (`Fence`:
    /// its arbiter grant is certainly valid), nil when there is no arbiter.
    /// While it says no, nothing leaves: acknowledged output stays held, in
    /// order, and so does output in pass-through mode, until `flush()` finds
    /// the gate open again (or `seal()` discards it).
    public var releaseGate: (@Sendable () -> Bool)? {
        get { lock.withLock { gate } }
        set { lock.withLock { gate = newValue } }
    }
    /// Frames dropped because the buffer was full.
    public var dropped: Int { lock.withLock { droppedCount } }
    /// Console bytes dropped because the buffer was full.
    public var consoleBytesDropped: Int { lock.withLock { consoleDroppedTotal } }
    /// The newest epoch of the current session whose output has been handed to
    /// the world (`release` has returned for every item of it and of the
    /// epochs before): the mark a primary sends as `releasedThrough`. Never ahead
    /// of the release, so a standby that drops output up to it drops only what
    /// the world already has. nil before the session's first commit.
    public var releasedThrough: UInt64? { lock.withLock { released } }
    /// The longest any released item was held (a statistic of output commit's cost).
    public var maximumAge: Duration { lock.withLock { longestHeld } }

    /// `release` sends one item to the world (writes a frame to the tap, console
    /// bytes to standard output). Starts protected unless `protected` is false.
    public init(capacityBytes: Int = 16 << 20, consoleCapacityBytes: Int = 16 << 20, protected: Bool = true,
                release: @escaping @Sendable (OutputRecord.Kind, [UInt8]) -> Void) {
        precondition(capacityBytes >= 0 && consoleCapacityBytes >= 0 && capacityBytes + consoleCapacityBytes + 4096 <= CheckpointBegin.maximumOutputBytes,
                     "held output must fit inside one checkpoint's output bound")
        self.capacityBytes = capacityBytes
        self.consoleCapacityBytes = consoleCapacityBytes
        self.protected = protected
        self.release = release
    }

    /// Holds one item produced by the guest in the current epoch (or releases it
    /// at once when not protected). Console bytes over `OutputRecord.maximumLength`
    /// are held in pieces; a network frame that long (no card sends one) is
    /// dropped and counted: a record a standby cannot read would make it
    /// refuse every checkpoint that carries it.
    public func hold(_ kind: OutputRecord.Kind, _ bytes: UnsafeRawBufferPointer) {
        if bytes.count > OutputRecord.maximumLength {
            switch kind {
            case .console:
                var offset = 0
                while offset < bytes.count {
                    let end = min(bytes.count, offset + OutputRecord.maximumLength)
                    hold(.console, UnsafeRawBufferPointer(rebasing: bytes[offset..<end]))
                    offset = end
                }
            case .network:
                lock.withLock { droppedCount += 1 }
            }
            return
        }
        lock.lock()
        guard !sealed else {
            lock.unlock()
            return
        }
        if !protected, held.isEmpty, !suspended, gate?() ?? true {
            lock.unlock()
            releasing.withLock { release(kind, Array(bytes)) }
            return
        }
        // Protected, or pass-through behind a closed gate: held (bounded).
        defer { lock.unlock() }
        switch kind {
        case .network:
            guard heldBytes - heldConsoleBytes + OutputRecord.headerSize + bytes.count <= capacityBytes else {
                droppedCount += 1
                return
            }
        case .console:
            if consoleDroppedSinceMarker > 0 {
                let marker = Array("\n[understudy: \(consoleDroppedSinceMarker) bytes of console output dropped: held output reached its bound of \(consoleCapacityBytes) bytes while the standby fell behind]\n".utf8)
                guard heldConsoleBytes + 2 * OutputRecord.headerSize + marker.count + bytes.count <= consoleCapacityBytes else {
                    consoleDroppedSinceMarker += bytes.count
                    consoleDroppedTotal += bytes.count
                    return
                }
                consoleDroppedSinceMarker = 0
                append(.console, marker)
            }
            guard heldConsoleBytes + OutputRecord.headerSize + bytes.count <= consoleCapacityBytes else {
                consoleDroppedSinceMarker += bytes.count
                consoleDroppedTotal += bytes.count
                return
            }
        }
        append(kind, Array(bytes))
    }

    /// Adds one record to the open epoch (lock held).
    private func append(_ kind: OutputRecord.Kind, _ bytes: [UInt8]) {
        let record = OutputRecord(kind: kind, bytes: bytes)
        record.append(to: &openEpoch)
        held.append((currentEpoch, record, ContinuousClock.now))
        heldBytes += OutputRecord.headerSize + bytes.count
        if kind == .console { heldConsoleBytes += OutputRecord.headerSize + bytes.count }
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
        releasing.withLock {
            lock.withLock { if protected, committed.map({ $0 < sequence }) ?? true { committed = sequence } }
            releaseDue()
        }
    }

    /// Releases what is due if the gate is open now (called by fencing when
    /// its grant is valid again). Returns the number of items released.
    @discardableResult
    public func flush() -> Int {
        releasing.withLock { releaseDue() }
    }

    /// Releases, in order, the held items that may go (acknowledged epochs when
    /// protected, everything in pass-through mode), unless the gate is closed.
    /// Call with `releasing` held.
    @discardableResult
    private func releaseDue() -> Int {
        lock.lock()
        guard !sealed, !suspended, gate?() ?? true else {
            lock.unlock()
            return 0
        }
        let limit: UInt64? = protected ? committed : .max
        var count = 0
        if let limit { while count < held.count && held[count].epoch <= limit { count += 1 } }
        let out = held.prefix(count)
        held.removeFirst(count)
        let now = ContinuousClock.now
        for item in out {
            forget(item.record)
            longestHeld = max(longestHeld, now - item.since)
        }
        let mark = protected ? committed : nil
        if !protected { openEpoch.removeAll(keepingCapacity: true) }     // no checkpoint carries pass-through output
        lock.unlock()
        for item in out { release(item.record.kind, item.record.bytes) }
        if let mark { lock.withLock { if protected, released.map({ $0 < mark }) ?? true { released = mark } } }
        return out.count
    }

    /// Until `resumeReleases()`, nothing leaves, acknowledged or not: a
    /// planned switchover, whose standby releases what this host did not
    /// (`releasedThrough` is exact once this returns). The world then hears
    /// the guest's next output from the standby, after it announced itself,
    /// so what the world sends in answer goes there and is not lost here.
    public func suspendReleases() {
        releasing.withLock { lock.withLock { suspended = true } }
    }

    /// Releases are allowed again (a switchover was abandoned), and what is due goes now.
    public func resumeReleases() {
        releasing.withLock {
            lock.withLock { suspended = false }
            releaseDue()
        }
    }

    /// Accounts for a record that left the buffer (lock held).
    private func forget(_ record: OutputRecord) {
        heldBytes -= OutputRecord.headerSize + record.bytes.count
        if record.kind == .console { heldConsoleBytes -= OutputRecord.headerSize + record.bytes.count }
    }

    /// Starts protecting for a new replication session: epochs count from 0 again
    /// (the session's first checkpoint is 0). Call before the engine starts.
    ///
    /// Everything still held (output from before the first session, or of
    /// epochs a previous session never got acknowledged) becomes epoch 0's: it
    /// travels inside checkpoint 0, so a standby that commits 0 holds it and
    /// releases it if it takes over, and it goes out here when 0 is acknowledged.
    public func protect() {
        lock.withLock {
            guard !sealed else { return }
            protected = true
            currentEpoch = 0
            released = nil
            committed = nil
            openEpoch.removeAll()
            for index in held.indices {
                held[index].epoch = 0
                held[index].record.append(to: &openEpoch)
            }
        }
    }

    /// No standby any more: releases everything held, in order, and lets later
    /// output through at once (both only while the gate is open). Returns the
    /// number of items released.
    @discardableResult
    public func passThrough() -> Int {
        releasing.withLock {
            let open = lock.withLock {
                guard !sealed else { return false }
                protected = false
                released = nil
                committed = nil
                openEpoch.removeAll()
                return true
            }
            return open ? releaseDue() : 0
        }
    }

    /// This host will never release the guest's output again (replication was
    /// abandoned after a host fault; the standby takes over): everything held is
    /// discarded, and later output is dropped, as if this host had died. Commits
    /// and `passThrough()` release nothing after this.
    public func seal() {
        releasing.withLock {
            lock.withLock {
                sealed = true
                protected = true
                held.removeAll()
                heldBytes = 0
                heldConsoleBytes = 0
                openEpoch.removeAll()
            }
        }
    }

    /// Whether `seal()` was called.
    public var isSealed: Bool { lock.withLock { sealed } }

    /// Drops everything not yet committed (a primary that dies loses it; tests
    /// use this to play that part).
    public func discardUncommitted() {
        lock.withLock {
            held.removeAll()
            heldBytes = 0
            heldConsoleBytes = 0
            openEpoch.removeAll()
        }
    }

    /// Whether output is being held (a standby protects the guest).
    public var isProtected: Bool { lock.withLock { protected } }

    /// Bytes held now, as encoded in a checkpoint (each item plus its record header).
    public var bytesHeld: Int { lock.withLock { heldBytes } }

    /// How long the oldest held item has waited (zero when nothing is held).
    public var oldestAge: Duration { lock.withLock { held.first.map { ContinuousClock.now - $0.since } ?? .zero } }
}
