import Glibc

/// A connected TCP socket with TCP_NODELAY: whole sends, receives with a
/// timeout. `shutdown()` from another thread wakes a blocked send or receive.
public final class TCPConnection: @unchecked Sendable {
    public let fd: Int32
    /// The peer, as text.
    public let peer: String

    init(fd: Int32, peer: String) {
        self.fd = fd
        self.peer = peer
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close(fd) }

    /// Connects to `address`, giving up after `timeout`.
    public static func connect(to address: SocketAddress, timeout: Duration = .seconds(2)) throws(WireError) -> TCPConnection {
        var target = try address.resolved()
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        let status = withUnsafePointer(to: &target) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if status != 0 {
            let code = errno
            guard code == EINPROGRESS else { close(fd); throw .system(call: "connect \(address)", errno: code) }
            var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let ready = poll(&poller, 1, Int32(timeout.milliseconds))
            guard ready > 0 else { close(fd); throw ready == 0 ? .timedOut(milliseconds: timeout.milliseconds) : .system(call: "poll", errno: errno) }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
            guard error == 0 else { close(fd); throw .system(call: "connect \(address)", errno: error) }
        }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        return TCPConnection(fd: fd, peer: address.description)
    }

    /// Sends all of `bytes`.
    public func send(_ bytes: UnsafeRawBufferPointer) throws(WireError) {
        var offset = 0
        while offset < bytes.count {
            let sent = Glibc.send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if sent < 0 {
                if errno == EINTR { continue }
                throw .system(call: "send", errno: errno)
            }
            if sent == 0 { throw .closed }
            offset += sent
        }
    }

    public func send(_ bytes: [UInt8]) throws(WireError) {
        var failure: WireError?
        bytes.withUnsafeBytes { raw in
            do throws(WireError) { try send(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Receives up to `buffer.count` bytes, waiting at most `timeout`. Returns
    /// the count; throws `.closed` at end of stream, `.timedOut` when nothing came.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws(WireError) -> Int {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let ready = poll(&poller, 1, Int32(timeout.milliseconds))
            if ready < 0 {
                if errno == EINTR { continue }
                throw .system(call: "poll", errno: errno)
            }
            guard ready > 0 else { throw .timedOut(milliseconds: timeout.milliseconds) }
            let count = recv(fd, buffer.baseAddress, buffer.count, 0)
            if count < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw .system(call: "recv", errno: errno)
            }
            guard count > 0 else { throw .closed }
            return count
        }
    }

    /// Ends both directions: a thread blocked in send or receive returns with an error.
    public func shutdown() { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }

    /// Ends the sending direction only (the peer reads what was sent, then end of file).
    public func shutdownSending() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }
}

