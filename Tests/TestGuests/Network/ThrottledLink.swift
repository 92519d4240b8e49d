import Foundation

/// A slow link between the root namespace and a private network namespace: a
/// veth pair whose two ends are shaped by tc's token bucket filter to `rate`
/// (a tc rate such as "8mbit"), so a process started in the namespace
/// (`launcher`) and one outside talk over a link slower than the guest.
/// `tearDown()` (also run on deinit) removes it.
///
/// ```
///  [root: veth 10.78.<n>.1/24] ==tbf rate== [netns us<id>l: veth 10.78.<n>.2/24]
/// ```
public final class ThrottledLink: @unchecked Sendable {
    public let id: String
    public let namespace: String
    public let hostAddress: String
    public let peerAddress: String
    private var torn = false

    public init(rate: String) throws {
        let number = UInt32.random(in: 0..<0xFFFF)
        id = String(number, radix: 16)
        namespace = "us\(id)l"
        let subnet = "10.78.\(number % 250)"
        hostAddress = "\(subnet).1"
        peerAddress = "\(subnet).2"
        removeLeftovers()
        let host = "us\(id)a", peer = "us\(id)b"
        do {
            try TestNetwork.run(["ip", "netns", "add", namespace])
            try TestNetwork.run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer])
            try TestNetwork.run(["ip", "link", "set", peer, "netns", namespace])
            try TestNetwork.run(["ip", "addr", "add", "\(hostAddress)/24", "dev", host])
            try TestNetwork.run(["ip", "link", "set", host, "up"])
            try TestNetwork.run(launcher + ["ip", "addr", "add", "\(peerAddress)/24", "dev", peer])
            try TestNetwork.run(launcher + ["ip", "link", "set", peer, "up"])
            try TestNetwork.run(launcher + ["ip", "link", "set", "lo", "up"])
            let shape = ["qdisc", "add", "dev"], bucket = ["root", "tbf", "rate", rate, "burst", "32kb", "latency", "400ms"]
            try TestNetwork.run(["tc"] + shape + [host] + bucket)
            try TestNetwork.run(launcher + ["tc"] + shape + [peer] + bucket)
        } catch {
            tearDown()
            throw error
        }
    }

    deinit { tearDown() }

    /// The command prefix that runs a program inside the namespace.
    public var launcher: [String] { ["ip", "netns", "exec", namespace] }

    public func tearDown() {
        guard !torn else { return }
        torn = true
        removeLeftovers()
    }

    private func removeLeftovers() {
        _ = try? TestNetwork.run(["ip", "link", "del", "us\(id)a"], quiet: true)
        _ = try? TestNetwork.run(["ip", "netns", "del", namespace], quiet: true)
    }
}
