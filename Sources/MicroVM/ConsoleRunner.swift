import Foundation
import Logging
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

    /// Runs to the end. Returns the process exit status: the guest's exit code
    /// (clamped to 0...255), 0 after a signal, 1 when the machine failed.
    ///
    /// Console bytes and network frames go through one `OutputBuffer`: with a
    /// standby they are released when their checkpoint is acknowledged; without
    /// one they pass straight through.
    ///
    /// With `saveOnStop`, a stop signal (SIGTERM, SIGINT) pauses the guest and
    /// writes a snapshot there (`MachineSnapshot`) before the machine stops: a
    /// later run with `.snapshot` continues it.
    public static func run(_ source: Source, protection: Protection = .unprotected, saveOnStop: String? = nil,
                           logger: Logger) throws(MachineError) -> Int32 {
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
        return fence?.isSuperseded == true ? 1 : status
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
