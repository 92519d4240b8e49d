import Foundation
import KVM
import MicroVM
import Synchronization
import TestGuests
import Testing
@testable import Understudy

/// The kvstore guest under a steady client load, checkpointed at 1 ms into an
/// in-process replica, with its frames held until their checkpoint commits. The
/// primary is then killed without warning and the replica resumed in a new
/// machine on the same tap: the client's connection carries on and every value
/// it was told is stored reads back.
@Suite("kvstore failover from the replica", .enabled(if: networkTestsAvailable, "needs root, /dev/kvm, /dev/net/tun"), .deadline(minutes: 5), .serialized)
struct KVStoreFailoverTests {
    @Test func everyAcknowledgedValueSurvives() throws {
        let network = try TestNetwork()
        let tap = try network.addTap()
        let console = Lines()
        let configuration = try GuestPrograms.kvstore(tap: tap, dirtyTracking: .bitmap)
        let primary = try Machine(configuration: configuration, console: console.sink)
        let net = try #require(primary.net)
        let output = OutputBuffer { _, frame in frame.withUnsafeBytes { _ = net.tap?.write($0) } }
        net.egress = { output.hold(.network, $0) }
        let engine = CheckpointEngine(machine: primary, configuration: .init(epoch: .milliseconds(1)))
        let replica = try ReplicaImage(memorySize: primary.memory.size)
        let applyErrors = Mutex(0)
        engine.outputBuffer = output
        engine.sink = { checkpoint in
            do {
                try replica.apply(checkpoint)
                output.commit(upTo: checkpoint.sequence)
            } catch {
                applyErrors.withLock { $0 += 1 }
            }
        }
        try primary.start()
        try engine.start()
        #expect(eventually { console.lines.contains { $0.contains("listening") } })

        let client = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7000)
        var acknowledged: [Int] = []
        let loadEnds = Date().addingTimeInterval(4)
        var i = 0
        while Date() < loadEnds {
            if try client.command("SET key\(i) value\(i * 31)") == "OK" { acknowledged.append(i) }
            i += 1
        }
        // The primary dies: no final checkpoint, held output of uncommitted epochs is lost.
        try? engine.stop()
        primary.requestStop()
        _ = primary.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        output.discardUncommitted()
        #expect(applyErrors.withLock { $0 } == 0)
        let committed = try #require(replica.committedSequence)

        // The standby takes over from its last committed checkpoint, on the same tap.
        let memory = try SharedMemory(size: replica.memory.size)
        memory.bytes.copyBytes(from: UnsafeRawBufferPointer(replica.memory.bytes))
        var network2 = NetworkConfiguration(tap: tap)
        network2.mac = configuration.network!.mac
        let standby = try Machine(restoring: replica.state, memory: memory, network: network2, console: { _ in })
        try standby.start()
        defer {
            standby.requestStop()
            _ = standby.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        }
        // The same connection carries on.
        #expect(try client.command("SET after failover") == "OK")
        var missing = 0
        for key in acknowledged where try client.command("GET key\(key)") != "VALUE value\(key * 31)" { missing += 1 }
        #expect(missing == 0, "\(missing) of \(acknowledged.count) acknowledged values were lost")
        #expect(acknowledged.count > 50)
        print("failover: \(acknowledged.count) acknowledged SETs over \(committed + 1) checkpoints, all read back; held output peaked at \(output.maximumAge)")
    }
}
