import KVM

/// Why a standby's replica cannot be taken over from.
public enum TakeoverError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No checkpoint committed yet.
    case nothingCommitted
    /// A failed apply tore the replica (memory and disk of different checkpoints).
    case torn

    public var description: String {
        switch self {
        case .nothingCommitted: "no committed checkpoint to take over from"
        case .torn: "the replica is torn by a failed apply: it cannot be taken over from"
        }
    }
}

/// What a VMM needs to take the guest over from a standby's committed
/// replica, gathered in one step (the VMM-independent part of a takeover;
/// MicroVM's `Failover` is the worked example):
///
/// 1. (With fencing, win the guest's key first: `StandbyFencing.awaitTakeover`.)
/// 2. Build the machine from `state` on `memory` (the replica's memfd: no copy
///    of guest RAM) and attach its devices (the tap, `disk`).
/// 3. Write `announcement` to the tap, so switches and neighbours send the
///    guest's traffic here now.
/// 4. Release `unreleasedOutput`, in order: the output of committed epochs the
///    old primary may not have released (after a planned switchover: exactly
///    what it did not). Release it after the announcement, so the world's
///    answers come here.
/// 5. Start the guest; protect it again with a `ReplicationPrimary`
///    (`PrimaryConfiguration.initialHold = .zero`) when a standby is to be had.
public struct TakeoverPoint: Sendable {
    /// The committed checkpoint the guest resumes from.
    public let sequence: UInt64
    /// The VMM's state of that checkpoint (its `saveCheckpointState()` bytes).
    public let state: [UInt8]
    /// Guest RAM of that checkpoint.
    public let memory: SharedMemory
    /// The session's hello: the guest's MAC, devices, epoch and platform.
    public let hello: Hello
    /// How long before this point the checkpoint committed.
    public let sinceLastCommit: Duration
    /// RARP and gratuitous ARP frames for the guest's MAC and every IPv4
    /// address it was seen sending from.
    public let announcement: [[UInt8]]
    /// The IPv4 addresses the announcement names.
    public let addresses: [[UInt8]]
    /// Output to release, oldest first, and the epochs it came from.
    public let unreleasedOutput: [OutputRecord]
    public let unreleasedEpochs: [UInt64]

    /// The takeover point of `receiver`'s replica, once `run()` has returned
    /// `.primaryLost` or `.handedOver`. Throws when there is none.
    public init(_ receiver: StandbyReceiver) throws(TakeoverError) {
        guard let replica = receiver.replica, let sequence = replica.committedSequence, let hello = receiver.hello else {
            throw .nothingCommitted
        }
        guard replica.isIntact else { throw .torn }
        self.sequence = sequence
        self.hello = hello
        state = replica.state
        memory = replica.memory
        sinceLastCommit = receiver.lastCommit.map { .now - $0 } ?? .zero
        addresses = receiver.guestAddresses
        announcement = Announcement.frames(mac: hello.mac, addresses: receiver.guestAddresses)
        unreleasedOutput = receiver.unreleasedOutput.flatMap(\.output)
        unreleasedEpochs = receiver.unreleasedOutput.map(\.sequence)
    }
}
