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

    /// Opens the disk image and binds the listening socket (so errors come
    /// before anything runs), or takes over `listener`, bound earlier.
    public static func receiver(_ options: Options, listener: TCPListener? = nil, logger: Logger) throws -> StandbyReceiver {
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
            try Machine.preflight(hello, tap: tap, keepingTap: true)
            try fencing?.observeSession()
        }
        if let tap {
            configuration.announceAtHandover = { frames in _ = try? TapPool.shared.announce(frames, on: tap) }
        }
        return try StandbyReceiver(configuration: configuration, listener: listener, logger: logger)
    }

    /// Serves until the primary says goodbye (0), a signal arrives (0), or the
    /// primary is lost or hands the guest over: then takes over and returns
    /// when the guest ends (its exit code). A guest handed over from here
    /// again (a planned switchover back) makes this process its standby once
    /// more, and so on.
    public static func run(_ options: Options, receiver: StandbyReceiver, hosting: ConsoleRunner.Hosting = .init(),
                           logger: Logger) throws(MachineError) -> Int32 {
        var phase = (options: options, receiver: receiver)
        while true {
            let next: Takeover
            switch serve(phase.options, receiver: phase.receiver, hosting: hosting, logger: logger) {
            case .exit(let status): return status
            case .takeOver(let takeover): next = takeover
            }
            var guestHosting = hosting
            guestHosting.standby = next.standby
            guestHosting.listener = phase.receiver.listener
            switch try ConsoleRunner.runGuest(.takeover(phase.receiver, phase.options, fence: next.fence), protection: next.protection,
                                              hosting: guestHosting, logger: logger) {
            case .exited(let status):
                return status
            case .handedOver(let receiver, let options):
                phase = (options, receiver)
            }
        }
    }

    /// What a takeover runs the guest with.
    private struct Takeover {
        var fence: Fence?
        var protection: ConsoleRunner.Protection
        /// This host's standby side should the guest be switched over again.
        var standby: Options
    }

    /// How a standby phase ended.
    private enum PhaseEnd {
        /// No takeover: the process exits with this status.
        case exit(Int32)
        case takeOver(Takeover)
    }

    /// One standby phase.
    private static func serve(_ options: Options, receiver: StandbyReceiver, hosting: ConsoleRunner.Hosting,
                              logger: Logger) -> PhaseEnd {
        hosting.control?.handler = { request in
            let status = HostStatus(standby: receiver, fencing: options.fencing, uptime: .now - hosting.started)
            switch request {
            case .status:
                return ControlReply(ok: true, status: status)
            case .stop:
                StopSignals.shared.requestStop()
                return ControlReply(ok: true, message: "stopping without taking over", status: status)
            case .switchover:
                return ControlReply(ok: false, message: "this host is the standby: ask the primary (\(status.peer ?? "not connected")) for the switchover",
                                    status: status)
            }
        }
        let stopped = Mutex<Bool>(false)
        StopSignals.shared.onStop { number in
            logger.info("signal \(number): the standby stops without taking over")
            stopped.withLock { $0 = true }
            receiver.stop()
        }
        let outcome = receiver.run()
        hosting.control?.handler = { _ in ControlReply(ok: false, message: "taking the guest over; ask again") }
        // A takeover needs the guest's key: the primary's lease must have run
        // out (after a handover the primary released it).
        var fence: Fence?
        var handover: Handover?
        var takesOver = false
        switch outcome {
        case .handedOver(let given): (handover, takesOver) = (given, true)
        case .primaryLost: takesOver = true
        case .goodbye, .stopped: break
        }
        if takesOver, let fencing = options.fencing {
            fence = fencing.awaitTakeover(logger: logger, giveUp: { stopped.withLock { $0 } })
            if fence == nil { return .exit(stopped.withLock { $0 } ? 0 : 1) }
        }
        // From here a stop signal is kept for the machine that takes over (it
        // stops it at once); one that came before, as the primary was lost,
        // stopped this standby: nothing is taken over.
        StopSignals.shared.hold()
        if takesOver, stopped.withLock({ $0 }) {
            logger.notice("the standby was stopped as its primary was lost: the guest is not taken over here")
            fence?.stop(release: true)
            return .exit(0)
        }
        switch outcome {
        case .stopped:
            return .exit(0)
        case .goodbye:
            logger.info("the primary ended the session; nothing to take over")
            return .exit(0)
        case .primaryLost, .handedOver:
            // The new active copy holds the key and releases output only while
            // its grant is certainly valid; with `reprotect` (or the standby a
            // handover names) it is a primary again, with the epoch the
            // previous primary used.
            var protection = ConsoleRunner.Protection.unprotected
            if let address = handover?.standby ?? options.reprotect {
                var engine = EngineConfiguration()
                if let micros = receiver.hello?.epochMicroseconds, Duration.microseconds(Int(micros)) >= EngineConfiguration.minimumEpoch {
                    engine.epoch = .microseconds(Int(micros))
                }
                var configuration = PrimaryConfiguration(standby: address, engine: engine, heartbeatTimeout: options.heartbeatTimeout)
                configuration.initialHold = .zero
                configuration.statusInterval = options.statusInterval
                configuration.fence = fence
                protection = .standby(configuration)
                logger.notice("the guest will be protected again by the standby at \(address) once it answers")
            }
            return .takeOver(Takeover(fence: fence, protection: protection, standby: options))
        }
    }
}
