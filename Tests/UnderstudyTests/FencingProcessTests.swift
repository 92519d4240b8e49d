import Foundation
import TestGuests
import Testing
import Understudy
import UnderstudyEtcd

/// Fencing with a real etcd (issue "one active copy"): primary and standby
/// processes with `--arbiter` protect the kvstore guest, each with its own tap
/// on one bridge; a client in its own network namespace holds a TCP connection
/// and writes (`KVStoreWorldClient`). Partitions are made by proxies on the
/// links (the replication link, a host's link to etcd) that stop passing
/// anything, in both directions, without closing a connection. Every case is
/// checked from the world's side: the client's log is one consistent history
/// (its counter never goes back or skips, every acknowledged key reads back,
/// no reply from two copies), and the frames each copy released through its
/// tap show that a copy that lost never released anything again.
@Suite("Fencing across processes", .enabled(if: networkTestsAvailable, "needs root, /dev/kvm, /dev/net/tun"),
       .deadline(minutes: 10), .serialized)
struct FencingProcessTests {
    /// 3 s natively; longer where KVM is slower (the box), so that a renewal
    /// a slow host delays does not look like a partition.
    static var lease: String { "\(Int((3 * TestHost.slowdown).rounded(.up)))s" }

    /// A protected kvstore guest: the processes, the client's network and each copy's tap.
    struct Pair {
        let standby: ChildProcess, primary: ChildProcess
        let network: TestNetwork
        let primaryTap: String, standbyTap: String

        /// Frames each copy released to the world so far.
        var releasedByPrimary: Int { network.framesReleased(through: primaryTap) }
        var releasedByStandby: Int { network.framesReleased(through: standbyTap) }
    }

    /// A standby and a primary with `--arbiter`: the standby reaches etcd at
    /// `standbyEtcd`, the primary at `primaryEtcd`, the primary reaches the
    /// standby at `link`'s port.
    static func pair(standbyEtcd: String, primaryEtcd: String, link: (SocketAddress) throws -> UInt16) throws -> Pair {
        _ = try GuestPrograms.image("kvstore")
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/kvstore.elf").path
        let network = try TestNetwork()
        let primaryTap = try network.addTap(), standbyTap = try network.addTap()
        let standby = try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:0", "--tap", standbyTap, "--heartbeat-timeout", "1s",
                                                              "--arbiter", standbyEtcd, "--guest-name", "g1", "--lease-time", lease])
        let port = try #require(standby.listeningPort(), "\(standby.standardError.text)")
        let primary = try ChildProcess("understudy-primary", [
            "--standby", "127.0.0.1:\(try link(SocketAddress(host: "127.0.0.1", port: port)))", "--guest", image,
            "--cmdline", "ip=10.77.0.2 mask=255.255.255.0", "--tap", primaryTap, "--memory", "64M", "--epoch", "5ms",
            "--heartbeat-timeout", "1s", "--status-interval", "1s",
            "--arbiter", primaryEtcd, "--guest-name", "g1", "--lease-time", lease])
        #expect(eventually(timeout: 120) {
            (primary.standardError.text.contains("protected by the standby") && primary.standardOutput.text.contains("listening"))
                || !primary.isRunning
        }, "primary: \(primary.standardError.text)")
        return Pair(standby: standby, primary: primary, network: network, primaryTap: primaryTap, standbyTap: standbyTap)
    }

    /// Starts the client (a reply that takes `timeout` seconds makes it
    /// connect again) and waits until it has been served `rounds` rounds.
    static func client(of pair: Pair, rounds: Int = 20, timeout: Int = 5) throws -> KVStoreWorldClient {
        let client = try KVStoreWorldClient(network: pair.network, timeout: timeout)
        #expect(eventually(timeout: 60) { client.replies >= 2 * rounds }, "the client is served: \(pair.primary.standardError.text.suffix(2000))")
        return client
    }

    /// Waits until `client` has been served `rounds` more rounds.
    static func expectServed(_ client: KVStoreWorldClient, rounds: Int = 20, _ context: @autoclosure () -> String) {
        let before = client.replies
        #expect(eventually(timeout: 120) { client.replies >= before + 2 * rounds }, "the client is served on: \(context())")
    }

    /// The world's log is one history.
    static func expectOneHistory(_ log: KVStoreWorldClient.Log) {
        #expect(log.inconsistencies.isEmpty, "the client saw two histories: \(log.inconsistencies.prefix(10))")
        #expect(log.acknowledged.count >= 20, "the client wrote throughout: \(log.acknowledged.count) acknowledged SETs")
        print("fencing: the client saw \(log.acknowledged.count) acknowledged SETs, counter \(log.counter.last ?? 0), \(log.reconnects) reconnects")
    }

    /// The primary kept the guest on one connection, the standby took nothing
    /// over and released nothing; then both stop in order.
    static func expectNoTakeoverAndStop(_ pair: Pair, client: KVStoreWorldClient) throws {
        let (standby, primary) = (pair.standby, pair.primary)
        #expect(standby.isRunning && pair.releasedByStandby == 0, "no takeover: \(standby.standardError.text.suffix(2000))")
        let log = try client.stop()
        expectOneHistory(log)
        #expect(log.reconnects == 0, "the client's connection survived: \(log.lastFailure ?? "")")
        primary.signal(SIGTERM)
        #expect(primary.waitForExit())
        #expect(standby.waitForExit(timeout: 30), "the standby is told goodbye")
    }

    /// Issue test 1: only the replication link is cut; both still reach etcd.
    /// The standby loses its primary but cannot win the key (the primary keeps
    /// renewing); the primary, before it runs on alone, raises the generation,
    /// which tells the standby its replica is stale: it never takes over.
    /// Exactly one copy runs and releases, and the client's connection survives.
    @Test func aCutReplicationLinkLeavesOneActiveCopy() throws {
        let etcd = try EtcdCluster()
        var proxy: DamagingProxy?
        let pair = try Self.pair(standbyEtcd: etcd.url, primaryEtcd: etcd.url) { target in
            proxy = try DamagingProxy(to: target)
            return proxy!.port
        }
        defer { proxy?.stop() }
        let (standby, primary) = (pair.standby, pair.primary)
        #expect(primary.standardError.text.contains("holding the guest's key"), "\(primary.standardError.text)")
        let client = try Self.client(of: pair)
        proxy?.cut()
        #expect(eventually(timeout: 60) { primary.standardError.text.contains("runs on without its standby") }, "primary: \(primary.standardError.text)")
        #expect(eventually(timeout: 60) { !standby.isRunning }, "standby: \(standby.standardError.text)")
        #expect(standby.standardError.text.contains("no takeover: the guest went on without this standby"), "\(standby.standardError.text)")
        #expect(standby.exitStatus == 1)
        #expect(!standby.standardError.text.contains("taking over from checkpoint"))
        Self.expectServed(client, "\(primary.standardError.text.suffix(2000))")
        let log = try client.stop()
        Self.expectOneHistory(log)
        #expect(log.reconnects == 0, "the client's connection survived: \(log.lastFailure ?? "")")
        #expect(pair.releasedByStandby == 0, "the standby never released anything")
        primary.signal(SIGTERM)
        #expect(primary.waitForExit())
    }

    /// Issue tests 2 and 5: the primary is cut off from etcd and from the
    /// standby (the client still reaches it). It stops releasing within its
    /// lease; the standby wins the key (generation 2) only after that, takes
    /// over and serves the client. When the partition heals, the old primary
    /// finds it was superseded: it stops for good, says why, and released not
    /// one frame after the standby took over.
    @Test func anIsolatedPrimaryGoesQuietAndTheStandbyTakesOver() throws {
        let etcd = try EtcdCluster()
        let etcdProxy = try DamagingProxy(to: SocketAddress(host: "127.0.0.1", port: etcd.members[0].clientPort))
        defer { etcdProxy.stop() }
        var link: DamagingProxy?
        let pair = try Self.pair(standbyEtcd: etcd.url, primaryEtcd: "etcd://127.0.0.1:\(etcdProxy.port)") { target in
            link = try DamagingProxy(to: target)
            return link!.port
        }
        defer { link?.stop() }
        let (standby, primary) = (pair.standby, pair.primary)
        let client = try Self.client(of: pair)
        etcdProxy.cut()
        link?.cut()
        #expect(eventually(timeout: 120) { standby.standardError.text.contains("taking over from checkpoint") }, "standby: \(standby.standardError.text)")
        let releasedByPrimary = pair.releasedByPrimary
        #expect(releasedByPrimary > 0, "the primary served the client through its tap before the partition")
        #expect(standby.standardError.text.contains("waiting for its lease to expire"), "the standby said what it waited for: \(standby.standardError.text)")
        #expect(primary.standardError.text.contains("cannot renew the guest's key"), "\(primary.standardError.text.suffix(3000))")
        Self.expectServed(client, "standby: \(standby.standardError.text.suffix(2000))")
        // Heal: the old primary learns it was superseded and stops for good.
        etcdProxy.heal()
        link?.heal()
        #expect(primary.waitForExit(timeout: 120), "the superseded primary stops: \(primary.standardError.text.suffix(3000))")
        #expect(primary.exitStatus == 1)
        #expect(primary.standardError.text.contains("another copy took the guest over (generation 2"), "\(primary.standardError.text.suffix(3000))")
        #expect(pair.releasedByPrimary == releasedByPrimary, "not one frame from the old primary after the takeover")
        Self.expectServed(client, "after the heal: \(standby.standardError.text.suffix(2000))")
        Self.expectOneHistory(try client.stop())
        standby.signal(SIGTERM)
        #expect(standby.waitForExit())
    }

    /// The primary alone is cut off from etcd (its standby still takes its
    /// checkpoints, so nobody can take over): once its grant is no longer
    /// certainly valid it releases nothing, though the guest runs and the
    /// client waits on its connection; when etcd answers again it holds the
    /// key again with the same generation (no takeover in between) and
    /// releases what it held: the client goes on, on the same connection.
    @Test func aPrimaryCutFromEtcdHoldsItsOutputUntilItHoldsTheKeyAgain() throws {
        let etcd = try EtcdCluster()
        let etcdProxy = try DamagingProxy(to: SocketAddress(host: "127.0.0.1", port: etcd.members[0].clientPort))
        defer { etcdProxy.stop() }
        let pair = try Self.pair(standbyEtcd: etcd.url, primaryEtcd: "etcd://127.0.0.1:\(etcdProxy.port)") { $0.port }
        let primary = pair.primary
        let client = try Self.client(of: pair, timeout: 600)
        etcdProxy.cut()
        let lapsed = { primary.standardError.text.components(separatedBy: "grant LAPSED, output held").count - 1 }
        // From the second status line that finds the grant lapsed to the fourth, not one reply.
        #expect(eventually(timeout: 60) { lapsed() >= 2 }, "primary: \(primary.standardError.text.suffix(3000))")
        let replies = client.replies, frames = pair.releasedByPrimary
        #expect(eventually(timeout: 60) { lapsed() >= 4 }, "primary: \(primary.standardError.text.suffix(3000))")
        #expect(client.replies == replies && pair.releasedByPrimary == frames, "nothing released without a certainly valid grant")
        etcdProxy.heal()
        #expect(eventually(timeout: 60) { primary.standardError.text.contains("the guest's key is held again, with no takeover in between") },
                "primary: \(primary.standardError.text.suffix(3000))")
        Self.expectServed(client, "\(primary.standardError.text.suffix(2000))")
        try Self.expectNoTakeoverAndStop(pair, client: client)
    }

    /// Issue test 3: the standby is cut off from etcd only; the primary is then
    /// killed. Without the key there is no takeover, however long it waits:
    /// the client is served by nobody, and the standby releases nothing.
    @Test func aStandbyWithoutTheArbiterNeverTakesOver() throws {
        let etcd = try EtcdCluster()
        let etcdProxy = try DamagingProxy(to: SocketAddress(host: "127.0.0.1", port: etcd.members[0].clientPort))
        defer { etcdProxy.stop() }
        let pair = try Self.pair(standbyEtcd: "etcd://127.0.0.1:\(etcdProxy.port)", primaryEtcd: etcd.url) { $0.port }
        let (standby, primary) = (pair.standby, pair.primary)
        let client = try Self.client(of: pair)
        etcdProxy.cut()
        primary.signal(SIGKILL)
        _ = primary.waitForExit()
        let unreachable = { standby.standardError.text.components(separatedBy: "the arbiter cannot be reached").count - 1 }
        #expect(eventually(timeout: 60) { unreachable() >= 1 }, "standby: \(standby.standardError.text)")
        // The primary's lease runs out: the key is free in etcd, and a standby
        // that could reach it would take over now. This one keeps trying (it
        // says so every 5 s), and does not.
        let arbiter = try EtcdArbiter(url: etcd.url, guest: "g1", leaseTime: .seconds(Int(TestHost.seconds(3).rounded(.up))))
        #expect(eventually(timeout: 60) { (try? arbiter.holder().holder) == nil }, "the killed primary's lease expires")
        let replies = client.replies
        let attempts = unreachable()
        #expect(eventually(timeout: 60) { unreachable() >= attempts + 2 }, "standby: \(standby.standardError.text)")
        #expect(!standby.standardError.text.contains("taking over from checkpoint"))
        #expect(standby.standardOutput.data.isEmpty && pair.releasedByStandby == 0, "nothing ran on the standby")
        let log = try client.stop(readingBack: false)
        #expect(log.acknowledged.count + log.counter.count == replies, "no reply after the primary's lease ran out")
        Self.expectOneHistory(log)
        standby.signal(SIGTERM)
        #expect(standby.waitForExit())
    }

    /// Issue test 4: three etcd members, the leader killed while the guest is
    /// protected: renewals go on through the others, the primary stays
    /// protected with its generation and keeps serving the client on its
    /// connection, nobody takes over.
    @Test func losingTheEtcdLeaderChangesNothing() throws {
        let etcd = try EtcdCluster(size: 3)
        let pair = try Self.pair(standbyEtcd: etcd.url, primaryEtcd: etcd.url) { $0.port }
        let primary = pair.primary
        let client = try Self.client(of: pair)
        etcd.kill(try etcd.leader())
        let renewedAfter = { primary.standardError.text.components(separatedBy: "fenced: generation 1, grant valid").count - 1 }
        let before = renewedAfter()
        // Several status lines (one a second) with a valid grant, and replies, after the leader's loss.
        #expect(eventually(timeout: 60) { renewedAfter() >= before + 4 }, "primary: \(primary.standardError.text.suffix(3000))")
        Self.expectServed(client, "\(primary.standardError.text.suffix(2000))")
        // (A grant may lapse for a moment while etcd elects a leader on a loaded
        // host: output then waits, and the key is renewed with its generation.)
        #expect(!primary.standardError.text.contains("RUNNING UNPROTECTED") && !primary.standardError.text.contains("generation 2"),
                "\(primary.standardError.text.suffix(3000))")
        try Self.expectNoTakeoverAndStop(pair, client: client)
    }

    /// Fencing and re-protection together: the copy that took over (holding
    /// generation 2) raises the generation before it runs without a standby,
    /// is protected again by a standby started on the failed host, and when
    /// it is killed in turn that standby takes the key with a higher
    /// generation still (4, and 5 to run on alone), and the client is served
    /// on, one history throughout.
    @Test func aReprotectedGuestFailsBackWithAHigherGeneration() throws {
        let etcd = try EtcdCluster()
        let first = try EtcdCluster.freePort(), second = try EtcdCluster.freePort()
        _ = try GuestPrograms.image("kvstore")
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/kvstore.elf").path
        let network = try TestNetwork()
        let taps = [try network.addTap(), try network.addTap()]
        let fencing = ["--arbiter", etcd.url, "--guest-name", "g1", "--lease-time", Self.lease]
        func standby(tap: String, port: UInt16, reprotect: UInt16) throws -> ChildProcess {
            try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:\(port)", "--tap", tap, "--heartbeat-timeout", "1s",
                                                    "--reprotect", "127.0.0.1:\(reprotect)"] + fencing)
        }
        let taker = try standby(tap: taps[1], port: second, reprotect: first)
        let primary = try ChildProcess("understudy-primary", [
            "--standby", "127.0.0.1:\(second)", "--guest", image, "--cmdline", "ip=10.77.0.2 mask=255.255.255.0",
            "--tap", taps[0], "--memory", "64M", "--epoch", "5ms", "--heartbeat-timeout", "1s"] + fencing)
        #expect(eventually(timeout: 120) { primary.standardError.text.contains("protected by the standby") || !primary.isRunning },
                "primary: \(primary.standardError.text)")
        let client = try KVStoreWorldClient(network: network, timeout: 600)
        #expect(eventually(timeout: 60) { client.replies >= 40 })
        primary.signal(SIGKILL)
        _ = primary.waitForExit()
        #expect(eventually(timeout: 120) { taker.standardError.text.contains("generation 3: this copy runs on without its standby") },
                "the copy that took over raised the generation before running alone: \(taker.standardError.text.suffix(3000))")
        let back = try standby(tap: taps[0], port: first, reprotect: second)
        #expect(eventually(timeout: 120) { taker.standardError.text.contains("protected by the standby") },
                "protected again: \(taker.standardError.text.suffix(3000))")
        Self.expectServed(client, "after re-protection: \(taker.standardError.text.suffix(2000))")
        taker.signal(SIGKILL)
        _ = taker.waitForExit()
        Self.expectServed(client, "after failing back: \(back.standardError.text.suffix(3000))")
        #expect(back.standardError.text.contains("taking over from checkpoint"))
        // It took the key at generation 4, and raised it to 5 to run on without a standby.
        #expect(eventually(timeout: 60) { back.standardError.text.contains("generation 5: this copy runs on without its standby") },
                "\(back.standardError.text.suffix(3000))")
        let arbiter = try EtcdArbiter(url: etcd.url, guest: "g1", leaseTime: .seconds(3))
        #expect(try arbiter.holder().generation == 5)
        Self.expectOneHistory(try client.stop())
        back.signal(SIGTERM)
        #expect(back.waitForExit(timeout: 60))
    }

    /// A planned switchover with an arbiter, there and back: the primary
    /// releases the guest's key before it hands the guest over, so the standby
    /// wins it at once (it never waits for a lease) one generation up; the
    /// copy that handed over releases no frame afterwards; the client's
    /// connection and history go on.
    @Test func aSwitchoverHandsTheKeyOverOneGenerationUp() throws {
        let etcd = try EtcdCluster()
        let ports = [try EtcdCluster.freePort(), try EtcdCluster.freePort()]
        _ = try GuestPrograms.image("kvstore")
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/kvstore.elf").path
        let network = try TestNetwork()
        let taps = [try network.addTap(), try network.addTap()]
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fenced-switchover-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let sockets = ["\(directory)/a.sock", "\(directory)/b.sock"]
        let fencing = ["--arbiter", etcd.url, "--guest-name", "g1", "--lease-time", Self.lease]
        let standby = try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:\(ports[1])", "--tap", taps[1], "--heartbeat-timeout", "1s",
                                                              "--control", sockets[1]] + fencing)
        #expect(standby.listeningPort() == ports[1])
        let primary = try ChildProcess("understudy-primary", [
            "--standby", "127.0.0.1:\(ports[1])", "--listen", "127.0.0.1:\(ports[0])", "--control", sockets[0], "--guest", image,
            "--cmdline", "ip=10.77.0.2 mask=255.255.255.0", "--tap", taps[0], "--memory", "64M", "--epoch", "5ms",
            "--heartbeat-timeout", "1s"] + fencing)
        let hosts = [primary, standby]
        defer { for process in hosts where process.isRunning { process.signal(SIGKILL) } }
        #expect(eventually(timeout: 120) { primary.standardError.text.contains("protected by the standby") || !primary.isRunning },
                "primary: \(primary.standardError.text)")
        let client = try KVStoreWorldClient(network: network, timeout: 600)
        #expect(eventually(timeout: 60) { client.replies >= 40 })
        let arbiter = try EtcdArbiter(url: etcd.url, guest: "g1", leaseTime: .seconds(3))
        var generation = try arbiter.holder().generation
        for (from, to) in [(0, 1), (1, 0)] {
            let reply = try ControlClient.send(.switchover, to: sockets[from], timeout: .seconds(120))
            #expect(reply.ok, "switchover from host \(from): \(reply.message ?? "") \(hosts[from].standardError.text.suffix(2000))")
            let released = network.framesReleased(through: taps[from])
            Self.expectServed(client, "after the switchover to host \(to): \(hosts[to].standardError.text.suffix(3000))")
            #expect(network.framesReleased(through: taps[from]) == released, "the copy that handed over released nothing more")
            #expect(eventually(timeout: 60) { (try? arbiter.holder().generation).map { $0 > generation } ?? false },
                    "the new primary holds the key one generation up")
            let now = try arbiter.holder().generation
            #expect(now == generation + 1, "one generation per switchover: \(generation) to \(now)")
            generation = now
            #expect(!hosts[to].standardError.text.contains("waiting for its lease to expire"), "the key was handed over, not waited for")
            #expect(eventually(timeout: 120) { (try? ControlClient.send(.status, to: sockets[to]))?.status?.state == "protected" },
                    "protected by the old primary: \(hosts[to].standardError.text.suffix(2000))")
        }
        let log = try client.stop()
        Self.expectOneHistory(log)
        #expect(log.reconnects == 0, "one connection throughout: \(log.lastFailure ?? "")")
        primary.signal(SIGTERM)
        #expect(primary.waitForExit(timeout: 60), "\(primary.standardError.text.suffix(2000))")
        #expect(standby.waitForExit(timeout: 60), "\(standby.standardError.text.suffix(2000))")
    }

    /// A SIGKILLed primary with an arbiter: the standby takes over once the
    /// primary's lease ran out and serves the client on its connection.
    @Test func aKilledPrimaryIsReplacedAfterItsLease() throws {
        let etcd = try EtcdCluster()
        let pair = try Self.pair(standbyEtcd: etcd.url, primaryEtcd: etcd.url) { $0.port }
        let (standby, primary) = (pair.standby, pair.primary)
        let client = try Self.client(of: pair)
        primary.signal(SIGKILL)
        _ = primary.waitForExit()
        Self.expectServed(client, "standby: \(standby.standardError.text.suffix(2000))")
        #expect(standby.standardError.text.contains("taking over from checkpoint"))
        #expect(standby.standardError.text.contains("holding the guest's key"), "\(standby.standardError.text)")
        Self.expectOneHistory(try client.stop())
        standby.signal(SIGTERM)
        #expect(standby.waitForExit())
    }
}
