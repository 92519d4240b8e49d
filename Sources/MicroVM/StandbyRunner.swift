import Foundation
import Logging
import Synchronization
import Understudy

/// Runs the standby host: holds the replica a primary streams, and when the
/// primary is lost takes the guest over and runs it in the foreground, its
/// console on standard output (and, with `Options.reprotect`, protects it
/// again with a standby there); what `understudy-standby` does.
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
        /// After a takeover, protect the guest again with the standby at this
        /// address (usually the lost primary's host, once a standby runs there
        /// again): the guest keeps output commit's machinery, runs unprotected
        /// until that standby answers, then is copied to it and is protected.
        /// Nil: after a takeover the guest runs unprotected for good.
        public var reprotect: SocketAddress?
        /// Between status lines of a guest taken over and protected again.
        public var statusInterval: Duration?

        public init(listen: SocketAddress, heartbeatTimeout: Duration = StandbyConfiguration.defaultHeartbeatTimeout,
                    tap: String? = nil, disk: DiskConfiguration? = nil, fencing: StandbyFencing? = nil,
                    reprotect: SocketAddress? = nil) {
            self.listen = listen
            self.heartbeatTimeout = heartbeatTimeout
            self.tap = tap
            self.disk = disk
            self.fencing = fencing
            self.reprotect = reprotect
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
        // From here a stop signal is kept for the machine that takes over (it
        // stops it at once); one that came before, as the primary was lost,
        // stopped this standby: nothing is taken over.
        StopSignals.shared.hold()
        if case .primaryLost = outcome, stopped.withLock({ $0 }) {
            logger.notice("the standby was stopped as its primary was lost: the guest is not taken over here")
            fence?.stop(release: true)
            return 0
        }
        switch outcome {
        case .stopped:
            return 0
        case .goodbye:
            logger.info("the primary ended the session; nothing to take over")
            return 0
        case .primaryLost:
            // The new active copy holds the key and releases output only while
            // its grant is certainly valid; with `reprotect` it is a primary
            // again, with the epoch the lost primary used.
            var protection = ConsoleRunner.Protection.unprotected
            if let address = options.reprotect {
                var engine = EngineConfiguration()
                if let micros = receiver.hello?.epochMicroseconds, micros >= 1000 { engine.epoch = .microseconds(Int(micros)) }
                var configuration = PrimaryConfiguration(standby: address, engine: engine, heartbeatTimeout: options.heartbeatTimeout)
                configuration.initialHold = .zero
                configuration.statusInterval = options.statusInterval
                configuration.fence = fence
                protection = .standby(configuration)
                logger.notice("the guest will be protected again by the standby at \(address) once it answers")
            }
            return try ConsoleRunner.run(.takeover(receiver, options, fence: fence), protection: protection, logger: logger)
        }
    }
}
