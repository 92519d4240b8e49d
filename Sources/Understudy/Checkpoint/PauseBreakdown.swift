/// Where one checkpoint's pause went, step by step (they add up to the pause).
public struct PauseBreakdown: Sendable, Equatable {
    /// Stopping the guest: every vCPU out of KVM_RUN.
    public var stop: Duration = .zero
    /// Reading and re-arming the dirty log, merged with the VMM's own writes.
    public var harvest: Duration = .zero
    /// Copying the dirty pages into staging.
    public var copy: Duration = .zero
    /// Reading vCPU, VM and device state (what is left of it once the copy is
    /// done: vCPU threads may read their own state during the harvest and copy),
    /// and closing the epoch's output and disk writes.
    public var state: Duration = .zero
    /// Letting the vCPUs run again.
    public var resume: Duration = .zero

    public init() {}

    /// The sum of the steps.
    public var total: Duration { stop + harvest + copy + state + resume }
}
