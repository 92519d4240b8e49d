import Foundation
import Glibc

/// Sends one control request to a running primary or standby and reads its reply.
public enum ControlClient {
    /// Where `understudy-primary` and `understudy-standby` put their control
    /// sockets unless told otherwise (`<directory>/<program>-<pid>.sock`).
    public static let defaultDirectory = "/run/understudy"

    /// The control socket path a process of `program` uses by default.
    public static func defaultPath(program: String, pid: Int32 = getpid()) -> String {
        "\(defaultDirectory)/\(program)-\(pid).sock"
    }

    /// The control sockets in `directory` (sorted).
    public static func sockets(in directory: String = defaultDirectory) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasSuffix(".sock") }.sorted().map { "\(directory)/\($0)" }
    }

    /// Sends `request` to the process serving `path` and returns its reply,
    /// waiting at most `timeout` (a switchover takes seconds).
    public static func send(_ request: ControlRequest, to path: String, timeout: Duration = .seconds(60)) throws(ControlError) -> ControlReply {
        let fd = try connect(to: path)
        defer { close(fd) }
        try UnixSocketAddress.writeAll(fd, Array(request.rawValue.utf8) + [0x0A])
        let line = try UnixSocketAddress.readLine(fd, limit: ControlReply.maximumLineBytes, timeoutMilliseconds: Int32(clamping: timeout.milliseconds))
        return try ControlReply(line: line)
    }

    /// A connected socket to `path`.
    static func connect(to path: String) throws(ControlError) -> Int32 {
        let address = try UnixSocketAddress(path: path)
        let fd = try UnixSocketAddress.socket()
        let result = address.withSockaddr { Glibc.connect(fd, $0, $1) }
        guard result == 0 else { let code = errno; close(fd); throw .system(call: "connect \(path)", errno: code) }
        return fd
    }
}
