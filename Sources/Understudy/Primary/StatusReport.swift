import Foundation
import Logging

/// A periodic status line from the primary, for operators: whether the guest
/// is protected, checkpoints per second, pause p50/p99, bytes per checkpoint,
/// and held output (bytes, the oldest item's age, the longest any item was
/// held, frames dropped at the bound).
final class StatusReport: @unchecked Sendable {
    private let primary: ReplicationPrimary
    private let interval: Duration
    private let logger: Logger
    private let done = DispatchSemaphore(value: 0)

    init(primary: ReplicationPrimary, interval: Duration, logger: Logger) {
        self.primary = primary
        self.interval = interval
        self.logger = logger
    }

    func start() {
        let thread = Thread { [self] in
            var totals = primary.totals
            var wire = primary.wireTotals
            while done.wait(timeout: .now() + .milliseconds(interval.milliseconds)) == .timedOut {
                let nowTotals = primary.totals, nowWire = primary.wireTotals
                let output = primary.output
                let text = Self.line(status: primary.status, epochs: nowTotals - totals, seconds: Double(interval.milliseconds) / 1000,
                                     bytes: nowWire.bytes - wire.bytes, checkpoints: nowWire.checkpoints - wire.checkpoints,
                                     held: (output.bytesHeld, output.oldestAge, output.maximumAge, output.dropped, output.consoleBytesDropped))
                    + "; " + (primary.configuration.fence?.status ?? Fence.unfencedWarning)
                logger.info("\(text)")
                (totals, wire) = (nowTotals, nowWire)
            }
        }
        thread.name = "understudy-status"
        thread.start()
    }

    func stop() { done.signal() }

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
