import Foundation
import Synchronization

/// A thread that sends a heartbeat frame at a fixed interval until stopped or
/// until a send fails (the reader of the connection notices the failure).
public final class Heartbeats: Sendable {
    private let done = Atomic<Bool>(false)

    private init() {}

    /// The interval to send at for a side whose own timeout is `timeout`: a
    /// quarter of it, but at most 50 ms, so that a peer with a shorter timeout
    /// (down to 200 ms) still hears from this side in time. The hosts' timeouts
    /// need not match.
    public static func interval(for timeout: Duration) -> Duration {
        min(timeout / 4, .milliseconds(50))
    }

    /// Starts sending on `link` every `interval`.
    public static func start(on link: FrameConnection, every interval: Duration, name: String) -> Heartbeats {
        let heartbeats = Heartbeats()
        let seconds = Double(interval.milliseconds) / 1000
        let thread = Thread {
            var count: UInt64 = 0
            while !heartbeats.done.load(ordering: .relaxed) {
                Thread.sleep(forTimeInterval: seconds)
                count += 1
                do { try link.send(Frame(.heartbeat, sequence: count)) } catch { return }
            }
        }
        thread.name = name
        thread.start()
        return heartbeats
    }

    public func stop() { done.store(true, ordering: .relaxed) }
}
