import Foundation
import TestGuests
import Testing
import Understudy

/// Planned switchover (issue "protection that heals itself"): two hosts, each
/// a process with its own tap on one bridge, the kvstore guest serving a TCP
/// client in the world's namespace. `understudy-ctl switchover`, sent to the
/// active copy, moves the guest to its standby, and the old primary becomes
/// the standby; ten times back and forth under the client's load, with no
/// acknowledged write lost or applied twice, and the client's one connection
/// never reset.
@Suite("Planned switchover across processes", .enabled(if: networkTestsAvailable, "needs root, /dev/kvm, /dev/net/tun"),
       .deadline(minutes: 15), .serialized)
struct SwitchoverProcessTests {
    static func count(_ text: String, _ phrase: String) -> Int { text.components(separatedBy: phrase).count - 1 }

    /// Runs `understudy-ctl` with `arguments`; its exit status and output.
    static func ctl(_ arguments: [String]) throws -> (status: Int32?, output: String) {
        let process = try ChildProcess("understudy-ctl", arguments)
        #expect(process.waitForExit(timeout: 120), "understudy-ctl \(arguments) ends")
        return (process.exitStatus, process.standardOutput.text + process.standardError.text)
    }

    /// A process's status as `understudy-ctl status --json` reports it.
    static func status(_ socket: String) throws -> HostStatus? {
        let (code, output) = try ctl(["status", "--socket", socket, "--json"])
        guard code == 0, let line = output.split(separator: "\n").first else { return nil }
        return try ControlReply(line: Array(line.utf8)).status
    }

    @Test func tenSwitchoversBackAndForthUnderLoad() throws {
        _ = try GuestPrograms.image("kvstore")
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/kvstore.elf").path
        let network = try TestNetwork()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("switchover-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let taps = [try network.addTap(), try network.addTap()]
        let ports = [try EtcdCluster.freePort(), try EtcdCluster.freePort()]
        let sockets = ["\(directory)/a.sock", "\(directory)/b.sock"]
        let standby = try ChildProcess("understudy-standby", [
            "--listen", "127.0.0.1:\(ports[1])", "--tap", taps[1], "--heartbeat-timeout", "2s", "--control", sockets[1]])
        #expect(standby.listeningPort() == ports[1], "standby: \(standby.standardError.text)")
        let primary = try ChildProcess("understudy-primary", [
            "--standby", "127.0.0.1:\(ports[1])", "--listen", "127.0.0.1:\(ports[0])", "--control", sockets[0],
            "--guest", image, "--cmdline", "ip=10.77.0.2 mask=255.255.255.0",
            "--tap", taps[0], "--memory", "64M", "--epoch", "5ms", "--heartbeat-timeout", "2s", "--status-interval", "1s"])
        let hosts = [primary, standby]
        defer { for process in hosts where process.isRunning { process.signal(SIGKILL) } }
        #expect(eventually(timeout: 60) { primary.standardError.text.contains("protected by the standby") && primary.standardOutput.text.contains("listening") },
                "primary: \(primary.standardError.text)")
        let client = try KVStoreWorldClient(network: network, timeout: 60)

        // Only the primary can hand the guest over.
        let refused = try Self.ctl(["switchover", "--socket", sockets[1]])
        #expect(refused.status == 1 && refused.output.contains("this host is the standby"), "\(refused.output)")

        var active = 0
        var pauses: [(handover: Int, world: Duration)] = []
        for switchover in 1...10 {
            let (from, to) = (hosts[active], hosts[1 - active])
            var before = client.replies
            #expect(eventually(timeout: 60) { client.replies >= before + 40 }, "switchover \(switchover): the client is served before it")
            let status = try Self.status(sockets[active])
            #expect(status?.role == .primary && status?.state == "protected", "switchover \(switchover): \(String(describing: status))")
            let protectedBefore = Self.count(to.standardError.text, "protected by the standby")
            let started = ContinuousClock.now
            let (code, output) = try Self.ctl(["switchover", "--socket", sockets[active]])
            #expect(code == 0 && output.contains("handed over"), "switchover \(switchover): \(output) \(from.standardError.text.suffix(2000))")
            before = client.replies
            #expect(eventually(timeout: 60) { client.replies >= before + 40 },
                    "switchover \(switchover): the client is served by the other host: \(to.standardError.text.suffix(3000))")
            #expect(eventually(timeout: 120) { Self.count(to.standardError.text, "protected by the standby") > protectedBefore },
                    "switchover \(switchover): protected by the old primary: \(to.standardError.text.suffix(3000)) \(from.standardError.text.suffix(2000))")
            let handover = output.split(separator: " ").firstIndex(of: "ms;").map { Int(output.split(separator: " ")[$0 - 1]) ?? -1 } ?? -1
            pauses.append((handover, client.longestWait(from: started, to: .now)))
            let (now, old) = (try Self.status(sockets[1 - active]), try Self.status(sockets[active]))
            #expect(now?.role == .primary && now?.state == "protected", "switchover \(switchover): \(String(describing: now))")
            #expect(old?.role == .standby && old?.state == "protecting", "switchover \(switchover): \(String(describing: old))")
            active = 1 - active
            print("switchover \(switchover): handover \(handover) ms at the primary, the client waited at most \(pauses.last?.world.milliseconds ?? 0) ms")
        }
        let log = try client.stop()
        #expect(log.inconsistencies.isEmpty, "one history across ten switchovers: \(log.inconsistencies.prefix(10))")
        #expect(log.reconnects == 0, "one connection throughout: \(log.lastFailure ?? "")")
        #expect(hosts.map { Self.count($0.standardError.text, "the primary hands the guest over") } == [5, 5], "each host took the guest over five times")
        let waits = pauses.map { $0.world.milliseconds }.sorted()
        print("switchover: 10 done, \(log.acknowledged.count) acknowledged SETs (all read back), counter \(log.counter.last ?? 0), \(log.reconnects) reconnects; " +
              "longest client wait per switchover (ms) \(pauses.map { $0.world.milliseconds }), median \(waits[waits.count / 2]), max \(waits.last ?? 0)")
        let (code, output) = try Self.ctl(["stop", "--socket", sockets[active]])
        #expect(code == 0, "\(output)")
        #expect(hosts[active].waitForExit(timeout: 60), "the active copy stops: \(hosts[active].standardError.text.suffix(2000))")
        #expect(hosts[1 - active].waitForExit(timeout: 60), "its standby is told goodbye: \(hosts[1 - active].standardError.text.suffix(2000))")
        #expect(hosts.allSatisfy { $0.exitStatus == 0 }, "both exit 0")
    }
}
