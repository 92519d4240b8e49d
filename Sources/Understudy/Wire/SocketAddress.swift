import Glibc

/// An IPv4 HOST:PORT (a dotted address or a name that resolves to one).
public struct SocketAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Reads "HOST:PORT". Port 0 (any free port) only when `listening`.
    public init(parsing text: String, listening: Bool = false) throws(WireError) {
        guard let colon = text.lastIndex(of: ":") else { throw .badAddress("'\(text)' is not HOST:PORT") }
        let host = String(text[..<colon])
        guard !host.isEmpty else { throw .badAddress("'\(text)' has no host") }
        guard let port = UInt16(text[text.index(after: colon)...]), port > 0 || listening else {
            throw .badAddress("'\(text)' has no valid port (1-65535)")
        }
        self.init(host: host, port: port)
    }

    public var description: String { "\(host):\(port)" }

    /// The resolved sockaddr_in.
    func resolved() throws(WireError) -> sockaddr_in {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let first = result, let address = first.pointee.ai_addr else {
            throw .badAddress("cannot resolve '\(host)': \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(result) }
        return address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
    }
}
