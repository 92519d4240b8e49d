import Foundation

/// SIGINT and SIGTERM, handled once per process: each runs the current stop
/// action. (Cancelling a dispatch signal source and making another for the same
/// signal races with libdispatch's own bookkeeping and can lose the signal, so
/// the sources are made once and only the action changes.)
final class StopSignals: @unchecked Sendable {
    static let shared = StopSignals()

    private let lock = NSLock()
    private var action: @Sendable (Int32) -> Void = { _ in }
    private var sources: [DispatchSourceSignal] = []

    private init() {
        let queue = DispatchQueue(label: "stop-signals")
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [unowned self] in
                let current = lock.withLock { action }
                current(number)
            }
            source.resume()
            sources.append(source)
        }
    }

    /// What the next SIGINT or SIGTERM does.
    func onStop(_ action: @escaping @Sendable (Int32) -> Void) {
        lock.withLock { self.action = action }
    }
}
