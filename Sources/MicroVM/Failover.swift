import Foundation
import Logging
import Understudy

/// Turns a standby's committed replica into the running guest: builds the
/// machine on the replica's memfd (no copy of guest RAM), attaches the tap,
/// announces the guest's MAC and addresses, releases the last committed
/// epoch's output, and leaves the machine ready to start. Each step is timed
/// and logged.
enum Failover {
    /// `console` is where the machine's console goes from now on (the world,
    /// or an output buffer when the guest is protected again).
    static func activate(_ receiver: StandbyReceiver, options: StandbyRunner.Options, world: WorldOutput,
                         console: @escaping @Sendable ([UInt8]) -> Void, logger: Logger) throws(MachineError) -> Machine {
        guard let replica = receiver.replica, let sequence = replica.committedSequence, let hello = receiver.hello else {
            throw .wrongState("no committed checkpoint to take over from")
        }
        let clock = ContinuousClock()
        let began = clock.now
        let sinceCommit = receiver.lastCommit.map { began - $0 } ?? .zero
        let network = options.tap.map { NetworkConfiguration(tap: $0, mac: hello.mac, keepsTapOpen: true) }
        let machine = try Machine(restoring: replica.state, memory: replica.memory, network: network, disk: options.disk,
                                  console: console, logger: logger)
        world.tap = machine.net?.tap
        let built = clock.now

        var announced = 0
        if let tap = machine.net?.tap {
            for frame in Announcement.frames(mac: hello.mac, addresses: receiver.guestAddresses) {
                frame.withUnsafeBytes { _ = tap.write($0) }
                announced += 1
            }
        }
        let announcedAt = clock.now

        // The output of the committed epochs the primary may not have released
        // before it died (usually just the last one) goes out (again) now.
        var released = 0
        var releasedBytes = 0
        for record in receiver.unreleasedOutput.flatMap(\.output) {
            world.release(record.kind, record.bytes)
            released += 1
            releasedBytes += record.bytes.count
        }
        let releasedAt = clock.now
        func ms(_ duration: Duration) -> String { String(format: "%.2f ms", Double(duration.components.attoseconds) / 1e15 + Double(duration.components.seconds) * 1e3) }
        logger.notice("taking over from checkpoint \(sequence)", metadata: [
            "since-last-commit": "\(ms(sinceCommit))",
            "build-and-attach": "\(ms(built - began))",
            "announce": "\(ms(announcedAt - built)) (\(announced) frames, \(receiver.guestAddresses.count) addresses)",
            "release-output": "\(ms(releasedAt - announcedAt)) (\(released) items, \(releasedBytes) bytes)",
        ])
        logger.info("released the output of the unacknowledged epochs", metadata: [
            "bytes": "\(releasedBytes)", "items": "\(released)",
            "epochs": "\(receiver.unreleasedOutput.map { String($0.sequence) }.joined(separator: ","))"])
        return machine
    }
}
