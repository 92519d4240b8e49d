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
            var seen = primary.statistics.count
            var wire = primary.wireTotals
            while done.wait(timeout: .now() + .milliseconds(interval.milliseconds)) == .timedOut {
                let all = primary.statistics
                let fresh = all.count >= seen ? Array(all.dropFirst(seen)) : all
                seen = all.count
                let totals = primary.wireTotals
                logger.info("\(line(fresh, bytes: totals.bytes - wire.bytes, checkpoints: totals.checkpoints - wire.checkpoints))")
                wire = totals
            }
        }
        thread.name = "understudy-status"
        thread.start()
    }

    func stop() { done.signal() }

    func line(_ epochs: [EpochStatistics], bytes: Int, checkpoints: Int) -> String {
        let seconds = Double(interval.milliseconds) / 1000
        let pauses = epochs.map { Int($0.pause.components.attoseconds / 1_000_000_000_000) + Int($0.pause.components.seconds) * 1_000_000 }.sorted()
        let p50 = pauses.isEmpty ? 0 : pauses[pauses.count / 2]
        let p99 = pauses.isEmpty ? 0 : pauses[pauses.count * 99 / 100]
        let output = primary.output
        return "status: \(primary.status.rawValue.uppercased()), " +
            String(format: "%.0f checkpoints/s", Double(epochs.count) / seconds) +
            ", pause p50 \(p50) µs p99 \(p99) µs, \(checkpoints > 0 ? bytes / checkpoints : 0) bytes/checkpoint, " +
            "\(epochs.filter(\.stretched).count) stretched, held output \(output.bytesHeld) bytes " +
            "(oldest \(output.oldestAge.milliseconds) ms, longest held \(output.maximumAge.milliseconds) ms), \(output.dropped) frames dropped"
    }
}
