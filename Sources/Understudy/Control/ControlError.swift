import Glibc

/// Why a control request failed.
public enum ControlError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A socket call failed.
    case system(call: String, errno: Int32)
    /// Another live process serves this control socket.
    case inUse(path: String)
    /// A request or reply that does not follow the control protocol.
    case malformed(String)
    /// The peer is not allowed to control this process.
    case forbidden(String)

    public var description: String {
        switch self {
        case .system(let call, let code): "\(call) failed: \(String(cString: strerror(code))) (errno \(code))"
        case .inUse(let path): "another running process serves the control socket \(path)"
        case .malformed(let why): "malformed control message: \(why)"
        case .forbidden(let why): "forbidden: \(why)"
        }
    }
}
