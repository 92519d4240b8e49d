import Foundation
import TestGuests
import Testing

/// Re-protection after failover (issue "protection that heals itself"): two
/// hosts, each a process with its own tap on one bridge, take turns. Each
/// standby runs with `--reprotect` pointing at the other host's standby
/// address; when the active copy is killed, the standby takes over and runs
/// the guest unprotected until a standby answers on the other host, which
/// the test then starts there (as an operator would on the repaired host):
/// the guest is copied to it and protected again. Three SIGKILLs in a row,
/// one TCP client connected to the kvstore throughout, writing.
@Suite("Re-protection across processes", .enabled(if: networkTestsAvailable, "needs root, /dev/kvm, /dev/net/tun"),
       .deadline(minutes: 15), .serialized)
struct ReprotectionProcessTests {
    /// One host: its tap and the address its standby listens on.
    struct Host {
        let tap: String
        let port: UInt16
    }

    static func standby(on host: Host, reprotecting other: Host) throws -> ChildProcess {
        let standby = try ChildProcess("understudy-standby", [
            "--listen", "127.0.0.1:\(host.port)", "--tap", host.tap, "--heartbeat-timeout", "2s",
            "--reprotect", "127.0.0.1:\(other.port)", "--status-interval", "1s"])
        #expect(standby.listeningPort() == host.port, "standby: \(standby.standardError.text)")
        return standby
    }

    static func count(_ text: String, _ phrase: String) -> Int { text.components(separatedBy: phrase).count - 1 }

    @Test func threeFailoversInARowWithOneClientConnection() throws {
        _ = try GuestPrograms.image("kvstore")
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/kvstore.elf").path
        let network = try TestNetwork()
        var hosts = [Host(tap: try network.addTap(), port: try EtcdCluster.freePort()),
                     Host(tap: try network.addTap(), port: try EtcdCluster.freePort())]
        var standby = try Self.standby(on: hosts[1], reprotecting: hosts[0])
        var active = try ChildProcess("understudy-primary", [
            "--standby", "127.0.0.1:\(hosts[1].port)", "--guest", image, "--cmdline", "ip=10.77.0.2 mask=255.255.255.0",
            "--tap", hosts[0].tap, "--memory", "64M", "--epoch", "5ms", "--heartbeat-timeout", "2s", "--status-interval", "1s"])
        #expect(eventually(timeout: 60) { active.standardError.text.contains("protected by the standby") && active.standardOutput.text.contains("listening") },
                "primary: \(active.standardError.text)")
        let client = try KVStoreWorldClient(network: network, timeout: 60)
        var processes = [active, standby]
        defer { for process in processes where process.isRunning { process.signal(SIGKILL) } }
        for failover in 1...3 {
            var before = client.replies
            #expect(eventually(timeout: 60) { client.replies >= before + 40 }, "failover \(failover): the client is served while protected")
            active.signal(SIGKILL)
            _ = active.waitForExit()
            let taker = standby
            before = client.replies
            #expect(eventually(timeout: 120) { client.replies >= before + 40 },
                    "failover \(failover): the client is served after the kill: \(taker.standardError.text.suffix(3000))")
            #expect(taker.standardError.text.contains("taking over from checkpoint"), "\(taker.standardError.text.suffix(2000))")
            #expect(taker.standardError.text.contains("RUNNING UNPROTECTED"), "until a standby answers: \(taker.standardError.text.suffix(2000))")
            // The repaired host: a standby there, reprotecting towards the new active host.
            hosts.swapAt(0, 1)                      // hosts[0]: the active copy's, hosts[1]: the one that failed
            standby = try Self.standby(on: hosts[1], reprotecting: hosts[0])
            processes.append(standby)
            active = taker
            let protectedBefore = Self.count(taker.standardError.text, "protected by the standby")
            #expect(eventually(timeout: 120) { Self.count(taker.standardError.text, "protected by the standby") > protectedBefore },
                    "failover \(failover): protected again: \(taker.standardError.text.suffix(3000))")
            before = client.replies
            #expect(eventually(timeout: 60) { client.replies >= before + 40 }, "failover \(failover): served while protected again")
            print("re-protection: failover \(failover) done, \(client.replies / 2) rounds so far")
        }
        let log = try client.stop()
        #expect(log.inconsistencies.isEmpty, "one history across three failovers: \(log.inconsistencies.prefix(10))")
        #expect(log.reconnects == 0, "one connection throughout: \(log.lastFailure ?? "")")
        print("re-protection: 3 failovers, \(log.acknowledged.count) acknowledged SETs (all read back), counter \(log.counter.last ?? 0), \(log.reconnects) reconnects")
        active.signal(SIGTERM)
        #expect(active.waitForExit(timeout: 60), "the last active copy stops: \(active.standardError.text.suffix(2000))")
        #expect(standby.waitForExit(timeout: 60), "its standby is told goodbye: \(standby.standardError.text.suffix(2000))")
    }

    /// The journal guest with a disk image on each host: after the takeover
    /// the standby's image is the guest's disk, and re-protection copies it
    /// to the standby on the failed host (whose image is stale) while the
    /// guest writes. Killed again, the guest fails back there: every record
    /// any copy reported flushed is on that image, intact, and the journal
    /// goes on.
    @Test func theDiskIsCopiedBackToTheFailedHost() throws {
        _ = try GuestPrograms.image("journal")
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/journal.elf").path
        let disks = [JournalImage.makeImage(megabytes: 64), JournalImage.makeImage(megabytes: 64)]
        defer { for disk in disks { try? FileManager.default.removeItem(atPath: disk) } }
        let ports = [try EtcdCluster.freePort(), try EtcdCluster.freePort()]
        func standby(_ host: Int) throws -> ChildProcess {
            try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:\(ports[host])", "--disk", disks[host],
                                                    "--heartbeat-timeout", "2s", "--reprotect", "127.0.0.1:\(ports[1 - host])"])
        }
        let taker = try standby(1)
        #expect(taker.listeningPort() == ports[1])
        let primary = try ChildProcess("understudy-primary", [
            "--standby", "127.0.0.1:\(ports[1])", "--guest", image, "--disk", disks[0], "--memory", "32M",
            "--cmdline", "flush_every=8", "--epoch", "5ms", "--heartbeat-timeout", "2s"])
        defer { for process in [primary, taker] where process.isRunning { process.signal(SIGKILL) } }
        #expect(eventually(timeout: 60) { primary.standardError.text.contains("protected by the standby") }, "primary: \(primary.standardError.text)")
        #expect(eventually(timeout: 60) { JournalImage.flushed(in: primary.standardOutput.lines).count >= 20 })
        primary.signal(SIGKILL)
        _ = primary.waitForExit()
        #expect(eventually(timeout: 60) { JournalImage.flushed(in: taker.standardOutput.lines).count >= 20 },
                "the journal goes on on the standby: \(taker.standardError.text.suffix(2000))")
        let back = try standby(0)
        defer { if back.isRunning { back.signal(SIGKILL) } }
        #expect(eventually(timeout: 120) { taker.standardError.text.contains("protected by the standby") },
                "protected again, disk included: \(taker.standardError.text.suffix(3000))")
        let before = JournalImage.flushed(in: taker.standardOutput.lines).count
        #expect(eventually(timeout: 60) { JournalImage.flushed(in: taker.standardOutput.lines).count >= before + 20 })
        taker.signal(SIGKILL)
        _ = taker.waitForExit()
        #expect(eventually(timeout: 60) { JournalImage.flushed(in: back.standardOutput.lines).count >= 20 },
                "the journal goes on back on the first host: \(back.standardError.text.suffix(2000))")
        back.signal(SIGTERM)
        #expect(back.waitForExit(timeout: 60), "\(back.standardError.text.suffix(2000))")
        let reported = [primary, taker, back].flatMap { JournalImage.flushed(in: $0.standardOutput.lines) }
        let onDisk = try JournalImage.recordCount(path: disks[0])
        print("re-protection with a disk: reported up to \(reported.max() ?? 0) (primary \(JournalImage.flushed(in: primary.standardOutput.lines).last ?? 0), " +
              "taker \(JournalImage.flushed(in: taker.standardOutput.lines).last ?? 0)), \(onDisk) records on the first host's image")
        #expect(onDisk >= reported.max() ?? .max,
                "every record reported flushed is on the first host's image, intact (\(onDisk) records, reported up to \(reported.max() ?? 0))")
    }
}
