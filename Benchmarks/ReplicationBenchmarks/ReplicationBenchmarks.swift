import Benchmark
import Foundation
import KVM
import Logging
import MicroVM
import TestGuests
import Understudy

/// Replication end to end, for epochs of 1, 5 and 25 ms:
/// - checkpoints/s, pause p50/p99 and bytes per checkpoint on the wire: the
///   workload guest replicated in-process to a standby receiver over loopback TCP;
/// - the added latency of a kvstore request/response through the output buffer:
///   primary and standby processes, the client in a network namespace, against
///   the same binaries run unprotected;
/// - failover time: SIGKILL of the primary process to the standby starting the guest.
/// Needs root (network namespaces, taps) and the release executables; says so and skips otherwise.
let benchmarks: @Sendable () -> Void = {
    guard networkTestsAvailable, ChildProcess.executable("understudy-standby") != nil else {
        print("REPLICATION BENCHMARKS SKIPPED: they need root, /dev/kvm, /dev/net/tun and `swift build -c release`")
        return
    }
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock], timeUnits: .microseconds,
                                           warmupIterations: 20, maxDuration: .seconds(5), maxIterations: 3000)
    for epoch in [1, 5, 25] {
        let metrics: [BenchmarkMetric] = [.custom("checkpoints/s", polarity: .prefersLarger, useScalingFactor: false),
                                          .custom("pause p50 (µs)", useScalingFactor: false),
                                          .custom("pause p99 (µs)", useScalingFactor: false),
                                          .custom("wire bytes/checkpoint", useScalingFactor: false),
                                          .custom("dirty pages/checkpoint", useScalingFactor: false)]
        Benchmark("Replication at \(epoch) ms: workload guest (16 pages/iteration, wss 256), 3 s, loopback standby",
                  configuration: .init(metrics: metrics, warmupIterations: 0, maxIterations: 3)) { benchmark in
            let figures = try InProcessReplication.run(epoch: .milliseconds(epoch), seconds: 3)
            benchmark.measurement(metrics[0], figures.checkpointsPerSecond)
            benchmark.measurement(metrics[1], figures.pauseP50)
            benchmark.measurement(metrics[2], figures.pauseP99)
            benchmark.measurement(metrics[3], figures.wireBytesPerCheckpoint)
            benchmark.measurement(metrics[4], figures.dirtyPagesPerCheckpoint)
        }
    }

    for epoch in [nil, 1, 25] as [Int?] {
        let label = epoch.map { "replicated at \($0) ms" } ?? "unprotected"
        Benchmark("journal: 18,000 sector writes + 2,250 flushes, \(label) (report of record 2,000 to the end)",
                  configuration: .init(metrics: [.wallClock], timeUnits: .milliseconds, warmupIterations: 0, maxIterations: 3)) { benchmark in
            try JournalProcesses.run(epoch: epoch, benchmark: benchmark)
        }
    }

    let unprotected = KVStoreProcesses(epoch: nil)
    Benchmark("kvstore GET round trip, unprotected (understudy-primary --unprotected)") { benchmark in
        try unprotected.roundTrip(benchmark)
    } setup: { try unprotected.start() } teardown: { unprotected.stop() }
    for epoch in [1, 5, 25] {
        let rig = KVStoreProcesses(epoch: epoch)
        Benchmark("kvstore GET round trip, protected at \(epoch) ms (output commit)",
                  configuration: .init(metrics: [.wallClock], timeUnits: .microseconds, warmupIterations: 5,
                                       maxDuration: .seconds(5), maxIterations: epoch == 25 ? 150 : 1000)) { benchmark in
            try rig.roundTrip(benchmark)
        } setup: { try rig.start() } teardown: { rig.stop() }

        Benchmark("Failover at \(epoch) ms: SIGKILL of the primary to the guest starting on the standby (kvstore)",
                  configuration: .init(metrics: [.wallClock], timeUnits: .milliseconds, warmupIterations: 0, maxIterations: 5)) { benchmark in
            let failover = KVStoreProcesses(epoch: epoch)
            try failover.start()
            defer { failover.stop() }
            benchmark.startMeasurement()
            try failover.killPrimaryAndWaitForTakeover()
            benchmark.stopMeasurement()
        }
    }

    // The same with fencing: the standby takes over only once the killed
    // primary's lease has expired in etcd (a fresh one-member etcd each time).
    Benchmark("Failover at 5 ms with an arbiter (etcd, 2 s lease): SIGKILL of the primary to the guest answering on the standby (kvstore)",
              configuration: .init(metrics: [.wallClock], timeUnits: .milliseconds, warmupIterations: 0, maxDuration: .seconds(120),
                                   maxIterations: 5)) { benchmark in
        let etcd = try EtcdCluster()
        let failover = KVStoreProcesses(epoch: 5, arbiter: etcd.url)
        try failover.start()
        defer { failover.stop() }
        benchmark.startMeasurement()
        try failover.killPrimaryAndWaitForTakeover()
        benchmark.stopMeasurement()
    }
    // A planned switchover, back and forth: from `understudy-ctl switchover`
    // to the guest answering a GET on the other host, on the client's one
    // connection (each iteration waits, unmeasured, until the guest is
    // protected again by the old primary).
    let switching = KVStoreProcesses(epoch: 5, switchover: true)
    Benchmark("Switchover at 5 ms: understudy-ctl switchover to the guest answering on the other host (kvstore, 256 MiB)",
              configuration: .init(metrics: [.wallClock], timeUnits: .milliseconds, warmupIterations: 0, maxDuration: .seconds(120),
                                   maxIterations: 10)) { benchmark in
        try switching.switchOver(benchmark)
    } setup: { try switching.start() } teardown: { switching.stop() }

    Benchmark("Re-protection at 5 ms: a standby started on the failed host to the guest that took over PROTECTED again (kvstore, 256 MiB)",
              configuration: .init(metrics: [.wallClock], timeUnits: .milliseconds, warmupIterations: 0, maxDuration: .seconds(120),
                                   maxIterations: 5)) { benchmark in
        let failover = KVStoreProcesses(epoch: 5, reprotect: true)
        try failover.start()
        defer { failover.stop() }
        try failover.killPrimaryAndWaitForTakeover()
        benchmark.startMeasurement()
        try failover.startStandbyOnTheFailedHostAndWaitForProtection()
        benchmark.stopMeasurement()
    }
}

struct Failure: Error { let what: String }

/// The workload guest replicated in-process: a real `ReplicationPrimary` and
/// `StandbyReceiver` talking TCP over loopback.
enum InProcessReplication {
    struct Figures {
        var checkpointsPerSecond = 0, pauseP50 = 0, pauseP99 = 0, wireBytesPerCheckpoint = 0, dirtyPagesPerCheckpoint = 0
    }

    static func run(epoch: Duration, seconds: Double) throws -> Figures {
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let receiver = try StandbyReceiver(configuration: StandbyConfiguration(listen: SocketAddress(host: "127.0.0.1", port: 0)), logger: logger)
        let standby = Thread { _ = receiver.run() }
        standby.start()
        let output = OutputBuffer { _, _ in }
        let machine = try Machine(configuration: .init(memorySize: 256 << 20, commandLine: "pages=16 wss=256 every=100000", dirtyTracking: .bitmap),
                                  console: { bytes in bytes.withUnsafeBytes { output.hold(.console, $0) } })
        try machine.start()
        let primary = ReplicationPrimary(machine: machine, output: output,
                                         configuration: PrimaryConfiguration(standby: SocketAddress(host: "127.0.0.1", port: receiver.listener.port),
                                                                             engine: EngineConfiguration(epoch: epoch)), logger: logger)
        try primary.start()
        guard eventually(timeout: 60, { primary.status == .protected }) else { throw Failure(what: "never protected") }
        let startTotals = primary.totals, startWire = primary.wireTotals
        Thread.sleep(forTimeInterval: seconds)
        let stats = primary.totals - startTotals
        let wire = primary.wireTotals
        primary.stop()
        receiver.stop()
        machine.requestStop()
        _ = machine.waitUntilStopped()
        guard stats.epochs > 0 else { throw Failure(what: "no checkpoints") }
        let count = wire.checkpoints - startWire.checkpoints
        return Figures(checkpointsPerSecond: Int(Double(stats.epochs) / seconds), pauseP50: stats.pauses.quantileMicroseconds(0.5),
                       pauseP99: stats.pauses.quantileMicroseconds(0.99),
                       wireBytesPerCheckpoint: (wire.bytes - startWire.bytes) / max(1, count),
                       dirtyPagesPerCheckpoint: Int(stats.dirtyPages / stats.epochs))
    }
}

/// kvstore under understudy-primary (and understudy-standby when protected) processes.
final class KVStoreProcesses: @unchecked Sendable {
    let epoch: Int?
    /// With fencing: both processes get `--arbiter` this etcd.
    let arbiter: String?
    /// The standby gets `--reprotect` towards the primary's host.
    let reprotect: Bool
    /// Both get control sockets and the primary `--listen`: switchovers.
    let switchover: Bool
    private var sockets: [String] = []
    private var active = 0
    private var network: TestNetwork?
    private var standby: ChildProcess?
    private var primary: ChildProcess?
    private var back: ChildProcess?
    private var connection: NamespaceSocket?
    private var primaryTap = "", backPort: UInt16 = 0

    init(epoch: Int?, arbiter: String? = nil, reprotect: Bool = false, switchover: Bool = false) {
        self.epoch = epoch
        self.arbiter = arbiter
        self.reprotect = reprotect
        self.switchover = switchover
    }

    func start() throws {
        _ = try GuestPrograms.image("kvstore")
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/kvstore.elf").path
        let network = try TestNetwork()
        let primaryTap = try network.addTap()
        self.primaryTap = primaryTap
        var protection = ["--unprotected"]
        if let epoch {
            let standbyTap = try network.addTap()
            let fencing = arbiter.map { ["--arbiter", $0, "--guest-name", "bench", "--lease-time", "2s"] } ?? []
            backPort = try EtcdCluster.freePort()
            let healing = reprotect ? ["--reprotect", "127.0.0.1:\(backPort)"] : []
            let directory = FileManager.default.temporaryDirectory.path
            sockets = switchover ? ["\(directory)/bench-\(getpid())-a.sock", "\(directory)/bench-\(getpid())-b.sock"] : []
            active = 0
            let control = switchover ? ["--control", sockets[1]] : []
            let standby = try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:0", "--tap", standbyTap] + fencing + healing + control)
            guard let port = standby.listeningPort() else { throw Failure(what: "standby: \(standby.standardError.text)") }
            protection = ["--standby", "127.0.0.1:\(port)", "--epoch", "\(epoch)ms"] + fencing
            if switchover { protection += ["--listen", "127.0.0.1:\(backPort)", "--control", sockets[0]] }
            self.standby = standby
        }
        let primary = try ChildProcess("understudy-primary", protection + [
            "--guest", image, "--cmdline", "ip=10.77.0.2 mask=255.255.255.0", "--tap", primaryTap, "--memory", "256M"])
        self.primary = primary
        self.network = network
        guard eventually(timeout: 60, { primary.standardOutput.text.contains("listening")
                && (epoch == nil || primary.standardError.text.contains("protected by the standby")) }) else {
            throw Failure(what: "primary: \(primary.standardError.text)")
        }
        connection = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7000)
        guard try connection?.command("SET bench 42") == "OK" else { throw Failure(what: "SET") }
    }

    func roundTrip(_ benchmark: Benchmark) throws {
        guard let connection else { throw Failure(what: "not started") }
        benchmark.startMeasurement()
        let reply = try connection.command("GET bench")
        benchmark.stopMeasurement()
        guard reply == "VALUE 42" else { throw Failure(what: "reply \(reply)") }
    }

    /// SIGKILL to the primary; returns when the standby logs that it takes over
    /// and the guest answers on the same connection.
    func killPrimaryAndWaitForTakeover() throws {
        guard let primary, let standby, let connection else { throw Failure(what: "not started") }
        primary.signal(SIGKILL)
        guard eventually(timeout: 30, { standby.standardError.text.contains("taking over") }) else { throw Failure(what: "no takeover") }
        guard try connection.command("GET bench") == "VALUE 42" else { throw Failure(what: "after failover") }
    }

    /// One switchover (with `switchover`): waits until the active host is
    /// protected, then measures `understudy-ctl switchover` to the guest
    /// answering a GET from the other host.
    func switchOver(_ benchmark: Benchmark) throws {
        guard switchover, let connection else { throw Failure(what: "not started with switchover") }
        guard eventually(timeout: 60, { (try? ControlClient.send(.status, to: self.sockets[self.active]))?.status?.state == "protected" }) else {
            throw Failure(what: "not protected before the switchover")
        }
        benchmark.startMeasurement()
        let reply = try ControlClient.send(.switchover, to: sockets[active])
        let value = try connection.command("GET bench")
        benchmark.stopMeasurement()
        guard reply.ok, value == "VALUE 42" else { throw Failure(what: "switchover: \(reply.message ?? "") \(value)") }
        active = 1 - active
    }

    /// After a takeover with `reprotect`: starts a standby on the failed
    /// host's tap; returns when the copy that took over is protected by it
    /// and the guest still answers on the same connection.
    func startStandbyOnTheFailedHostAndWaitForProtection() throws {
        guard reprotect, let standby, let connection else { throw Failure(what: "not started with reprotect") }
        back = try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:\(backPort)", "--tap", primaryTap])
        guard eventually(timeout: 60, { standby.standardError.text.contains("protected by the standby") }) else {
            throw Failure(what: "not protected again: \(standby.standardError.text.suffix(2000))")
        }
        guard try connection.command("GET bench") == "VALUE 42" else { throw Failure(what: "after re-protection") }
    }

    func stop() {
        connection = nil
        for process in [primary, standby, back] { process?.signal(SIGKILL) }
        for process in [primary, standby, back] { _ = process?.waitForExit() }
        primary = nil
        standby = nil
        back = nil
        network?.tearDown()
        network = nil
    }
}

/// The journal guest on a 64 MiB image under understudy-primary (and a standby
/// with its own image when replicated), timed from the report of record 2,000
/// (well after the standby holds the guest) to the end of its 20,000 writes.
/// Both ends are seen through output commit, so each lags by about an epoch.
enum JournalProcesses {
    static func run(epoch: Int?, benchmark: Benchmark) throws {
        _ = try GuestPrograms.image("journal")
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/journal.elf").path
        let primaryDisk = JournalImage.makeImage(megabytes: 64)
        let standbyDisk = JournalImage.makeImage(megabytes: 64)
        defer { try? FileManager.default.removeItem(atPath: primaryDisk); try? FileManager.default.removeItem(atPath: standbyDisk) }
        var protection = ["--unprotected"]
        var standby: ChildProcess?
        if let epoch {
            let process = try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:0", "--disk", standbyDisk])
            guard let port = process.listeningPort() else { throw Failure(what: "standby: \(process.standardError.text)") }
            protection = ["--standby", "127.0.0.1:\(port)", "--epoch", "\(epoch)ms"]
            standby = process
        }
        defer { standby?.signal(SIGKILL); _ = standby?.waitForExit() }
        let primary = try ChildProcess("understudy-primary", protection + [
            "--guest", image, "--disk", primaryDisk, "--memory", "32M", "--cmdline", "count=20000 flush_every=8"])
        guard eventually(timeout: 60, { primary.standardOutput.text.contains("flushed 2000\n") }) else {
            throw Failure(what: "journal did not start: \(primary.standardError.text)")
        }
        benchmark.startMeasurement()
        _ = eventually(timeout: 300) { primary.standardOutput.text.contains("journal: wrote") }
        benchmark.stopMeasurement()
        guard primary.waitForExit(timeout: 30), primary.exitStatus == 0 else { throw Failure(what: "journal failed") }
        if epoch != nil, try JournalImage.recordCount(path: standbyDisk) < 19000 {
            throw Failure(what: "the standby's image lacks records")
        }
    }
}
