import Foundation
import TestGuests
import Testing
import Understudy
import UnderstudyEtcd

/// Fencing with a real etcd (issue "one active copy"): primary and standby
/// processes with `--arbiter`, the workload guest, and partitions made by
/// proxies on the links (the replication link, a host's link to etcd) that
/// stop passing anything, in both directions, without closing a connection.
/// Every case is checked from the world's side: the guest's console as the
/// two processes released it is one history (the workload's deterministic
/// stream), and a copy that lost never releases anything again.
@Suite("Fencing across processes", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 10), .serialized)
struct FencingProcessTests {
    /// 3 s natively; longer where KVM is slower (the box), so that a renewal
    /// a slow host delays does not look like a partition.
    static var lease: String { "\(Int((3 * TestHost.slowdown).rounded(.up)))s" }

    /// A standby and a primary with `--arbiter`: the standby reaches etcd at
    /// `standbyEtcd`, the primary at `primaryEtcd`, the primary reaches the
    /// standby at `link`'s port.
    static func pair(standbyEtcd: String, primaryEtcd: String, link: (SocketAddress) throws -> UInt16) throws -> (ChildProcess, ChildProcess) {
        let standby = try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:0", "--heartbeat-timeout", "1s",
                                                              "--arbiter", standbyEtcd, "--guest-name", "g1", "--lease-time", lease])
        let port = try #require(standby.listeningPort(), "\(standby.standardError.text)")
        let primary = try ChildProcess("understudy-primary", [
            "--standby", "127.0.0.1:\(try link(SocketAddress(host: "127.0.0.1", port: port)))", "--memory", "32M", "--epoch", "5ms",
            "--heartbeat-timeout", "1s", "--status-interval", "1s", "--cmdline", ReplicationProcessTests.cmdline,
            "--arbiter", primaryEtcd, "--guest-name", "g1", "--lease-time", lease])
        #expect(eventually(timeout: 120) { primary.standardError.text.contains("protected by the standby") || !primary.process.isRunning },
                "primary: \(primary.standardError.text)")
        return (standby, primary)
    }

    static func lines(_ process: ChildProcess) -> Int { process.standardOutput.lines.count }

    /// Issue test 1: only the replication link is cut; both still reach etcd.
    /// The standby loses its primary but cannot win the key (the primary keeps
    /// renewing); the primary, before it runs on alone, raises the generation,
    /// which tells the standby its replica is stale: it never takes over.
    /// Exactly one copy runs and releases.
    @Test func aCutReplicationLinkLeavesOneActiveCopy() throws {
        let etcd = try EtcdCluster()
        var proxy: DamagingProxy?
        let (standby, primary) = try Self.pair(standbyEtcd: etcd.url, primaryEtcd: etcd.url) { target in
            proxy = try DamagingProxy(to: target)
            return proxy!.port
        }
        defer { proxy?.stop() }
        #expect(primary.standardError.text.contains("holding the guest's key"), "\(primary.standardError.text)")
        #expect(primary.standardError.text.contains("fenced: generation 1") || eventually(timeout: 30) { primary.standardError.text.contains("fenced: generation 1") })
        proxy?.cut()
        #expect(eventually(timeout: 60) { primary.standardError.text.contains("runs on without its standby") }, "primary: \(primary.standardError.text)")
        #expect(eventually(timeout: 60) { !standby.process.isRunning }, "standby: \(standby.standardError.text)")
        #expect(standby.standardError.text.contains("no takeover: the guest went on without this standby"), "\(standby.standardError.text)")
        #expect(standby.exitStatus == 1)
        #expect(!standby.standardError.text.contains("taking over from checkpoint"))
        #expect(standby.standardOutput.data.isEmpty, "nothing ran on the standby")
        let after = Self.lines(primary)
        #expect(eventually(timeout: 60) { Self.lines(primary) > after + 5 }, "the primary runs on and releases: \(primary.standardError.text.suffix(2000))")
        primary.signal(SIGTERM)
        #expect(primary.waitForExit())
        ReplicationProcessTests.expectContinuous(primary: primary.standardOutput.data, standby: [], standbyLog: "")
    }

    /// Issue tests 2 and 5: the primary is cut off from etcd and from the
    /// standby. It stops releasing within its lease; the standby wins the key
    /// (generation 2) only after that, takes over, and the guest's output goes
    /// on there as one history. When the partition heals, the old primary
    /// finds it was superseded: it stops for good, says why, and never
    /// released anything after the standby took over.
    @Test func anIsolatedPrimaryGoesQuietAndTheStandbyTakesOver() throws {
        let etcd = try EtcdCluster()
        let etcdProxy = try DamagingProxy(to: SocketAddress(host: "127.0.0.1", port: etcd.members[0].clientPort))
        defer { etcdProxy.stop() }
        var link: DamagingProxy?
        let (standby, primary) = try Self.pair(standbyEtcd: etcd.url, primaryEtcd: "etcd://127.0.0.1:\(etcdProxy.port)") { target in
            link = try DamagingProxy(to: target)
            return link!.port
        }
        defer { link?.stop() }
        #expect(eventually(timeout: 60) { Self.lines(primary) >= 3 })
        etcdProxy.cut()
        link?.cut()
        #expect(eventually(timeout: 120) { standby.standardError.text.contains("taking over from checkpoint") }, "standby: \(standby.standardError.text)")
        #expect(standby.standardError.text.contains("waiting for its lease to expire"), "the standby said what it waited for: \(standby.standardError.text)")
        let releasedByPrimary = primary.standardOutput.data.count
        #expect(eventually(timeout: 60) { Self.lines(standby) >= 5 }, "the guest runs on the standby: \(standby.standardError.text.suffix(2000))")
        #expect(primary.standardError.text.contains("cannot renew the guest's key"), "\(primary.standardError.text.suffix(3000))")
        // Heal: the old primary learns it was superseded and stops for good.
        etcdProxy.heal()
        link?.heal()
        #expect(primary.waitForExit(timeout: 120), "the superseded primary stops: \(primary.standardError.text.suffix(3000))")
        #expect(primary.exitStatus == 1)
        #expect(primary.standardError.text.contains("another copy took the guest over (generation 2"), "\(primary.standardError.text.suffix(3000))")
        #expect(primary.standardOutput.data.count == releasedByPrimary, "nothing from the old primary after the takeover")
        standby.signal(SIGTERM)
        #expect(standby.waitForExit())
        ReplicationProcessTests.expectContinuous(primary: primary.standardOutput.data, standby: standby.standardOutput.data,
                                                 standbyLog: standby.standardError.text)
    }

    /// Issue test 3: the standby is cut off from etcd only; the primary is then
    /// killed. Without the key there is no takeover, however long it waits.
    @Test func aStandbyWithoutTheArbiterNeverTakesOver() throws {
        let etcd = try EtcdCluster()
        let etcdProxy = try DamagingProxy(to: SocketAddress(host: "127.0.0.1", port: etcd.members[0].clientPort))
        defer { etcdProxy.stop() }
        let (standby, primary) = try Self.pair(standbyEtcd: "etcd://127.0.0.1:\(etcdProxy.port)", primaryEtcd: etcd.url) { $0.port }
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
        let attempts = unreachable()
        #expect(eventually(timeout: 60) { unreachable() >= attempts + 2 }, "standby: \(standby.standardError.text)")
        #expect(!standby.standardError.text.contains("taking over from checkpoint"))
        #expect(standby.standardOutput.data.isEmpty, "nothing ran on the standby")
        standby.signal(SIGTERM)
        #expect(standby.waitForExit())
    }

    /// Issue test 4: three etcd members, the leader killed while the guest is
    /// protected: renewals go on through the others, the primary stays
    /// protected with its generation and keeps releasing, nobody takes over.
    @Test func losingTheEtcdLeaderChangesNothing() throws {
        let etcd = try EtcdCluster(size: 3)
        let (standby, primary) = try Self.pair(standbyEtcd: etcd.url, primaryEtcd: etcd.url) { $0.port }
        #expect(eventually(timeout: 60) { Self.lines(primary) >= 3 })
        etcd.kill(try etcd.leader())
        let renewedAfter = { primary.standardError.text.components(separatedBy: "fenced: generation 1, grant valid").count - 1 }
        let before = renewedAfter(), lines = Self.lines(primary)
        // Several status lines (one a second) with a valid grant, and output, after the leader's loss.
        #expect(eventually(timeout: 60) { renewedAfter() >= before + 4 && Self.lines(primary) > lines + 3 }, "primary: \(primary.standardError.text.suffix(3000))")
        // (A grant may lapse for a moment while etcd elects a leader on a loaded
        // host: output then waits, and the key is renewed with its generation.)
        #expect(!primary.standardError.text.contains("RUNNING UNPROTECTED") && !primary.standardError.text.contains("generation 2"),
                "\(primary.standardError.text.suffix(3000))")
        #expect(standby.process.isRunning && standby.standardOutput.data.isEmpty, "no takeover: \(standby.standardError.text.suffix(2000))")
        primary.signal(SIGTERM)
        #expect(primary.waitForExit())
        #expect(standby.waitForExit(timeout: 30), "the standby is told goodbye")
    }

    /// A SIGKILLed primary with an arbiter: the standby takes over once the
    /// primary's lease ran out, and the output is one history.
    @Test func aKilledPrimaryIsReplacedAfterItsLease() throws {
        let etcd = try EtcdCluster()
        let (standby, primary) = try Self.pair(standbyEtcd: etcd.url, primaryEtcd: etcd.url) { $0.port }
        #expect(eventually(timeout: 60) { Self.lines(primary) >= 3 })
        ReplicationProcessTests.killPrimaryAndExpectTheStandbyContinues(primary, standby, lines: 5)
        #expect(standby.standardError.text.contains("holding the guest's key"), "\(standby.standardError.text)")
    }
}
