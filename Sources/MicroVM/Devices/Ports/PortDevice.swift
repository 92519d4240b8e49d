/// A device on x86 port I/O, as a Linux guest expects to find its legacy
/// hardware. Called on vCPU threads; implementations lock their own state.
public protocol PortDevice: AnyObject, Sendable {
    /// Whether it answers `port`.
    func owns(_ port: UInt16) -> Bool
    /// An IN of `size` bytes (1, 2 or 4) from `port`.
    func read(port: UInt16, size: Int) -> UInt32
    /// An OUT of `size` bytes to `port`.
    func write(port: UInt16, size: Int, value: UInt32)
}
