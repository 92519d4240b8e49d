import Glibc

/// A listening TCP socket (SO_REUSEADDR).
public final class TCPListener: @unchecked Sendable {
    public let fd: Int32
    /// The bound port (useful when asked for port 0).
    public let port: UInt16

    public init(address: SocketAddress) throws(WireError) {
        var local = try address.resolved()
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { let code = errno; close(fd); throw .system(call: "bind \(address)", errno: code) }
        guard listen(fd, 8) == 0 else { let code = errno; close(fd); throw .system(call: "listen", errno: code) }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.fd = fd
        port = UInt16(bigEndian: actual.sin_port)
    }

    deinit { close(fd) }

    /// The next connection, or nil if none came within `timeout`.
    public func accept(timeout: Duration) throws(WireError) -> TCPConnection? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&poller, 1, Int32(timeout.milliseconds))
        if ready < 0 { if errno == EINTR { return nil }; throw .system(call: "poll", errno: errno) }
        guard ready > 0 else { return nil }
        var peer = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let client = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.accept(fd, $0, &length) }
        }
        guard client >= 0 else {
            if errno == EINTR || errno == EAGAIN || errno == ECONNABORTED { return nil }
            throw .system(call: "accept", errno: errno)
        }
        _ = fcntl(client, F_SETFD, FD_CLOEXEC)
        let host = UInt32(bigEndian: peer.sin_addr.s_addr)
        let dotted = [24, 16, 8, 0].map { String((host >> UInt32($0)) & 0xFF) }.joined(separator: ".")
        return TCPConnection(fd: client, peer: "\(dotted):\(UInt16(bigEndian: peer.sin_port))")
    }
}
