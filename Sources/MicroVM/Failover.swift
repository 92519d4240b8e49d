import Foundation
import Logging
import Understudy

/// Turns a standby's committed replica into the running guest: builds the
/// machine on the replica's memfd (no copy of guest RAM), attaches the tap,
/// announces the guest's MAC and addresses, releases the output the old
/// primary had not, and leaves the machine ready to start (the steps of
/// Understudy's `TakeoverPoint`). Each step is timed and logged.
enum Failover {
    /// `console` is where the machine's console goes from now on (the world,
    /// or an output buffer when the guest is protected again).
    static func activate(_ receiver: StandbyReceiver, options: StandbyRunner.Options, world: WorldOutput,
                         console: @escaping @Sendable ([UInt8]) -> Void, logger: Logger) throws(MachineError) -> Machine {
        let point: TakeoverPoint
        do { point = try TakeoverPoint(receiver) } catch { throw .wrongState("\(error)") }
        let clock = ContinuousClock()
        let began = clock.now
        // The announcement first: what the world sends from now on comes
        // here and waits on the tap for the guest (a request sent during the
        // takeover is not lost on the old host's tap).
        var announced = 0
        if let tap = options.tap {
            announced = try TapPool.shared.announce(point.announcement, on: tap, keepingQueuedFrames: receiver.announcedAtHandover)
        }
        let announcedAt = clock.now
        let network = options.tap.map { NetworkConfiguration(tap: $0, mac: point.hello.mac, keepsTapOpen: true) }
        let machine = try Machine(restoring: point.state, memory: point.memory, network: network, disk: options.disk,
                                  console: console, logger: logger)
        world.tap = machine.net?.tap
        let built = clock.now

        // After the announcement: the world's answers to it come here.
        var releasedBytes = 0
        for record in point.unreleasedOutput {
            world.release(record.kind, record.bytes)
            releasedBytes += record.bytes.count
        }
        let releasedAt = clock.now
        func ms(_ duration: Duration) -> String { String(format: "%.2f ms", Double(duration.components.attoseconds) / 1e15 + Double(duration.components.seconds) * 1e3) }
        logger.notice("taking over from checkpoint \(point.sequence)", metadata: [
            "since-last-commit": "\(ms(point.sinceLastCommit))",
            "announce": "\(ms(announcedAt - began)) (\(announced) frames, \(point.addresses.count) addresses)",
            "build-and-attach": "\(ms(built - announcedAt))",
            "release-output": "\(ms(releasedAt - built)) (\(point.unreleasedOutput.count) items, \(releasedBytes) bytes)",
        ])
        logger.info("released the output of the unacknowledged epochs", metadata: [
            "bytes": "\(releasedBytes)", "items": "\(point.unreleasedOutput.count)",
            "epochs": "\(point.unreleasedEpochs.map(String.init).joined(separator: ","))"])
        return machine
    }
}
