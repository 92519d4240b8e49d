import Foundation
import Understudy

/// The arbiter in etcd (v3, through its JSON gateway: `EtcdGateway`).
///
/// Two keys per guest, under `understudy/<guest>/`:
/// - `holder`: "<generation> <name>", attached to the holder's lease, so it
///   disappears when the lease expires or is revoked;
/// - `generation`: the highest generation ever granted, never leased, never
///   deleted: the fencing token only grows.
///
/// `acquire` is one transaction: if `holder` does not exist and `generation`
/// is still what was just read, put both (holder with a fresh lease,
/// generation + 1). `reacquire` is the same with the generation unchanged and
/// compared by value, so it succeeds only if nobody acquired in between.
/// A lease's validity is counted from before the request that granted or
/// renewed it was sent, minus `safetyMargin`: etcd counts the same time to live
/// from when it handled the request, which is later.
public final class EtcdArbiter: Arbiter {
    public let gateway: EtcdGateway
    public let guest: String
    public let leaseTime: Duration
    /// Subtracted from every validity: clock-rate differences and the time a
    /// copy needs to stop releasing output once it sees it must.
    public let safetyMargin: Duration

    /// `guest` names the guest (the same on both hosts); `leaseTime` at least 2 s
    /// (etcd's granularity is a second), `safetyMargin` below it.
    public init(gateway: EtcdGateway, guest: String, leaseTime: Duration = .seconds(5), safetyMargin: Duration = .seconds(1)) throws(ArbiterError) {
        guard !guest.isEmpty, guest.utf8.count <= 200, !guest.contains("/"), !guest.contains(" ") else {
            throw .invalid("the guest name '\(guest)' must be 1-200 bytes without '/' or spaces")
        }
        guard leaseTime >= .seconds(2), safetyMargin >= .zero, safetyMargin < leaseTime else {
            throw .invalid("a lease time of \(leaseTime) with a safety margin of \(safetyMargin): the lease must be at least 2 s and longer than the margin")
        }
        self.gateway = gateway
        self.guest = guest
        self.leaseTime = leaseTime
        self.safetyMargin = safetyMargin
    }

    /// What the executables' `--arbiter URL --guest-name NAME --lease-time T`
    /// make: the members in `url` (`etcd://HOST:PORT[,HOST:PORT...]`), a safety
    /// margin of a fifth of the lease.
    public convenience init(url: String, guest: String, leaseTime: Duration) throws(ArbiterError) {
        try self.init(gateway: EtcdGateway(endpoints: try EtcdGateway.endpoints(from: url)), guest: guest,
                      leaseTime: leaseTime, safetyMargin: leaseTime / 5)
    }

    /// A holder's name for this process: host and process id.
    public static var processName: String { "\(ProcessInfo.processInfo.hostName) pid \(ProcessInfo.processInfo.processIdentifier)" }

    var holderKey: String { "understudy/\(guest)/holder" }
    var generationKey: String { "understudy/\(guest)/generation" }

    public func acquire(holder name: String, after expected: UInt64? = nil) throws(ArbiterError) -> ArbiterGrant {
        for _ in 0..<8 {
            let (current, generation, generationRevision) = try read()
            if let expected, generation != expected {
                throw generation > expected ? .superseded(by: generation) : .malformed("generation \(generation) below \(expected)")
            }
            if let current { throw .held(by: current) }
            let holder = ArbiterHolder(name: name, generation: generation + 1)
            let (lease, validUntil) = try grantLease()
            let generationUnchanged: [String: Any] = ["key": EtcdGateway.encode(generationKey), "target": "MOD", "result": "EQUAL",
                                                      "mod_revision": String(generationRevision)]
            if try put(holder, lease: lease, onlyIf: generationUnchanged, generation: true) {
                return ArbiterGrant(holder: holder, lease: lease, validUntil: validUntil)
            }
            revoke(lease)       // someone was faster: read again
        }
        throw .unreachable("the key kept changing under eight attempts to acquire it")
    }

    public func reacquire(_ grant: ArbiterGrant) throws(ArbiterError) -> ArbiterGrant {
        let (current, generation, _) = try read()
        if let current, current != grant.holder {
            throw current.generation > grant.generation ? .superseded(by: current.generation) : .held(by: current)
        }
        guard generation == grant.generation else {
            throw generation > grant.generation ? .superseded(by: generation) : .malformed("generation \(generation) below this copy's \(grant.generation)")
        }
        if current == grant.holder, let validUntil = try? renew(grant) {
            return ArbiterGrant(holder: grant.holder, lease: grant.lease, validUntil: validUntil)   // it was never lost
        }
        let (lease, validUntil) = try grantLease()
        let generationIsOurs: [String: Any] = ["key": EtcdGateway.encode(generationKey), "target": "VALUE", "result": "EQUAL",
                                               "value": EtcdGateway.encode(String(grant.generation))]
        guard try put(grant.holder, lease: lease, onlyIf: generationIsOurs, generation: false) else {
            revoke(lease)
            let (now, highest, _) = try read()
            if highest > grant.generation { throw .superseded(by: highest) }
            throw .held(by: now ?? grant.holder)
        }
        return ArbiterGrant(holder: grant.holder, lease: lease, validUntil: validUntil)
    }

    public func advance(_ grant: ArbiterGrant) throws(ArbiterError) -> ArbiterGrant {
        let sent = ContinuousClock.now
        let holder = ArbiterHolder(name: grant.holder.name, generation: grant.generation + 1)
        let stillOurs: [[String: Any]] = [
            ["key": EtcdGateway.encode(holderKey), "target": "VALUE", "result": "EQUAL", "value": EtcdGateway.encode("\(grant.generation) \(grant.holder.name)")],
            ["key": EtcdGateway.encode(holderKey), "target": "LEASE", "result": "EQUAL", "lease": String(grant.lease)],
            ["key": EtcdGateway.encode(generationKey), "target": "VALUE", "result": "EQUAL", "value": EtcdGateway.encode(String(grant.generation))],
        ]
        let answer = try gateway.call("kv/txn", ["compare": stillOurs, "success": [
            ["request_put": ["key": EtcdGateway.encode(holderKey), "value": EtcdGateway.encode("\(holder.generation) \(holder.name)"), "lease": String(grant.lease)]],
            ["request_put": ["key": EtcdGateway.encode(generationKey), "value": EtcdGateway.encode(String(holder.generation))]],
        ]])
        guard (answer["succeeded"] as? Bool) ?? false else {
            let (_, highest, _) = try read()
            throw highest > grant.generation ? .superseded(by: highest) : .lost("the key is no longer held by generation \(grant.generation)")
        }
        // The lease was not renewed: the validity stays the grant's (but never later than now + lease).
        return ArbiterGrant(holder: holder, lease: grant.lease, validUntil: min(grant.validUntil, sent + leaseTime - safetyMargin))
    }

    public func renew(_ grant: ArbiterGrant) throws(ArbiterError) -> ContinuousClock.Instant {
        let sent = ContinuousClock.now
        let answer = try gateway.call("lease/keepalive", ["ID": String(grant.lease)])
        guard let result = answer["result"] as? [String: Any] else { throw .malformed("a keepalive answer without a result") }
        let ttl = try EtcdGateway.integer(result["TTL"])
        guard ttl > 0 else { throw .lost("etcd says lease \(grant.lease) has expired") }
        return sent + min(leaseTime, .seconds(ttl)) - safetyMargin
    }

    public func release(_ grant: ArbiterGrant) { revoke(grant.lease) }

    public func holder() throws(ArbiterError) -> (holder: ArbiterHolder?, generation: UInt64) {
        let (current, generation, _) = try read()
        return (current, generation)
    }

    // MARK: etcd

    /// The holder (nil: none), the highest generation, and the generation key's mod revision (0: never written).
    private func read() throws(ArbiterError) -> (ArbiterHolder?, UInt64, Int64) {
        let answer = try gateway.call("kv/txn", [
            "success": [["request_range": ["key": EtcdGateway.encode(holderKey)]],
                        ["request_range": ["key": EtcdGateway.encode(generationKey)]]],
        ])
        guard let responses = answer["responses"] as? [[String: Any]], responses.count == 2 else { throw .malformed("a read without its two answers") }
        let holder = try Self.value(of: responses[0]).map { text throws(ArbiterError) in try Self.holder(from: text) }
        let generation = try Self.value(of: responses[1])
        let revision = try Self.modRevision(of: responses[1])
        guard let count = UInt64(generation ?? "0") else { throw .malformed("generation '\(generation ?? "")'") }
        return (holder, count, revision)
    }

    /// A lease of `leaseTime`, and the instant until which it is certainly valid.
    private func grantLease() throws(ArbiterError) -> (Int64, ContinuousClock.Instant) {
        let sent = ContinuousClock.now
        let seconds = Int64((leaseTime.milliseconds + 999) / 1000)
        let answer = try gateway.call("lease/grant", ["TTL": String(seconds)])
        let lease = try EtcdGateway.integer(answer["ID"])
        let ttl = try EtcdGateway.integer(answer["TTL"])
        guard lease != 0, ttl > 0 else { throw .malformed("lease grant: id \(lease), ttl \(ttl)") }
        return (lease, sent + min(leaseTime, .seconds(ttl)) - safetyMargin)
    }

    /// Puts `holder` (with `lease`), and the generation too when `generation`,
    /// if nobody holds the key and `condition` holds. Whether it did.
    private func put(_ holder: ArbiterHolder, lease: Int64, onlyIf condition: [String: Any], generation: Bool) throws(ArbiterError) -> Bool {
        let nobodyHolds: [String: Any] = ["key": EtcdGateway.encode(holderKey), "target": "CREATE", "result": "EQUAL", "create_revision": "0"]
        var puts: [[String: Any]] = [["request_put": ["key": EtcdGateway.encode(holderKey), "value": EtcdGateway.encode("\(holder.generation) \(holder.name)"),
                                                      "lease": String(lease)]]]
        if generation {
            puts.append(["request_put": ["key": EtcdGateway.encode(generationKey), "value": EtcdGateway.encode(String(holder.generation))]])
        }
        let answer = try gateway.call("kv/txn", ["compare": [nobodyHolds, condition], "success": puts])
        return (answer["succeeded"] as? Bool) ?? false
    }

    private func revoke(_ lease: Int64) {
        _ = try? gateway.call("lease/revoke", ["ID": String(lease)])
    }

    private static func value(of response: [String: Any]) throws(ArbiterError) -> String? {
        guard let range = response["response_range"] as? [String: Any] else { throw .malformed("a range answer without response_range") }
        guard let kvs = range["kvs"] as? [[String: Any]], let first = kvs.first else { return nil }
        return try EtcdGateway.decode(first["value"])
    }

    private static func modRevision(of response: [String: Any]) throws(ArbiterError) -> Int64 {
        guard let range = response["response_range"] as? [String: Any], let kvs = range["kvs"] as? [[String: Any]], let first = kvs.first else { return 0 }
        return try EtcdGateway.integer(first["mod_revision"])
    }

    private static func holder(from text: String) throws(ArbiterError) -> ArbiterHolder {
        let parts = text.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, let generation = UInt64(parts[0]) else { throw .malformed("holder '\(text.prefix(100))'") }
        return ArbiterHolder(name: String(parts[1]), generation: generation)
    }
}
