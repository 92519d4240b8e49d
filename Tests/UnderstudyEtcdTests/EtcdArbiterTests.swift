import Foundation
import TestGuests
import Testing
import Understudy
import UnderstudyEtcd

/// The arbiter against real etcd processes: one key per guest, exclusive, a
/// generation that only grows, a lease whose local validity always ends before
/// etcd lets anyone else in, and a lost holder that may come back only if
/// nobody took over meanwhile.
@Suite("Arbiter in etcd", .serialized, .deadline(minutes: 10))
struct EtcdArbiterTests {
    /// Lease and margin are scaled where KVM (and so this host) is slower: the box.
    static func arbiter(_ cluster: EtcdCluster, guest: String = "g1", lease: Duration = .seconds(2),
                        margin: Duration = .milliseconds(500)) throws -> EtcdArbiter {
        try EtcdArbiter(gateway: EtcdGateway(endpoints: try EtcdGateway.endpoints(from: cluster.url)), guest: guest,
                        leaseTime: TestHost.scaled(lease), safetyMargin: TestHost.scaled(margin))
    }

    @Test func theKeyIsExclusiveAndGenerationsOnlyGrow() throws {
        let cluster = try EtcdCluster()
        let a = try Self.arbiter(cluster), b = try Self.arbiter(cluster)
        #expect(try a.holder().holder == nil && a.holder().generation == 0)
        let first = try a.acquire(holder: "host-a")
        #expect(first.generation == 1 && first.holder.name == "host-a")
        #expect(throws: ArbiterError.held(by: ArbiterHolder(name: "host-a", generation: 1))) { try b.acquire(holder: "host-b") }
        a.release(first)
        let second = try b.acquire(holder: "host-b")
        #expect(second.generation == 2)
        #expect(try a.holder().holder == ArbiterHolder(name: "host-b", generation: 2))
        // A copy that held generation 1 can never come back.
        #expect(throws: ArbiterError.superseded(by: 2)) { try a.reacquire(first) }
        // Another guest's key is another key.
        let other = try Self.arbiter(cluster, guest: "g2").acquire(holder: "host-a")
        #expect(other.generation == 1)
    }

    /// The holder stops renewing. The other copy keeps trying to acquire and
    /// gets the key only after the holder's own validity ended: at no instant
    /// could both have released output.
    @Test func anExpiredLeaseLetsTheOtherInOnlyAfterTheHolderStopped() throws {
        let cluster = try EtcdCluster()
        let a = try Self.arbiter(cluster), b = try Self.arbiter(cluster)
        let grant = try a.acquire(holder: "host-a")
        var attempts = 0
        var taken: ArbiterGrant?
        while taken == nil {
            attempts += 1
            do {
                taken = try b.acquire(holder: "host-b")
            } catch {
                #expect(error == .held(by: grant.holder))
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        let acquiredAt = ContinuousClock.now
        #expect(acquiredAt > grant.validUntil, "the old holder's validity ended \(acquiredAt - grant.validUntil) before the takeover")
        #expect(taken?.generation == 2 && attempts > 1)
        #expect(throws: ArbiterError.self) { try a.renew(grant) }
        #expect(throws: ArbiterError.superseded(by: 2)) { try a.reacquire(grant) }
    }

    /// Renewing keeps the key past several lease times, and each renewal moves
    /// the validity on; the other copy is refused throughout.
    @Test func renewalKeepsTheKey() throws {
        let cluster = try EtcdCluster()
        let a = try Self.arbiter(cluster), b = try Self.arbiter(cluster)
        var grant = try a.acquire(holder: "host-a")
        let started = ContinuousClock.now
        var renewals = 0
        while ContinuousClock.now - started < a.leaseTime * 3 {
            Thread.sleep(forTimeInterval: 0.3)
            let before = grant.validUntil
            grant.validUntil = try a.renew(grant)
            #expect(grant.validUntil > before)
            #expect(throws: ArbiterError.held(by: grant.holder)) { try b.acquire(holder: "host-b") }
            renewals += 1
        }
        #expect(renewals >= 3)
        #expect(try a.holder().holder == grant.holder)
    }

    /// A holder whose lease expired with nobody taking over gets the key back
    /// with its own generation; then it is exclusive again.
    @Test func aLostLeaseIsRegainedOnlyWithoutATakeover() throws {
        let cluster = try EtcdCluster()
        let a = try Self.arbiter(cluster), b = try Self.arbiter(cluster)
        let grant = try a.acquire(holder: "host-a")
        #expect(eventually(timeout: 30) { (try? a.holder().holder) == nil }, "the lease expires")
        #expect(throws: ArbiterError.self) { try a.renew(grant) }
        let back = try a.reacquire(grant)
        #expect(back.generation == 1 && back.lease != grant.lease)
        #expect(throws: ArbiterError.held(by: grant.holder)) { try b.acquire(holder: "host-b") }
    }

    /// Three members; the leader is killed: renewals go on through the
    /// others, with at most an election's worth of failed attempts, before
    /// the grant's validity runs out.
    @Test func renewalSurvivesTheLossOfTheLeader() throws {
        let cluster = try EtcdCluster(size: 3)
        let a = try Self.arbiter(cluster, lease: .seconds(5))
        var grant = try a.acquire(holder: "host-a")
        cluster.kill(try cluster.leader())
        var renewed = 0, failed = 0
        while renewed < 5 {
            do {
                grant.validUntil = try a.renew(grant)
                renewed += 1
            } catch {
                guard case .unreachable = error else { throw error }
                failed += 1                 // no leader yet: an election is under way
            }
            #expect(ContinuousClock.now < grant.validUntil, "the grant ran out while etcd elected a leader")
            Thread.sleep(forTimeInterval: 0.2)
        }
        #expect(try a.holder().holder == grant.holder)
        print("renewals through the loss of the leader: \(renewed) renewed, \(failed) failed attempts meanwhile")
    }

    @Test func badAddressesAndAnAbsentServiceAreClearErrors() throws {
        #expect(throws: ArbiterError.self) { try EtcdGateway.endpoints(from: "http://127.0.0.1:2379") }
        #expect(throws: ArbiterError.self) { try EtcdGateway.endpoints(from: "etcd://127.0.0.1") }
        #expect(throws: ArbiterError.self) { try EtcdGateway.endpoints(from: "etcd://:2379") }
        #expect(try EtcdGateway.endpoints(from: "etcd://10.0.0.1:2379,h2:2380") == ["10.0.0.1:2379", "h2:2380"])
        let gateway = EtcdGateway(endpoints: ["127.0.0.1:1"], requestTimeout: .milliseconds(500))
        let arbiter = try EtcdArbiter(gateway: gateway, guest: "g1")
        let failure = #expect(throws: ArbiterError.self) { try arbiter.acquire(holder: "host-a") }
        #expect(failure.map { "\($0)" }?.contains("the arbiter is unreachable: 127.0.0.1:1") == true, "\(String(describing: failure))")
        #expect(throws: ArbiterError.self) { try EtcdArbiter(gateway: gateway, guest: "a/b") }
        #expect(throws: ArbiterError.self) { try EtcdArbiter(gateway: gateway, guest: "g", leaseTime: .seconds(1)) }
    }
}
