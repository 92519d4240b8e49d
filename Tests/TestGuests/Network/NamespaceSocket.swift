import CKVM
import Foundation
import Synchronization

/// A blocking TCP client socket created inside a network namespace (the
/// creating thread enters the namespace with setns(2); the socket stays in it).
public final class NamespaceSocket: @unchecked Sendable {
    public let fd: Int32

    public struct SocketError: Error, CustomStringConvertible {
        public let call: String
        public let errno: Int32
        public var description: String { "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))" }
    }

    /// Connects to `host:port` from inside the namespace at `namespacePath`, with a
    /// receive timeout of `timeout` seconds.
    public static func connect(namespacePath: String, host: String, port: UInt16, timeout: Int = 20) throws -> NamespaceSocket {
        let result = Mutex<Result<Int32, SocketError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            defer { done.signal() }
            let ns = open(namespacePath, O_RDONLY | O_CLOEXEC)
            guard ns >= 0 else { result.withLock { $0 = .failure(SocketError(call: "open(netns)", errno: errno)) }; return }
            defer { close(ns) }
            guard ckvm_enter_network_namespace(ns) == 0 else {
                result.withLock { $0 = .failure(SocketError(call: "setns", errno: errno)) }
                return
            }
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { result.withLock { $0 = .failure(SocketError(call: "socket", errno: errno)) }; return }
            var tv = timeval(tv_sec: Int(TestHost.seconds(Double(timeout))), tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            inet_pton(AF_INET, host, &address.sin_addr)
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else {
                let error = errno
                close(fd)
                result.withLock { $0 = .failure(SocketError(call: "connect", errno: error)) }
                return
            }
            result.withLock { $0 = .success(fd) }
        }
        thread.start()
        done.wait()
        return NamespaceSocket(fd: try result.withLock { $0! }.get())
    }

    private init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    private var pending: [UInt8] = []

    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SocketError(call: "send", errno: errno)
            }
            offset += n
        }
    }

    public func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Reads one line (without the newline).
    public func readLine() throws -> String {
        while true {
            if let newline = pending.firstIndex(of: 10) {
                let line = pending[..<newline]
                pending.removeFirst(newline + 1)
                return String(decoding: line.last == 13 ? line.dropLast() : line, as: UTF8.self)
            }
            try fill()
        }
    }

    /// Reads exactly `count` bytes, feeding them to `body` in chunks.
    public func read(count: Int, _ body: (ArraySlice<UInt8>) -> Void) throws {
        var remaining = count
        while remaining > 0 {
            if pending.isEmpty { try fill() }
            let take = min(remaining, pending.count)
            body(pending[..<take])
            pending.removeFirst(take)
            remaining -= take
        }
    }

    private func fill() throws {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 {
            if errno == EINTR { return }
            throw SocketError(call: "recv", errno: errno)
        }
        if n == 0 { throw SocketError(call: "recv (connection closed)", errno: 0) }
        pending += buffer[0..<n]
    }

    /// Sends a command line and returns the reply line.
    public func command(_ line: String) throws -> String {
        try send(line + "\n")
        return try readLine()
    }
}
