import Foundation
import Logging
import Synchronization
import Understudy

/// Runs one machine in the foreground with its console on standard output until
/// the guest ends or the process gets SIGINT or SIGTERM; what
/// `understudy-primary --unprotected` does.
public enum ConsoleRunner {
    /// How to get the machine.
    public enum Source: Sendable {
        /// Boot this configuration.
        case boot(MachineConfiguration)
        /// Resume a snapshot file written by `MachineSnapshot.write`, with these host devices.
        case snapshot(path: String, network: NetworkConfiguration?, disk: DiskConfiguration?)
        /// Take the guest over from a standby's committed replica (the primary
        /// is lost; `fence`, when fencing, holds the guest's key won for it).
        case takeover(StandbyReceiver, StandbyRunner.Options, fence: Fence?)
    }

    /// Sends what arrives on standard input to the guest's serial port and raises
    /// the doorbell's serial-input event, from a background thread, until EOF.
    static func forwardStandardInput(to machine: Machine) {
        let thread = Thread { [weak machine] in
            let input = FileHandle.standardInput
            while true {
                let data = input.availableData
                guard !data.isEmpty, let machine else { return }
                machine.serial.receive([UInt8](data))
                machine.doorbell.raise(Doorbell.Event.serialInput)
            }
        }
        thread.start()
    }

    /// Whether a standby protects the machine.
    public enum Protection: Sendable {
        case unprotected
        /// Replicate to this standby (`devices` and `mac` are filled in from the machine).
        case standby(PrimaryConfiguration)
    }

    /// How the process goes on as a standby once it handed its guest over in
    /// a planned switchover (`understudy-ctl switchover`), and where it is
    /// controlled from.
    public struct Hosting: Sendable {
        /// Answers `understudy-ctl` (nil: no control socket).
        public var control: ControlServer?
        /// This host's standby side after a switchover: its listening
        /// address, tap, disk and arbiter (`reprotect` is filled in with the
        /// address the guest is handed to). Nil: no switchover from here.
        public var standby: StandbyRunner.Options?
        /// The socket to listen on as standby, kept from an earlier standby
        /// phase of this process (nil: bind `standby.listen`).
        var listener: TCPListener?
        /// When the process started (for status).
        public var started: ContinuousClock.Instant

        public init(control: ControlServer? = nil, standby: StandbyRunner.Options? = nil, started: ContinuousClock.Instant = .now) {
            self.control = control
            self.standby = standby
            self.started = started
        }
    }

    /// How one phase as the guest's runner ended.
    enum Outcome {
        /// The process is done: its exit status.
        case exited(Int32)
        /// The guest was handed over: serve as its standby with this receiver.
        case handedOver(StandbyReceiver, StandbyRunner.Options)
    }

    /// Runs to the end. Returns the process exit status: the guest's exit code
    /// (clamped to 0...255), 0 after a signal, 1 when the machine failed.
    /// After a planned switchover (with `hosting.standby`) the process goes on
    /// as the guest's standby (`StandbyRunner.run`), until that ends.
    ///
    /// Console bytes and network frames go through one `OutputBuffer`: with a
    /// standby they are released when their checkpoint is acknowledged; without
    /// one they pass straight through.
    ///
    /// With `saveOnStop`, a stop signal (SIGTERM, SIGINT) pauses the guest and
    /// writes a snapshot there (`MachineSnapshot`) before the machine stops: a
    /// later run with `.snapshot` continues it.
    public static func run(_ source: Source, protection: Protection = .unprotected, saveOnStop: String? = nil,
                           hosting: Hosting = Hosting(), logger: Logger) throws(MachineError) -> Int32 {
        switch try runGuest(source, protection: protection, saveOnStop: saveOnStop, hosting: hosting, logger: logger) {
        case .exited(let status):
            return status
        case .handedOver(let receiver, let options):
            return try StandbyRunner.run(options, receiver: receiver, hosting: hosting, logger: logger)
        }
    }

    /// One phase of running the guest here (`run`).
    static func runGuest(_ source: Source, protection: Protection, saveOnStop: String? = nil,
                         hosting: Hosting, logger: Logger) throws(MachineError) -> Outcome {
        let world = WorldOutput(logger: logger)
        // Output is held from the start when a standby is to protect the guest,
        // except after a takeover: that guest already serves the world, and is
        // protected again once a standby is reached.
        var holding = false
        if case .standby = protection { holding = true }
        if case .takeover = source { holding = false }
        let output = OutputBuffer(protected: holding) { kind, bytes in
            world.release(kind, bytes)
        }
        let console: @Sendable ([UInt8]) -> Void = { bytes in bytes.withUnsafeBytes { output.hold(.console, $0) } }
        let machine: Machine
        switch source {
        case .boot(let configuration):
            machine = try Machine(configuration: configuration, console: console, logger: logger)
            logger.info(configuration.linux == nil ? "booting" : "booting a Linux kernel",
                        metadata: ["vcpus": "\(configuration.vcpuCount)", "memory": "\(configuration.memorySize >> 20) MiB",
                                   "cmdline": "\(configuration.linux?.commandLine ?? configuration.commandLine)"])
        case .snapshot(let path, let network, let disk):
            let (state, memory) = try MachineSnapshot.read(from: path)
            machine = try Machine(restoring: state, memory: memory, network: network, disk: disk,
                                  console: console, logger: logger)
            logger.info("resuming snapshot", metadata: ["path": "\(path)", "vcpus": "\(machine.vcpus.count)"])
        case .takeover(let receiver, let options, _):
            machine = try Failover.activate(receiver, options: options, world: world, console: console, logger: logger)
        }
        world.tap = machine.net?.tap
        machine.net?.egress = { output.hold(.network, $0) }

        let primary: ReplicationPrimary?
        if case .standby(var configuration) = protection {
            configuration.platform = try machine.platform
            configuration.devices = []
            if let net = machine.net {
                configuration.devices.insert(.network)
                configuration.mac = net.mac
            }
            if let block = machine.block {
                configuration.devices.insert(.disk)
                let log = DiskWriteLog(fd: block.fd, size: block.sectors * UInt64(VirtioBlock.sectorSize),
                                       epochBudget: configuration.diskEpochBudget)
                block.writeHook = { offset, bytes in log.write(offset: offset, bytes) }
                block.flushHook = { log.flush() }
                configuration.disk = log
            }
            let replication = ReplicationPrimary(machine: machine, output: output, configuration: configuration, logger: logger)
            replication.hostFaultHandler = { [weak machine] reason in
                logger.critical("stopping the guest on this host: \(reason)")
                machine?.requestStop()
            }
            primary = replication
        } else {
            primary = nil
        }
        // With an arbiter, output leaves only while this copy's grant is
        // certainly valid; a copy that was taken over from stops its guest.
        var won: Fence?
        if case .takeover(_, _, let fence) = source { won = fence }
        let fence = primary?.configuration.fence ?? won
        fence?.start(gating: output) { [weak machine] _ in machine?.requestStop() }
        // Control: status any time; a switchover hands the guest to the
        // standby and makes this process that standby.
        let handedOver = Mutex<(StandbyReceiver, StandbyRunner.Options)?>(nil)
        hosting.control?.handler = { [weak machine] request in
            switch request {
            case .status:
                return ControlReply(ok: true, status: hostStatus(primary, fence: fence, output: output, hosting: hosting))
            case .stop:
                StopSignals.shared.requestStop()
                return ControlReply(ok: true, message: "stopping", status: hostStatus(primary, fence: fence, output: output, hosting: hosting))
            case .switchover:
                guard let primary, let machine else { return ControlReply(ok: false, message: "no standby protects this guest: nothing to switch over to") }
                do {
                    let (receiver, options, report) = try switchOver(primary, hosting: hosting, logger: logger)
                    handedOver.withLock { $0 = (receiver, options) }
                    machine.requestStop()
                    return ControlReply(ok: true, message: "handed over to \(primary.configuration.standby) at checkpoint \(report.checkpoint) in \(report.pause.milliseconds) ms\(report.accepted ? "" : " (unconfirmed)"); this host is now its standby on \(options.listen)")
                } catch {
                    return ControlReply(ok: false, message: "\(error)", status: hostStatus(primary, fence: fence, output: output, hosting: hosting))
                }
            }
        }
        // A signal ends replication in order first (the standby is told goodbye and
        // does not take over), then stops the machine.
        let status = try runToEnd(machine, logger: logger, onSignal: {
            primary?.stop(reason: "the primary was told to stop")
            if let saveOnStop { save(machine, to: saveOnStop, logger: logger) }
        }) { () throws(MachineError) in
            do { try primary?.start() } catch { throw .invalidConfiguration("\(error)") }
        } stopping: { reason in
            primary?.end(after: reason)
            // The key goes (the standby may take over at once) unless another copy already has it.
            fence?.stop(release: true)
        }
        hosting.control?.handler = { _ in ControlReply(ok: false, message: "between roles; ask again") }
        if let (receiver, options) = handedOver.withLock({ $0 }) { return .handedOver(receiver, options) }
        return .exited(fence?.isSuperseded == true ? 1 : status)
    }

    /// The status `understudy-ctl status` shows for a guest running here.
    static func hostStatus(_ primary: ReplicationPrimary?, fence: Fence?, output: OutputBuffer, hosting: Hosting) -> HostStatus {
        let uptime = ContinuousClock.now - hosting.started
        guard let primary else { return HostStatus(unprotectedWith: fence, output: output, uptime: uptime) }
        return HostStatus(primary: primary, uptime: uptime, switchoverListen: hosting.standby?.listen)
    }

    /// A planned switchover: this host's standby side listens first (so the
    /// new primary reaches it at once), then the guest is handed over.
    static func switchOver(_ primary: ReplicationPrimary, hosting: Hosting,
                           logger: Logger) throws -> (StandbyReceiver, StandbyRunner.Options, ReplicationPrimary.HandoverReport) {
        guard var options = hosting.standby else {
            throw MachineError.invalidConfiguration("this host has no address to serve as the standby from after a switchover (start it with --listen)")
        }
        options.reprotect = primary.configuration.standby
        let receiver = try StandbyRunner.receiver(options, listener: hosting.listener, logger: logger)
        let here = SocketAddress(host: options.listen.host, port: receiver.listener.port)
        options.listen = here
        let report = try primary.handOver(standby: here)
        return (receiver, options, report)
    }

    /// Pauses `machine` and writes its snapshot to `path`, saying how it went.
    static func save(_ machine: Machine, to path: String, logger: Logger) {
        let started = ContinuousClock.now
        do {
            try machine.pause()
            try MachineSnapshot.write(machine, to: path)
            logger.notice("snapshot written", metadata: ["path": "\(path)", "time": "\(ContinuousClock.now - started)"])
        } catch {
            logger.error("cannot write the snapshot to \(path): \(error)")
        }
    }

    /// Starts `machine` with signal handling and standard input forwarded,
    /// calls `started` once it runs, waits for it to stop, calls `stopping`.
    static func runToEnd(_ machine: Machine, logger: Logger, onSignal: @escaping @Sendable () -> Void = {},
                         started: () throws(MachineError) -> Void = {},
                         stopping: (StopReason) -> Void = { _ in }) throws(MachineError) -> Int32 {
        StopSignals.shared.onStop { number in
            logger.info("signal \(number): stopping the machine")
            onSignal()
            machine.requestStop()
        }
        defer { StopSignals.shared.hold() }

        try machine.start()
        do {
            try started()
        } catch {
            machine.requestStop()
            _ = machine.waitUntilStopped()
            throw error
        }
        forwardStandardInput(to: machine)
        let reason = machine.waitUntilStopped() ?? .requested
        stopping(reason)
        switch reason {
        case .guestExit(let code):
            logger.info("guest exited", metadata: ["code": "\(code)"])
            return Int32(min(code, 255))
        case .requested:
            logger.info("machine stopped")
            return 0
        default:
            logger.error("machine failed: \(reason)")
            return 1
        }
    }
}
