import Foundation
import Synchronization

/// A client of the kvstore guest that keeps writing through partitions and
/// failovers and keeps the world's log: every reply it received, in order,
/// checked as it arrives for one consistent history.
///
/// Each round is `SET w<i> v<i*7>` then `INCR world`. The history is
/// consistent when every SET is answered `OK`, every INCR `VALUE n` with `n`
/// one above the last value seen (a reply that did not arrive may have been
/// counted: after a reconnect `n` may be two above, never lower, never
/// equal), and, at the end, every acknowledged key still reads back. A second
/// copy answering on the same connection, or a copy that serves an older
/// state, breaks one of these. When a reply does not come within `timeout`
/// seconds (scaled like every test wait) the client connects again, and keeps
/// trying while the guest is unreachable.
public final class KVStoreWorldClient: @unchecked Sendable {
    /// What the world received.
    public struct Log: Sendable {
        /// Rounds whose SET was acknowledged, in order.
        public var acknowledged: [Int] = []
        /// Every INCR reply, in the order received.
        public var counter: [Int] = []
        /// Connections made after the first (a reply timed out or the connection failed).
        public var reconnects = 0
        /// Breaks of the history (empty when it is one consistent history).
        public var inconsistencies: [String] = []
        /// Why the last connection was given up, for the record.
        public var lastFailure: String?
    }

    /// What the writing thread and the test share.
    private final class Shared: Sendable {
        let log = Mutex(Log())
        let stopping = Atomic<Bool>(false)
        /// When each reply arrived, in order.
        let replyTimes = Mutex<[ContinuousClock.Instant]>([])
    }

    private let shared = Shared()
    private let runner: ThreadRunner<Void>
    private let namespacePath: String, host: String, port: UInt16, timeout: Int

    /// Connects from the client namespace of `network` to the guest at
    /// `host:port` and starts writing.
    public init(network: TestNetwork, host: String = "10.77.0.2", port: UInt16 = 7000, timeout: Int = 5) throws {
        namespacePath = network.namespacePath
        self.host = host
        self.port = port
        self.timeout = timeout
        let first = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: host, port: port, timeout: timeout)
        let box = Mutex<NamespaceSocket?>(first)
        let shared = self.shared
        let namespacePath = network.namespacePath
        runner = ThreadRunner {
            var socket = box.withLock { $0.take() }
            var round = 0
            var reconnected = false        // since the last INCR reply: one INCR may have been lost
            while !shared.stopping.load(ordering: .relaxed) {
                guard let connection = socket else {
                    socket = try? NamespaceSocket.connect(namespacePath: namespacePath, host: host, port: port, timeout: timeout)
                    if socket != nil { shared.log.withLock { $0.reconnects += 1 }; reconnected = true } else { usleep(100_000) }
                    continue
                }
                round += 1
                do {
                    let set = try connection.command("SET w\(round) v\(round * 7)")
                    shared.replyTimes.withLock { $0.append(.now) }
                    shared.log.withLock { log in
                        if set == "OK" { log.acknowledged.append(round) } else { log.inconsistencies.append("SET w\(round) answered '\(set)'") }
                    }
                    let incr = try connection.command("INCR world")
                    shared.replyTimes.withLock { $0.append(.now) }
                    shared.log.withLock { log in
                        let last = log.counter.last ?? 0
                        guard incr.hasPrefix("VALUE "), let value = Int(incr.dropFirst(6)) else {
                            log.inconsistencies.append("INCR world answered '\(incr)'")
                            return
                        }
                        if value != last + 1 && !(reconnected && value == last + 2) {
                            log.inconsistencies.append("INCR world went from \(last) to \(value)")
                        }
                        log.counter.append(value)
                        reconnected = false
                    }
                } catch {
                    shared.log.withLock { $0.lastFailure = "\(error)" }
                    socket = nil
                }
            }
        }
    }

    /// The log so far.
    public var snapshot: Log { shared.log.withLock { $0 } }

    /// Replies received so far (two a round): what a test waits on.
    public var replies: Int { shared.log.withLock { $0.acknowledged.count + $0.counter.count } }

    /// The longest the client waited for a reply at any time between `start`
    /// and `end` (what the world saw of a switchover, say).
    public func longestWait(from start: ContinuousClock.Instant, to end: ContinuousClock.Instant) -> Duration {
        let times = shared.replyTimes.withLock { $0 }
        var longest = Duration.zero
        for (earlier, later) in zip(times, times.dropFirst()) where later >= start && earlier <= end {
            longest = max(longest, later - earlier)
        }
        return longest
    }

    /// Stops writing, reads every acknowledged key back (on a new connection)
    /// and returns the world's log. A key that reads back wrong, or that cannot
    /// be read, is an inconsistency.
    public func stop(readingBack: Bool = true) throws -> Log {
        shared.stopping.store(true, ordering: .relaxed)
        try runner.join()
        var result = snapshot
        guard readingBack else { return result }
        do {
            let socket = try NamespaceSocket.connect(namespacePath: namespacePath, host: host, port: port, timeout: timeout)
            for round in result.acknowledged {
                let value = try socket.command("GET w\(round)")
                if value != "VALUE v\(round * 7)" { result.inconsistencies.append("acknowledged SET w\(round) reads back as '\(value)'") }
            }
        } catch {
            result.inconsistencies.append("the acknowledged keys cannot be read back: \(error)")
        }
        return result
    }
}
