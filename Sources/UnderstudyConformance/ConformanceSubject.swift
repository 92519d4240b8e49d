import Understudy

/// A machine of the VMM under test, as the conformance kit drives it: the
/// machine (built, not started), and how to start and stop it. The VMM's
/// own code, in its test.
public struct ConformanceSubject {
    public var machine: any ReplicatedMachine
    /// Starts the guest running.
    public var start: () throws -> Void
    /// Stops the guest for good (it may be paused).
    public var stop: () -> Void

    public init(machine: any ReplicatedMachine, start: @escaping () throws -> Void, stop: @escaping () -> Void) {
        self.machine = machine
        self.start = start
        self.stop = stop
    }
}
