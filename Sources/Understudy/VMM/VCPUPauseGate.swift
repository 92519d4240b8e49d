import KVM
import Foundation

/// Parks a VMM's vCPU threads out of KVM_RUN for a pause (a checkpoint, a
/// snapshot, a switchover's last checkpoint) and lets them run again, with the
/// rule that decides correctness built in: a vCPU whose last exit was MMIO or
/// port I/O completes it (`VCPU.completeInFlightExit()`) before it parks, so
/// state read while paused is never in the middle of an instruction whose
/// device access already happened.
///
/// Each vCPU thread calls `enter(_:exitInFlight:racedExit:whileParked:)`
/// before every KVM_RUN and `threadEnded()` when it ends. The controller calls
/// the `...Locked` methods with `condition` held, so that it can change its
/// own state under the same lock (MicroVM: its phase, what a pause captures).
/// A VMM may guard more of its state with `condition` and wait on it (a vCPU
/// waiting for a device event): the gate broadcasts on every change.
/// MicroVM's `Machine.pause`/`resume` and vCPU loop are the worked example.
public final class VCPUPauseGate: @unchecked Sendable {
    /// The lock (and condition) of the gate's state.
    public let condition = NSCondition()
    private let vcpus: [VCPU]
    /// A pause is asked for (read with `condition` held).
    public private(set) var pauseRequested = false
    /// The vCPU threads are to end (read with `condition` held).
    public private(set) var isStopping = false
    /// Threads parked, and threads running `enter` at all (with `condition` held).
    public private(set) var parked = 0
    public private(set) var threadsAlive = 0
    /// Counts pauses: work begun in one pause (a vCPU reading its own state)
    /// and finished in a later one is stale.
    public private(set) var pauseGeneration: UInt64 = 0

    public init(vcpus: [VCPU]) {
        self.vcpus = vcpus
    }

    /// Whether every live vCPU thread is parked (with `condition` held).
    public var allParked: Bool { parked == threadsAlive }

    // MARK: the controller (with `condition` held)

    /// A vCPU thread is about to start.
    public func threadStartedLocked() { threadsAlive += 1 }

    /// Asks every vCPU out of KVM_RUN and to park.
    public func requestPauseLocked() {
        pauseGeneration &+= 1
        pauseRequested = true
        for vcpu in vcpus { vcpu.requestExit() }
        condition.broadcast()
    }

    /// Waits until every live vCPU thread is parked (a thread that ends meanwhile counts out).
    public func waitUntilParkedLocked() {
        while parked < threadsAlive { condition.wait() }
    }

    /// Lets the parked vCPUs run again.
    public func resumeLocked() {
        pauseRequested = false
        for vcpu in vcpus { vcpu.clearExitRequest() }
        condition.broadcast()
    }

    /// The vCPU threads end (at their next `enter`, or at once when parked).
    public func stopLocked() {
        isStopping = true
        for vcpu in vcpus { vcpu.requestExit() }
        condition.broadcast()
    }

    // MARK: a vCPU thread

    /// What a vCPU thread does next.
    public enum Entry: Sendable {
        /// Enter KVM_RUN.
        case run
        /// End the thread.
        case end
    }

    /// Called by vCPU thread `index` before each KVM_RUN (without
    /// `condition`). While a pause is requested it first completes an exit in
    /// flight (`exitInFlight`, set by the VMM after an MMIO or port-I/O exit:
    /// `VCPU.leavesInstructionInFlight`), then parks until resumed or stopped.
    /// `racedExit` gets what completing the exit returned when it was not
    /// simply complete: an exit (a resume raced the pause and the guest ran;
    /// handle it as usual, updating `exitInFlight`) or an error; false ends
    /// the thread. `whileParked` runs with `condition` held each time the
    /// parked thread wakes; it returns true when it did something (the gate
    /// looks again at once) and false to wait.
    public func enter(_ index: Int, exitInFlight: inout Bool, racedExit: (Result<VCPUExit, KVMError>, inout Bool) -> Bool,
                      whileParked: () -> Bool) -> Entry {
        condition.lock()
        while true {
            if isStopping {
                condition.unlock()
                return .end
            }
            guard pauseRequested else {
                condition.unlock()
                return .run
            }
            if exitInFlight {
                condition.unlock()
                exitInFlight = false
                do {
                    if let exit = try vcpus[index].completeInFlightExit(), !racedExit(.success(exit), &exitInFlight) { return .end }
                } catch {
                    _ = racedExit(.failure(error), &exitInFlight)
                    return .end
                }
                condition.lock()
                continue
            }
            parked += 1
            condition.broadcast()
            while pauseRequested && !isStopping {
                if !whileParked() { condition.wait() }
            }
            parked -= 1
        }
    }

    /// The calling vCPU thread ends.
    public func threadEnded() {
        condition.lock()
        threadsAlive -= 1
        condition.broadcast()
        condition.unlock()
    }
}
