import Foundation
import Logging

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

    /// Runs to the end. Returns the process exit status: the guest's exit code
    /// (clamped to 0...255), 0 after a signal, 1 when the machine failed.
    public static func run(_ source: Source, logger: Logger) throws(MachineError) -> Int32 {
        let output = FileHandle.standardOutput
        let console: @Sendable ([UInt8]) -> Void = { bytes in output.write(Data(bytes)) }
        let machine: Machine
        switch source {
        case .boot(let configuration):
            machine = try Machine(configuration: configuration, console: console, logger: logger)
            logger.info("booting", metadata: ["vcpus": "\(configuration.vcpuCount)",
                                              "memory": "\(configuration.memorySize >> 20) MiB",
                                              "cmdline": "\(configuration.commandLine)"])
        case .snapshot(let path, let network, let disk):
            let (state, memory) = try MachineSnapshot.read(from: path)
            machine = try Machine(restoring: state, memory: memory, network: network, disk: disk,
                                  console: console, logger: logger)
            logger.info("resuming snapshot", metadata: ["path": "\(path)", "vcpus": "\(machine.vcpus.count)"])
        }

        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let queue = DispatchQueue(label: "signals")
        let sources = [SIGINT, SIGTERM].map { number in
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler {
                logger.info("signal \(number): stopping the machine")
                machine.requestStop()
            }
            source.resume()
            return source
        }
        defer { sources.forEach { $0.cancel() } }

        try machine.start()
        forwardStandardInput(to: machine)
        let reason = machine.waitUntilStopped() ?? .requested
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
