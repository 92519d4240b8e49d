import ArgumentParser
import Foundation
import Logging
import MicroVM
import Understudy
import UnderstudyEtcd

/// The primary host's command: runs a guest, protected by a standby or
/// unprotected. Argument parsing only; MicroVM and Understudy do the work.
struct UnderstudyPrimary: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "understudy-primary",
        abstract: "Run a KVM guest on the primary host.",
        discussion: """
            With no --guest, the built-in workload guest runs. Its serial output appears on standard output \
            (after output commit: each epoch's output once the standby has its checkpoint); Ctrl-C or SIGTERM \
            stops it cleanly and tells the standby not to take over.

            Protected:   understudy-standby --listen 127.0.0.1:7700 &
                         understudy-primary --standby 127.0.0.1:7700
            Unprotected: understudy-primary --unprotected
            """
    )

    @Flag(help: "Run with no standby (no protection).")
    var unprotected = false

    @Option(help: "Standby to replicate to, HOST:PORT (start understudy-standby there first).")
    var standby: String?

    @Option(help: "Epoch length between checkpoints, e.g. 1ms, 5ms, 25ms (at least 0.5ms).")
    var epoch = "5ms"

    @Option(help: "Page compression: auto, none, lz4 or zstd (zstd for slow links).")
    var codec = "auto"

    @Option(help: "Declare the standby lost after this long without a frame from it.")
    var heartbeatTimeout = "200ms"

    @Option(help: "With a standby: log a status line this often (protection, checkpoints/s, pause, held output).")
    var statusInterval = "10s"

    @Option(help: "How KVM reports dirty pages with a standby: bitmap or ring.")
    var dirtyTracking = "bitmap"

    @Option(help: "Guest image: an ELF64 executable, or a raw image loaded and entered at 0x100000.")
    var guest: String?

    @Option(help: "Boot this Linux kernel (a bzImage, e.g. Debian's /boot/vmlinuz-*) instead of --guest; needs hardware KVM (kvm_intel, kvm_amd).")
    var kernel: String?

    @Option(help: "With --kernel: the initramfs to give it.")
    var initrd: String?

    @Option(help: "With --kernel: the kernel command line.")
    var append = LinuxBoot.defaultCommandLine

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

    @Option(help: "With a disk and a standby: what one epoch may write to the disk before it ends early; while the link is behind, the guest is held here until it catches up (1M to 128M).")
    var diskBudget = "64M"

    @Option(help: "Unprotected: on SIGTERM or SIGINT, pause the guest and write a snapshot here before stopping (--restore continues it).")
    var saveOnStop: String?

    @Option(help: "Resume a machine snapshot file instead of booting.")
    var restore: String?

    @Option(help: "Fencing: the arbiter that decides which copy of the guest may speak, etcd://HOST:PORT[,HOST:PORT...]; give the standby the same.")
    var arbiter: String?

    @Option(help: "With --arbiter: the guest's name there (the same on the standby).")
    var guestName: String?

    @Option(help: "With --arbiter: the lease's time to live (at least 2s). Output stops within it when this host loses the arbiter; a takeover after a silent failure waits for it.")
    var leaseTime = "5s"

    @Option(help: "Where this host listens as the guest's standby after a planned switchover (understudy-ctl switchover), HOST:PORT reachable from the standby's host. Without it no switchover starts here.")
    var listen: String?

    @Option(help: "Control socket for understudy-ctl (status, switchover, stop); 'none' for none. Default: /run/understudy/understudy-primary-PID.sock.")
    var control: String?

    @Flag(help: "Log debug detail.")
    var verbose = false

    func validate() throws {
        guard unprotected != (standby != nil) else {
            throw ValidationError("choose exactly one of --unprotected or --standby HOST:PORT")
        }
        if let standby {
            do { _ = try SocketAddress(parsing: standby) } catch { throw ValidationError("--standby: \(error)") }
        }
        if let listen {
            guard standby != nil else { throw ValidationError("--listen is where a protected guest's host waits as standby after a switchover: give --standby too") }
            do {
                let address = try SocketAddress(parsing: listen, listening: true)
                // The other host connects to it after a switchover: a wildcard would send it to itself.
                guard address.host != "0.0.0.0" else { throw ValidationError("--listen: give an address the standby's host can reach, not 0.0.0.0") }
            } catch let error as WireError { throw ValidationError("--listen: \(error)") }
        }
        guard let epochLength = DurationText.parse(epoch) else { throw ValidationError("cannot read epoch '\(epoch)' (try 1ms, 5ms, 25ms)") }
        guard epochLength >= EngineConfiguration.minimumEpoch else { throw ValidationError("--epoch must be at least 0.5ms") }
        guard CodecLevel(rawValue: codec) != nil else { throw ValidationError("--codec must be auto, none, lz4 or zstd, not '\(codec)'") }
        guard let timeout = DurationText.parse(heartbeatTimeout), timeout >= .milliseconds(20) else {
            throw ValidationError("cannot read heartbeat timeout '\(heartbeatTimeout)' (at least 20ms)")
        }
        guard DurationText.parse(statusInterval) != nil else { throw ValidationError("cannot read status interval '\(statusInterval)' (e.g. 10s)") }
        guard ["bitmap", "ring"].contains(dirtyTracking) else { throw ValidationError("--dirty-tracking must be bitmap or ring") }
        guard (1...8).contains(vcpus) else { throw ValidationError("--vcpus must be 1 to 8") }
        guard MemorySize.parse(memory) != nil else { throw ValidationError("cannot read memory size '\(memory)'") }
        guard kernel == nil || (guest == nil && restore == nil) else { throw ValidationError("--kernel boots Linux: give no --guest or --restore with it") }
        guard saveOnStop == nil || unprotected else { throw ValidationError("--save-on-stop is for --unprotected runs (a protected guest's copy is its standby)") }
        guard kernel != nil || initrd == nil else { throw ValidationError("--initrd goes with --kernel") }
        guard MACAddress.parse(mac) != nil else { throw ValidationError("cannot read MAC address '\(mac)'") }
        if let arbiter {
            guard standby != nil else { throw ValidationError("--arbiter fences a protected guest: give --standby too") }
            guard let guestName else { throw ValidationError("--arbiter needs --guest-name (the same on the standby)") }
            // The library says what is wrong with the address, the name or the lease.
            do { _ = try EtcdArbiter(url: arbiter, guest: guestName, leaseTime: DurationText.parse(leaseTime) ?? .zero) } catch { throw ValidationError("--arbiter: \(error)") }
        }
        guard let budget = MemorySize.parse(diskBudget), (1 << 20...UInt64(DiskWriteLog.maximumEpochBudget)).contains(budget) else {
            throw ValidationError("--disk-budget must be 1M to \(DiskWriteLog.maximumEpochBudget >> 20)M, not '\(diskBudget)'")
        }
    }

    func run() throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "understudy-primary")
        logger.logLevel = verbose ? .debug : .info
        // The tap stays attached across roles (after a switchover this host is the standby).
        let network = tap.map { NetworkConfiguration(tap: $0, mac: MACAddress.parse(mac) ?? [], keepsTapOpen: listen != nil) }
        let diskConfiguration = disk.map { DiskConfiguration(path: $0) }
        let source: ConsoleRunner.Source
        if let restore {
            source = .snapshot(path: restore, network: network, disk: diskConfiguration)
        } else {
            let image: GuestImage
            var linux: LinuxBoot?
            if let kernel {
                linux = try Self.linuxBoot(kernel: kernel, initrd: initrd, commandLine: append)
                image = .workload
            } else if let guest {
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
            configuration.linux = linux
            if standby != nil {
                configuration.dirtyTracking = dirtyTracking == "ring" ? .ring(entries: 65536) : .bitmap
            }
            source = .boot(configuration)
        }
        var protection = ConsoleRunner.Protection.unprotected
        var hosting = ConsoleRunner.Hosting(control: ControlServer.open(option: control, program: "understudy-primary", logger: logger))
        defer { hosting.control?.stop() }
        if let standby, let address = try? SocketAddress(parsing: standby) {
            let engine = EngineConfiguration(epoch: DurationText.parse(epoch) ?? .milliseconds(5), level: CodecLevel(rawValue: codec) ?? .auto)
            var replication = PrimaryConfiguration(standby: address, engine: engine,
                                                   heartbeatTimeout: DurationText.parse(heartbeatTimeout) ?? StandbyConfiguration.defaultHeartbeatTimeout)
            replication.statusInterval = DurationText.parse(statusInterval)
            replication.diskEpochBudget = Int(MemorySize.parse(diskBudget) ?? 0)
            if let arbiter, let guestName {
                // The guest's key first: a copy that cannot get it must not run the guest.
                do {
                    let etcd = try EtcdArbiter(url: arbiter, guest: guestName, leaseTime: DurationText.parse(leaseTime) ?? .seconds(5))
                    replication.fence = try Fence.acquire(etcd, holder: EtcdArbiter.processName, logger: logger)
                } catch {
                    logger.critical("not starting the guest: \(error)")
                    throw ExitCode(1)
                }
            } else {
                logger.warning("\(Fence.unfencedWarning) (no --arbiter)")
            }
            protection = .standby(replication)
            // After a switchover this host is the standby: same tap, disk and arbiter.
            if let listen, let here = try? SocketAddress(parsing: listen, listening: true) {
                var options = StandbyRunner.Options(listen: here, heartbeatTimeout: replication.heartbeatTimeout, tap: tap, disk: diskConfiguration)
                options.statusInterval = replication.statusInterval
                if let arbiter, let guestName, let etcd = try? EtcdArbiter(url: arbiter, guest: guestName, leaseTime: DurationText.parse(leaseTime) ?? .seconds(5)) {
                    options.fencing = StandbyFencing(arbiter: etcd, holder: EtcdArbiter.processName)
                }
                hosting.standby = options
            }
        } else {
            logger.warning("running unprotected (--unprotected): a failure of this host loses the guest")
        }
        do {
            let status = try ConsoleRunner.run(source, protection: protection, saveOnStop: saveOnStop, hosting: hosting, logger: logger)
            throw ExitCode(status)
        } catch let error as MachineError {
            logger.error("\(error)")
            throw ExitCode(1)
        }
    }
}

extension UnderstudyPrimary {
    /// Reads a Linux kernel and initrd for `--kernel`, saying what is wrong with them.
    static func linuxBoot(kernel: String, initrd: String?, commandLine: String) throws -> LinuxBoot {
        guard let bytes = FileManager.default.contents(atPath: kernel) else { throw ValidationError("cannot read kernel \(kernel)") }
        var ramdisk: [UInt8] = []
        if let initrd {
            guard let data = FileManager.default.contents(atPath: initrd) else { throw ValidationError("cannot read initrd \(initrd)") }
            ramdisk = [UInt8](data)
        }
        do {
            return LinuxBoot(kernel: try LinuxKernel(bzImage: [UInt8](bytes)), initrd: ramdisk, commandLine: commandLine)
        } catch {
            throw ValidationError("\(kernel): \(error)")
        }
    }
}

UnderstudyPrimary.main()
