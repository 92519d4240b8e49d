import ArgumentParser
import Foundation
import Logging
import MicroVM

/// The primary host's command: runs a guest, protected by a standby (coming with
/// replication) or unprotected. Argument parsing only; MicroVM does the work.
struct UnderstudyPrimary: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "understudy-primary",
        abstract: "Run a KVM guest on the primary host.",
        discussion: "With no --guest, the built-in workload guest runs. Its serial output appears on standard output; Ctrl-C or SIGTERM stops it cleanly."
    )

    @Flag(help: "Run with no standby (no protection).")
    var unprotected = false

    @Option(help: "Standby to replicate to, HOST:PORT (not available yet: use --unprotected).")
    var standby: String?

    @Option(help: "Guest image: an ELF64 executable, or a raw image loaded and entered at 0x100000.")
    var guest: String?

    @Option(help: "Command line for the guest's boot-info page (workload: pages=N wss=N every=N count=N).")
    var cmdline = "pages=16 wss=256 every=20000"

    @Option(help: "Number of vCPUs (1-8).")
    var vcpus = 1

    @Option(help: "Guest memory, e.g. 256M or 1G.")
    var memory = "256M"

    @Option(help: "Give the guest a virtio-net card on this tap interface (created if absent).")
    var tap: String?

    @Option(help: "MAC address of the guest's card, e.g. 52:54:00:12:34:56.")
    var mac = "52:54:00:12:34:56"

    @Option(help: "Give the guest a virtio-blk disk backed by this existing file.")
    var disk: String?

    @Option(help: "Resume a machine snapshot file instead of booting.")
    var restore: String?

    @Flag(help: "Log debug detail.")
    var verbose = false

    func validate() throws {
        guard unprotected || standby != nil else {
            throw ValidationError("choose --unprotected or --standby HOST:PORT")
        }
        guard standby == nil else {
            throw ValidationError("replication to a standby is not available in this version; run with --unprotected")
        }
        guard MemorySize.parse(memory) != nil else { throw ValidationError("cannot read memory size '\(memory)'") }
        guard MACAddress.parse(mac) != nil else { throw ValidationError("cannot read MAC address '\(mac)'") }
    }

    func run() throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "understudy-primary")
        logger.logLevel = verbose ? .debug : .info
        let network = tap.map { NetworkConfiguration(tap: $0, mac: MACAddress.parse(mac) ?? []) }
        let diskConfiguration = disk.map { DiskConfiguration(path: $0) }
        let source: ConsoleRunner.Source
        if let restore {
            source = .snapshot(path: restore, network: network, disk: diskConfiguration)
        } else {
            let image: GuestImage
            if let guest {
                guard let data = FileManager.default.contents(atPath: guest) else {
                    throw ValidationError("cannot read guest image \(guest)")
                }
                let bytes = [UInt8](data)
                image = bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46])
                    ? try GuestImage(elf: bytes) : GuestImage(raw: bytes, loadAddress: GuestLayout.imageBase)
            } else {
                image = .workload
            }
            var configuration = MachineConfiguration(vcpuCount: vcpus, memorySize: MemorySize.parse(memory) ?? 0,
                                                     image: image, commandLine: cmdline)
            configuration.network = network
            configuration.disk = diskConfiguration
            source = .boot(configuration)
        }
        do {
            let status = try ConsoleRunner.run(source, logger: logger)
            throw ExitCode(status)
        } catch let error as MachineError {
            logger.error("\(error)")
            throw ExitCode(1)
        }
    }
}

UnderstudyPrimary.main()
