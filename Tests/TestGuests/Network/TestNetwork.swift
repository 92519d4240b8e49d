import Foundation

/// A private test network: a bridge in the root namespace, a client network
/// namespace attached to it by a veth pair, and taps for guests. Only addresses
/// inside it are used. `tearDown()` (also run on deinit) removes everything,
/// and leftovers from a crashed run with the same id are removed first.
///
/// ```
///  [netns us<id>c: veth 10.77.0.1/24] ==veth== [bridge usb<id>] -- tap us<id>t0 -- guest 10.77.0.2
/// ```
public final class TestNetwork: @unchecked Sendable {
    public let id: String
    public let namespace: String
    public let bridge: String
    public let clientAddress = "10.77.0.1"
    public private(set) var taps: [String] = []
    private var torn = false

    public struct CommandFailed: Error, CustomStringConvertible {
        public let command: [String]
        public let status: Int32
        public let output: String
        public init(command: [String], status: Int32, output: String) {
            self.command = command
            self.status = status
            self.output = output
        }
        public var description: String { "\(command.joined(separator: " ")) failed (\(status)): \(output)" }
    }

    /// Whether this process may build networks (root, `ip` present, /dev/net/tun).
    public static var available: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip")
            || FileManager.default.isExecutableFile(atPath: "/sbin/ip") && getuid() == 0
    }

    public init() throws {
        id = String(UInt32.random(in: 0..<0xFFFF), radix: 16)
        namespace = "us\(id)c"
        bridge = "usb\(id)"
        removeLeftovers()
        do {
            try Self.run(["ip", "netns", "add", namespace])
            try Self.run(["ip", "link", "add", bridge, "type", "bridge"])
            try Self.run(["ip", "link", "set", bridge, "up"])
            try Self.run(["ip", "link", "add", "us\(id)h", "type", "veth", "peer", "name", "us\(id)n"])
            try Self.run(["ip", "link", "set", "us\(id)h", "master", bridge, "up"])
            try Self.run(["ip", "link", "set", "us\(id)n", "netns", namespace])
            try inClient(["ip", "addr", "add", "\(clientAddress)/24", "dev", "us\(id)n"])
            try inClient(["ip", "link", "set", "us\(id)n", "up"])
            try inClient(["ip", "link", "set", "lo", "up"])
        } catch {
            tearDown()
            throw error
        }
    }

    deinit { tearDown() }

    /// Creates a tap on the bridge for a guest and returns its name.
    public func addTap() throws -> String {
        let name = "us\(id)t\(taps.count)"
        try Self.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"])
        taps.append(name)
        try Self.run(["ip", "link", "set", name, "master", bridge, "up"])
        return name
    }

    /// Frames a VMM has written into `tap` so far: what the guest behind it
    /// released to the world (the kernel counts them as the tap's received packets).
    public func framesReleased(through tap: String) -> Int {
        let text = (try? String(contentsOfFile: "/sys/class/net/\(tap)/statistics/rx_packets", encoding: .utf8)) ?? ""
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    /// Runs a command inside the client namespace.
    @discardableResult
    public func inClient(_ command: [String]) throws -> String {
        try Self.run(["ip", "netns", "exec", namespace] + command)
    }

    /// The client namespace's file, for setns(2).
    public var namespacePath: String { "/var/run/netns/\(namespace)" }

    public func tearDown() {
        guard !torn else { return }
        torn = true
        removeLeftovers()
    }

    private func removeLeftovers() {
        for tap in taps + (0..<4).map({ "us\(id)t\($0)" }) { _ = try? Self.run(["ip", "link", "del", tap], quiet: true) }
        _ = try? Self.run(["ip", "link", "del", "us\(id)h"], quiet: true)
        _ = try? Self.run(["ip", "link", "del", bridge], quiet: true)
        _ = try? Self.run(["ip", "netns", "del", namespace], quiet: true)
    }

    @discardableResult
    public static func run(_ command: [String], quiet: Bool = false) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        let status = ChildExit.wait(for: process) ?? -1
        let output = String(decoding: data, as: UTF8.self)
        guard status == 0 else {
            throw CommandFailed(command: command, status: status, output: output)
        }
        return output
    }
}
