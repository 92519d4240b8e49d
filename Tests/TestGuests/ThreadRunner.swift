import Foundation
import Synchronization

/// Runs a closure on its own OS thread (as a VMM runs a vCPU) and lets the
/// caller wait for its result.
public final class ThreadRunner<Result: Sendable>: Sendable {
    private let result = Mutex<Swift.Result<Result, any Error>?>(nil)
    private let done = DispatchSemaphore(value: 0)

    public init(_ body: @escaping @Sendable () throws -> Result) {
        let thread = Thread { [self] in
            let outcome = Swift.Result { try body() }
            result.withLock { $0 = outcome }
            done.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Waits for the thread's result (rethrowing its error).
    public func join() throws -> Result {
        done.wait()
        done.signal()
        return try result.withLock { $0! }.get()
    }
}
