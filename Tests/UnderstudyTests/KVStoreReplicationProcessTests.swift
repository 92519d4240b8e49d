import Foundation
import Synchronization
import TestGuests
import Testing

/// The kvstore guest on virtio-net, replicated from a primary process to a
/// standby process, each with its own tap on one bridge. Clients in their own
/// network namespace keep TCP connections busy; the primary is killed with
/// SIGKILL; the same connections carry on against the standby (no reset, no
/// reconnect) and everything a client was told stays true.
@Suite("kvstore replication across processes", .enabled(if: networkTestsAvailable, "needs root, /dev/kvm, /dev/net/tun"), .deadline(minutes: 10), .serialized)
struct KVStoreReplicationProcessTests {
    struct ClientResult: Sendable {
        var acknowledged: [Int] = []
        var counter = 0
        var error: String?
    }

    @Test func connectionsSurviveTheLossOfThePrimary() throws {
        _ = try GuestPrograms.image("kvstore")        // builds the guests if needed
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/kvstore.elf").path
        let network = try TestNetwork()
        let primaryTap = try network.addTap()
        let standbyTap = try network.addTap()
        let standby = try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:0", "--tap", standbyTap, "--heartbeat-timeout", "2s"])
        let port = try #require(standby.listeningPort())
        let primary = try ChildProcess("understudy-primary", [
            "--standby", "127.0.0.1:\(port)", "--guest", image, "--cmdline", "ip=10.77.0.2 mask=255.255.255.0",
            "--tap", primaryTap, "--memory", "64M", "--epoch", "5ms", "--heartbeat-timeout", "2s"])
        #expect(eventually(timeout: 60) { primary.standardError.text.contains("protected by the standby") && primary.standardOutput.text.contains("listening") },
                "primary: \(primary.standardError.text)")

        let stop = Atomic<Bool>(false)
        let killed = Atomic<Bool>(false)
        let repliesAfterKill = Atomic<Int>(0)
        // Per client: SETs acknowledged, and replies after the kill. The test waits
        // for these counts, not for a time: a loaded host serves fewer per second.
        let acknowledged = Mutex<[Int]>([0, 0, 0])
        let afterKill = Mutex<[Int]>([0, 0, 0])
        let clients = try (0..<3).map { client in
            let socket = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7000)
            return ThreadRunner<ClientResult> {
                var result = ClientResult()
                var i = 0
                do {
                    while !stop.load(ordering: .relaxed) {
                        i += 1
                        if try socket.command("SET c\(client)k\(i) v\(i * 7)") == "OK" {
                            result.acknowledged.append(i)
                            acknowledged.withLock { $0[client] += 1 }
                        }
                        let reply = try socket.command("INCR c\(client)counter")
                        guard reply == "VALUE \(result.counter + 1)" else {
                            result.error = "counter went from \(result.counter) to '\(reply)'"
                            return result
                        }
                        result.counter += 1
                        if killed.load(ordering: .relaxed) {
                            repliesAfterKill.add(1, ordering: .relaxed)
                            afterKill.withLock { $0[client] += 1 }
                        }
                    }
                    // Everything this client was told is still true.
                    for key in result.acknowledged where try socket.command("GET c\(client)k\(key)") != "VALUE v\(key * 7)" {
                        result.error = "acknowledged SET c\(client)k\(key) lost"
                        return result
                    }
                } catch {
                    result.error = "\(error)"
                }
                return result
            }
        }
        #expect(eventually(timeout: 60) { acknowledged.withLock { $0.min()! } >= 21 }, "every client is served before the kill")
        primary.signal(SIGKILL)
        killed.store(true, ordering: .relaxed)
        _ = primary.waitForExit()
        #expect(eventually(timeout: 60) { afterKill.withLock { $0.min()! } >= 30 }, "every client is served after the kill; standby: \(standby.standardError.text)")
        stop.store(true, ordering: .relaxed)
        let results = try clients.map { try $0.join() }
        for (index, result) in results.enumerated() {
            #expect(result.error == nil, "client \(index): \(result.error ?? "")")
            #expect(result.acknowledged.count > 20, "client \(index) made progress")
        }
        #expect(standby.standardError.text.contains("taking over from checkpoint"))
        #expect(standby.standardError.text.contains("1 addresses"), "the standby announced the guest's address")
        print("kvstore failover across processes: \(results.map(\.counter)) increments, \(repliesAfterKill.load(ordering: .relaxed)) replies after the kill")
        standby.signal(SIGTERM)
        #expect(standby.waitForExit())
    }
}
