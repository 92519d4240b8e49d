import Foundation
import Logging
import Synchronization

/// Replication's recent rates, over the last few seconds (`ReplicationPrimary.rates`).
public struct ReplicationRates: Sendable, Equatable {
    /// The window the figures cover.
    public var window: Duration
    public var checkpointsPerSecond: Double
    /// Bytes on the wire per second.
    public var bytesPerSecond: Double
    public var pauseP50Microseconds: Int
    public var pauseP99Microseconds: Int
}

/// Samples the primary's totals every second, keeping a few seconds of them
/// for `rates`, and, with an interval, writes a status line for operators:
/// whether the guest is protected, checkpoints per second, pause p50/p99,
/// bytes per checkpoint, and held output (bytes, the oldest item's age, the
/// longest any item was held, frames dropped at the bound).
final class StatusReport: @unchecked Sendable {
    /// Seconds of samples kept for `rates`.
    static let window = 5
    private let primary: ReplicationPrimary
    private let interval: Duration?
    private let logger: Logger
    private let done = DispatchSemaphore(value: 0)
    private typealias Sample = (at: ContinuousClock.Instant, totals: EpochTotals, wire: (bytes: Int, checkpoints: Int))
    private let samples = Mutex<[Sample]>([])

    init(primary: ReplicationPrimary, interval: Duration?, logger: Logger) {
        self.primary = primary
        self.interval = interval
        self.logger = logger
    }

    func start() {
        let thread = Thread { [self] in
            var logged = sample()
            samples.withLock { $0 = [logged] }
            while done.wait(timeout: .now() + .seconds(1)) == .timedOut {
                let now = sample()
                samples.withLock { $0 = Array(($0 + [now]).suffix(Self.window + 1)) }
                guard let interval, now.at - logged.at >= interval else { continue }
                let output = primary.output
                let seconds = Double((now.at - logged.at).milliseconds) / 1000
                let text = Self.line(status: primary.status, epochs: now.totals - logged.totals, seconds: seconds,
                                     bytes: now.wire.bytes - logged.wire.bytes, checkpoints: now.wire.checkpoints - logged.wire.checkpoints,
                                     held: (output.bytesHeld, output.oldestAge, output.maximumAge, output.dropped, output.consoleBytesDropped))
                    + "; " + (primary.configuration.fence?.status ?? Fence.unfencedWarning)
                logger.info("\(text)")
                logged = now
            }
        }
        thread.name = "understudy-status"
        thread.start()
    }

    func stop() { done.signal() }

    private func sample() -> Sample { (.now, primary.totals, primary.wireTotals) }

    /// Rates over the samples kept (nil until two are).
    var rates: ReplicationRates? {
        let kept = samples.withLock { $0 }
        guard let first = kept.first, let last = kept.last, last.at > first.at else { return nil }
        let seconds = Double((last.at - first.at).milliseconds) / 1000
        let epochs = last.totals - first.totals
        return ReplicationRates(window: last.at - first.at, checkpointsPerSecond: Double(epochs.epochs) / seconds,
                                bytesPerSecond: Double(last.wire.bytes - first.wire.bytes) / seconds,
                                pauseP50Microseconds: epochs.pauses.quantileMicroseconds(0.5),
                                pauseP99Microseconds: epochs.pauses.quantileMicroseconds(0.99))
    }

    /// One status line for an interval of `seconds` in which `epochs` were
    /// checkpointed and `bytes` went out in `checkpoints` checkpoints.
    static func line(status: ReplicationPrimary.Status, epochs: EpochTotals, seconds: Double, bytes: Int, checkpoints: Int,
                     held: (bytes: Int, oldest: Duration, longest: Duration, framesDropped: Int, consoleBytesDropped: Int)) -> String {
        "status: \(status.rawValue.uppercased()), " +
            String(format: "%.0f checkpoints/s", Double(epochs.epochs) / max(seconds, 0.001)) +
            ", pause p50 \(epochs.pauses.quantileMicroseconds(0.5)) µs p99 \(epochs.pauses.quantileMicroseconds(0.99)) µs, " +
            "\(checkpoints > 0 ? bytes / checkpoints : 0) bytes/checkpoint, \(epochs.stretched) stretched, \(epochs.throttled) throttled, held output \(held.bytes) bytes " +
            "(oldest \(held.oldest.milliseconds) ms, longest held \(held.longest.milliseconds) ms), \(held.framesDropped) frames dropped" +
            (held.consoleBytesDropped > 0 ? ", \(held.consoleBytesDropped) console bytes dropped" : "")
    }
}
