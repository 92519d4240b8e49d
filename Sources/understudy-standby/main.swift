import ArgumentParser
import Foundation
import Logging
import MicroVM
import Understudy
import UnderstudyEtcd

/// The standby host's command: holds a replica of the primary's guest and takes
/// it over when the primary is lost. Argument parsing only.
struct UnderstudyStandby: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "understudy-standby",
        abstract: "Hold a replica of a primary's KVM guest and take it over when the primary fails.",
        discussion: """
            Listens for one primary (understudy-primary --standby HOST:PORT), receives its full image and then \\
            a checkpoint every epoch, and acknowledges each once it is verified and applied. When the primary \\
            stops sending (no frame for --heartbeat-timeout, a dropped connection, or a bad frame), the guest \\
            resumes here from the last committed checkpoint: the last epoch's output is released, and the \\
            guest's console continues on this process's standard output. A primary that stops in order says \\
            goodbye and the standby exits without taking over. A planned switchover (understudy-ctl switchover, \\
            sent to the primary) hands the guest over here at once; the old primary becomes this guest's standby.
            """
    )

    @Option(help: "Address to listen on for the primary, HOST:PORT (port 0: any free port, logged).")
    var listen: String

    @Option(help: "Tap interface for the guest's network card after failover (needed if the guest has one).")
    var tap: String?

    @Option(help: "Disk image kept in step with the guest's disk (same size as the primary's; its contents are replaced by the primary's).")
    var disk: String?

    @Option(help: "Declare the primary lost after this long without a frame from it.")
    var heartbeatTimeout = "200ms"

    @Option(help: "Fencing: take over only after winning the guest's key in this arbiter, etcd://HOST:PORT[,HOST:PORT...] (the primary's).")
    var arbiter: String?

    @Option(help: "With --arbiter: the guest's name there (the primary's --guest-name).")
    var guestName: String?

    @Option(help: "With --arbiter: the lease's time to live after a takeover (at least 2s).")
    var leaseTime = "5s"

    @Option(help: "After a takeover, protect the guest again with the standby at HOST:PORT (start one there, e.g. on the lost primary's host once repaired): until it answers the guest runs unprotected, then it is copied there and protected.")
    var reprotect: String?

    @Option(help: "With --reprotect: between status lines after the takeover (e.g. 10s).")
    var statusInterval = "10s"

    @Option(help: "Control socket for understudy-ctl (status, switchover, stop); 'none' for none. Default: /run/understudy/understudy-standby-PID.sock.")
    var control: String?

    @Flag(help: "Log debug detail.")
    var verbose = false

    func validate() throws {
        do { _ = try SocketAddress(parsing: listen, listening: true) } catch { throw ValidationError("--listen: \(error)") }
        guard let timeout = DurationText.parse(heartbeatTimeout), timeout >= .milliseconds(20) else {
            throw ValidationError("cannot read heartbeat timeout '\(heartbeatTimeout)' (at least 20ms)")
        }
        if let disk, !FileManager.default.fileExists(atPath: disk) { throw ValidationError("no disk image at \(disk)") }
        if let reprotect {
            do { _ = try SocketAddress(parsing: reprotect) } catch { throw ValidationError("--reprotect: \(error)") }
        }
        guard DurationText.parse(statusInterval) != nil else { throw ValidationError("cannot read status interval '\(statusInterval)' (e.g. 10s)") }
        if let arbiter {
            guard let guestName else { throw ValidationError("--arbiter needs --guest-name (the primary's)") }
            do { _ = try EtcdArbiter(url: arbiter, guest: guestName, leaseTime: DurationText.parse(leaseTime) ?? .zero) } catch { throw ValidationError("--arbiter: \(error)") }
        }
    }

    func run() throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "understudy-standby")
        logger.logLevel = verbose ? .debug : .info
        var options = StandbyRunner.Options(listen: (try? SocketAddress(parsing: listen, listening: true)) ?? SocketAddress(host: "127.0.0.1", port: 7700),
                                            heartbeatTimeout: DurationText.parse(heartbeatTimeout) ?? StandbyConfiguration.defaultHeartbeatTimeout,
                                            tap: tap, disk: disk.map { DiskConfiguration(path: $0) },
                                            reprotect: reprotect.flatMap { try? SocketAddress(parsing: $0) })
        options.statusInterval = DurationText.parse(statusInterval)
        if let arbiter, let guestName {
            do {
                let etcd = try EtcdArbiter(url: arbiter, guest: guestName, leaseTime: DurationText.parse(leaseTime) ?? .seconds(5))
                options.fencing = StandbyFencing(arbiter: etcd, holder: EtcdArbiter.processName)
            } catch {
                logger.error("\(error)")
                throw ExitCode(1)
            }
        } else {
            logger.warning("\(Fence.unfencedWarning) (no --arbiter)")
        }
        do {
            let receiver = try StandbyRunner.receiver(options, logger: logger)
            let hosting = ConsoleRunner.Hosting(control: ControlServer.open(option: control, program: "understudy-standby", logger: logger))
            defer { hosting.control?.stop() }
            throw ExitCode(try StandbyRunner.run(options, receiver: receiver, hosting: hosting, logger: logger))
        } catch let error as WireError {
            logger.error("\(error)")
            throw ExitCode(1)
        } catch let error as MachineError {
            logger.error("\(error)")
            throw ExitCode(1)
        } catch let error as DiskError {
            logger.error("\(error)")
            throw ExitCode(1)
        }
    }
}

UnderstudyStandby.main()
