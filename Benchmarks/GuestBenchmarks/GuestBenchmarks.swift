import Benchmark
import Foundation
import KVM
import MicroVM
import TestGuests

/// The C guests on MicroVM's virtio devices: request latency and throughput of
/// the kvstore over virtio-net and a real tap, and the journal's disk write rate.
/// Needs root (network namespaces and taps); says so and skips otherwise.
let benchmarks: @Sendable () -> Void = {
    guard networkTestsAvailable else {
        print("GUEST BENCHMARKS SKIPPED: they need root, /dev/kvm and /dev/net/tun")
        return
    }
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock], timeUnits: .microseconds,
                                           warmupIterations: 20, maxDuration: .seconds(5), maxIterations: 5000)
    let kvstore = KVStoreRig()

    Benchmark("kvstore GET round trip (one connection, client in a netns)") { benchmark in
        let client = try kvstore.client()
        benchmark.startMeasurement()
        let reply = try client.command("GET bench")
        benchmark.stopMeasurement()
        guard reply == "VALUE 42" else { throw KVStoreRig.Failure(what: "reply \(reply)") }
    } setup: {
        try kvstore.start()
        _ = try kvstore.client().command("SET bench 42")
    } teardown: {
        kvstore.stop()
    }

    let bulk = 16_000_000
    Benchmark("kvstore GEN 16 MB guest→client", configuration: .init(metrics: [.wallClock, .throughput],
                                                                     timeUnits: .milliseconds, warmupIterations: 1,
                                                                     maxDuration: .seconds(10), maxIterations: 20)) { benchmark in
        let client = try kvstore.client()
        guard try client.command("GEN \(bulk) 1") == "VALUE \(bulk)" else { throw KVStoreRig.Failure(what: "GEN") }
        try client.read(count: bulk) { blackHole($0.count) }
    } setup: {
        try kvstore.start()
    } teardown: {
        kvstore.stop()
    }

    Benchmark("kvstore SINK 16 MB client→guest", configuration: .init(metrics: [.wallClock, .throughput],
                                                                      timeUnits: .milliseconds, warmupIterations: 1,
                                                                      maxDuration: .seconds(10), maxIterations: 20)) { benchmark in
        let client = try kvstore.client()
        try client.send("SINK \(bulk)\n")
        let chunk = [UInt8](repeating: 0x5A, count: 1 << 20)
        var sent = 0
        while sent < bulk {
            let count = min(chunk.count, bulk - sent)
            try client.send(Array(chunk[0..<count]))
            sent += count
        }
        guard try client.readLine().hasPrefix("OK ") else { throw KVStoreRig.Failure(what: "SINK") }
    } setup: {
        try kvstore.start()
    } teardown: {
        kvstore.stop()
    }

    Benchmark("journal: 2,000 sector writes + 250 flushes (boot to exit)", configuration: .init(
        metrics: [.wallClock], timeUnits: .milliseconds, warmupIterations: 1, maxDuration: .seconds(20), maxIterations: 10)) { benchmark in
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bench-journal-\(UUID()).img").path
        FileManager.default.createFile(atPath: path, contents: nil)
        truncate(path, 16 << 20)
        defer { try? FileManager.default.removeItem(atPath: path) }
        var configuration = MachineConfiguration(name: "journal", memorySize: 64 << 20,
                                                 image: try GuestPrograms.image("journal"), commandLine: "count=2000")
        configuration.disk = DiskConfiguration(path: path)
        let machine = try Machine(configuration: configuration, console: { _ in })
        benchmark.startMeasurement()
        try machine.start()
        let reason = machine.waitUntilStopped()
        benchmark.stopMeasurement()
        guard reason == .guestExit(code: 0) else { throw KVStoreRig.Failure(what: "journal: \(String(describing: reason))") }
    }
}

/// A kvstore machine on a private test network, kept from setup to teardown.
final class KVStoreRig: @unchecked Sendable {
    struct Failure: Error { let what: String }
    private var network: TestNetwork?
    private var machine: Machine?
    private var connection: NamespaceSocket?

    func start() throws {
        let network = try TestNetwork()
        let tap = try network.addTap()
        let output = ConsoleText()
        let configuration = try GuestPrograms.kvstore(tap: tap, memorySize: 256 << 20)
        let machine = try Machine(configuration: configuration, console: output.append)
        try machine.start()
        guard eventually({ output.text.contains("listening") }) else { throw Failure(what: "kvstore did not start") }
        self.network = network
        self.machine = machine
    }

    func client() throws -> NamespaceSocket {
        if let connection { return connection }
        guard let network else { throw Failure(what: "not started") }
        let connection = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7000)
        self.connection = connection
        return connection
    }

    func stop() {
        connection = nil
        machine?.requestStop()
        _ = machine?.waitUntilStopped()
        machine = nil
        network?.tearDown()
        network = nil
    }
}

/// Console output collected from vCPU threads.
final class ConsoleText: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    var append: @Sendable ([UInt8]) -> Void { { [self] data in lock.withLock { bytes += data } } }
    var text: String { lock.withLock { String(decoding: bytes, as: UTF8.self) } }
}
