import Glibc

/// A filesystem path as a `sockaddr_un`.
struct UnixSocketAddress {
    var storage = sockaddr_un()

    init(path: String) throws(ControlError) {
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: storage.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else {
            throw .malformed("control socket path '\(path)' (1 to \(capacity - 1) bytes)")
        }
        storage.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            for (i, byte) in bytes.enumerated() { raw[i] = byte }
        }
    }

    /// Calls `body` with the address as a `sockaddr` and its length.
    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafePointer(to: storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// A new unix stream socket (close-on-exec).
    static func socket() throws(ControlError) -> Int32 {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket(AF_UNIX)", errno: errno) }
        return fd
    }

    /// Reads from `fd` until a newline (not returned), end of file, `limit`
    /// bytes, or `timeoutMilliseconds` without data.
    static func readLine(_ fd: Int32, limit: Int, timeoutMilliseconds: Int32) throws(ControlError) -> [UInt8] {
        var line: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while line.count <= limit {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, timeoutMilliseconds)
            if ready < 0 { if errno == EINTR { continue }; throw .system(call: "poll", errno: errno) }
            guard ready > 0 else { throw .malformed("no complete line within \(timeoutMilliseconds) ms") }
            let n = read(fd, &buffer, buffer.count)
            if n < 0 { if errno == EINTR { continue }; throw .system(call: "read", errno: errno) }
            if n == 0 { return line }
            if let newline = buffer[..<n].firstIndex(of: 0x0A) {
                line += buffer[..<newline]
                return line
            }
            line += buffer[..<n]
        }
        throw .malformed("a line longer than \(limit) bytes")
    }

    /// Sends all of `bytes` (a short send is retried). A peer that went away
    /// is an error (EPIPE), never a SIGPIPE that would kill the process.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(ControlError) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; throw .system(call: "send", errno: errno) }
            offset += n
        }
    }
}
