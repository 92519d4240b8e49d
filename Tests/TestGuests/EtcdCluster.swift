import Foundation
import Glibc
import UnderstudyEtcd

/// Real etcd members (Debian's `etcd-server`) on loopback, each with its own
/// data directory and ports, started by a test and killed when it is dropped.
public final class EtcdCluster: @unchecked Sendable {
    public struct NotInstalled: Error, CustomStringConvertible {
        public var description: String { "/usr/bin/etcd is missing: apt-get install etcd-server (.ci/run does)" }
    }

    public struct Member {
        public let name: String
        public let clientPort: UInt16
        public let peerPort: UInt16
        public var process: ChildProcess?
        public var endpoint: String { "127.0.0.1:\(clientPort)" }
    }

    public private(set) var members: [Member]
    private let directory: URL

    /// Starts `size` members and waits until each serves clients.
    public init(size: Int = 1) throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/etcd") else { throw NotInstalled() }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("etcd-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        members = try (0..<size).map { Member(name: "m\($0)", clientPort: try Self.freePort(), peerPort: try Self.freePort()) }
        for index in members.indices { try start(index) }
        for member in members {
            guard eventually(timeout: 60, { member.process?.standardError.text.contains("ready to serve client requests") ?? false }) else {
                throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey: "etcd \(member.name) did not start: \(member.process?.standardError.text.suffix(2000) ?? "")"])
            }
        }
    }

    deinit {
        for member in members { member.process?.signal(SIGKILL); _ = member.process?.waitForExit(timeout: 10) }
        try? FileManager.default.removeItem(at: directory)
    }

    /// `etcd://` and every member's address.
    public var url: String { "etcd://" + members.map(\.endpoint).joined(separator: ",") }

    /// Starts member `index` (again, after `kill`).
    public func start(_ index: Int) throws {
        let cluster = members.map { "\($0.name)=http://127.0.0.1:\($0.peerPort)" }.joined(separator: ",")
        let member = members[index]
        members[index].process = try ChildProcess("/usr/bin/etcd", [
            "--name", member.name, "--data-dir", directory.appendingPathComponent(member.name).path,
            "--listen-client-urls", "http://\(member.endpoint)", "--advertise-client-urls", "http://\(member.endpoint)",
            "--listen-peer-urls", "http://127.0.0.1:\(member.peerPort)", "--initial-advertise-peer-urls", "http://127.0.0.1:\(member.peerPort)",
            "--initial-cluster", cluster, "--initial-cluster-state", "new", "--initial-cluster-token", directory.lastPathComponent,
        ])
    }

    /// The index of the member that leads now (each member's status names the leader).
    public func leader() throws -> Int {
        for (index, member) in members.enumerated() where member.process?.isRunning == true {
            let status = try EtcdGateway(endpoints: [member.endpoint]).call("maintenance/status", [:])
            if try EtcdGateway.unsigned(status["leader"]) == EtcdGateway.unsigned((status["header"] as? [String: Any])?["member_id"]) { return index }
        }
        throw CocoaError(.featureUnsupported, userInfo: [NSLocalizedDescriptionKey: "no etcd member says it leads"])
    }

    /// SIGKILL to member `index`.
    public func kill(_ index: Int) {
        members[index].process?.signal(SIGKILL)
        _ = members[index].process?.waitForExit(timeout: 10)
    }

    /// A port nobody listens on now (bound to 0, read, closed).
    public static func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "bind: errno \(errno)"]) }
        return UInt16(bigEndian: address.sin_port)
    }
}
