import KVM

/// What a VMM gives Understudy to protect its guest (DESIGN.md §2). MicroVM
/// conforms; any Swift VMM that owns a KVM guest can.
///
/// ```swift
/// let engine = CheckpointEngine(machine: myMachine, configuration: .init(epoch: .milliseconds(5)))
/// let replica = try ReplicaImage(memorySize: myMachine.guestMemorySize)
/// engine.sink = { checkpoint in try? replica.apply(checkpoint) }
/// try engine.start()          // pause, harvest, copy, capture, resume; encode in the background
/// ```
public protocol ReplicatedMachine: AnyObject, Sendable {
    /// Guest RAM as this process maps it: one mapping, page n of which is the
    /// page `collectDirtyPages` marks as n (with `DirtyTracker`: guest-physical
    /// page n, so RAM from guest-physical 0 without holes).
    var guestMemoryBase: UnsafeMutableRawPointer { get }
    /// Bytes of guest RAM (a multiple of 4 KiB).
    var guestMemorySize: Int { get }
    /// Every vCPU out of KVM_RUN and every device quiescent. A vCPU whose last
    /// exit was MMIO or port I/O must first complete it
    /// (`VCPU.completeInFlightExit()`): state read before that would make a
    /// replica that repeats an OUT or MMIO write, or loses an IN or MMIO read.
    /// A pause is not always a checkpoint's (a disk copy or the pre-copy may
    /// hold the guest while the link catches up), and the last one of a
    /// planned switchover is never resumed.
    func pauseForCheckpoint() throws
    /// Back to running.
    func resumeAfterCheckpoint() throws
    /// What is left of the checkpoint once the guest runs again (e.g. re-arming
    /// dirty tracking, `DirtyTracker.rearm()`), off the pause. The engine calls
    /// it after each `resumeAfterCheckpoint()` of a completed checkpoint, before
    /// the next pause (on an error path it may resume without it). The default
    /// does nothing.
    func completeCheckpoint() throws
    /// Marks in `bitmap` (whole-RAM page numbers) every page written since the
    /// last call, by the guest (KVM's dirty log) or by the VMM itself. Paused only.
    func collectDirtyPages(into bitmap: DirtyBitmap) throws
    /// vCPU, VM and device state as versioned bytes. Paused only.
    func saveCheckpointState() throws -> [UInt8]
    /// Reads vCPU, VM and device state (paused only) and returns what turns it
    /// into the same bytes as `saveCheckpointState()`, to be called later, off
    /// the pause (the engine encodes on its encoder thread). The default calls
    /// `saveCheckpointState()` at once.
    func captureCheckpointState() throws -> @Sendable () -> [UInt8]
    /// Whether the guest has stopped for good (it exited, or the VMM stopped
    /// it): a checkpoint that fails then is the end of the run, not a fault.
    var hasStopped: Bool { get }
}

extension ReplicatedMachine {
    public var hasStopped: Bool { false }
    public func completeCheckpoint() throws {}
    public func captureCheckpointState() throws -> @Sendable () -> [UInt8] {
        let bytes = try saveCheckpointState()
        return { bytes }
    }
}
