import Foundation
import Logging
import Synchronization
import Understudy

/// Runs the standby host: holds the replica a primary streams, and when the
/// primary is lost takes the guest over and runs it in the foreground, its
/// console on standard output; what `understudy-standby` does.
public enum StandbyRunner {
    /// What the standby offers and watches.
    public struct Options: Sendable {
        public var listen: SocketAddress
        public var heartbeatTimeout: Duration
        /// The tap the guest's card uses after failover (its MAC comes from the primary).
        public var tap: String?
        public var disk: DiskConfiguration?
        /// The arbiter a takeover must win the guest's key from (nil: none,
        /// and a partition can leave two active copies).
        public var fencing: StandbyFencing?

        public init(listen: SocketAddress, heartbeatTimeout: Duration = StandbyConfiguration.defaultHeartbeatTimeout,
                    tap: String? = nil, disk: DiskConfiguration? = nil, fencing: StandbyFencing? = nil) {
            self.listen = listen
            self.heartbeatTimeout = heartbeatTimeout
            self.tap = tap
            self.disk = disk
            self.fencing = fencing
        }
    }

    /// Opens the disk image and binds the listening socket (so errors come before anything runs).
    public static func receiver(_ options: Options, logger: Logger) throws -> StandbyReceiver {
        var devices: Hello.Devices = []
        if options.tap != nil { devices.insert(.network) }
        var disk: ReplicaDisk?
        if let path = options.disk?.path {
            devices.insert(.disk)
            disk = try ReplicaDisk(path: path)
        }
        var configuration = StandbyConfiguration(listen: options.listen, heartbeatTimeout: options.heartbeatTimeout, devices: devices, disk: disk)
        let tap = options.tap, fencing = options.fencing
        configuration.preflight = { hello in
            try Machine.preflight(hello, tap: tap)
            try fencing?.observeSession()
        }
        return try StandbyReceiver(configuration: configuration, logger: logger)
    }

    /// Serves until the primary says goodbye (0), a signal arrives (0), or the
    /// primary is lost: then fails over and returns when the guest ends (its exit code).
    public static func run(_ options: Options, receiver: StandbyReceiver, logger: Logger) throws(MachineError) -> Int32 {
        let stopped = Mutex<Bool>(false)
        StopSignals.shared.onStop { number in
            logger.info("signal \(number): the standby stops without taking over")
            stopped.withLock { $0 = true }
            receiver.stop()
        }
        let outcome = receiver.run()
        // A takeover needs the guest's key: the primary's lease must have run out.
        var fence: Fence?
        if case .primaryLost = outcome, let fencing = options.fencing {
            fence = fencing.awaitTakeover(logger: logger, giveUp: { stopped.withLock { $0 } })
            if fence == nil { return stopped.withLock { $0 } ? 0 : 1 }
        }
        StopSignals.shared.onStop { _ in }
        switch outcome {
        case .stopped:
            return 0
        case .goodbye:
            logger.info("the primary ended the session; nothing to take over")
            return 0
        case .primaryLost:
            let world = WorldOutput(logger: logger)
            let machine = try Failover.activate(receiver, options: options, world: world, logger: logger)
            // The new active copy keeps the key renewed. (Its output is not
            // gated on it yet: it has no output buffer after a takeover.)
            fence?.start(gating: nil) { [weak machine] _ in machine?.requestStop() }
            defer { fence?.stop(release: true) }
            return try ConsoleRunner.runToEnd(machine, logger: logger)
        }
    }
}
