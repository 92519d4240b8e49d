import CKVM
import Foundation

/// A Linux tap interface: whole Ethernet frames in and out, no extra headers.
public final class Tap: @unchecked Sendable {
    public let name: String
    /// The descriptor, or -1 once closed.
    public private(set) var fd: Int32
    private let closeLock = NSLock()

    /// Opens (creating if needed) the tap interface `name`. Needs CAP_NET_ADMIN
    /// unless the interface exists and belongs to this user.
    public init(name: String) throws(MachineError) {
        guard !name.isEmpty, name.utf8.count < 16 else { throw .invalidConfiguration("tap name '\(name)' must be 1-15 bytes") }
        let fd = ckvm_tap_open(name)
        guard fd >= 0 else { throw .invalidConfiguration("tap \(name): TUNSETIFF failed (errno \(errno))") }
        self.name = name
        self.fd = fd
    }

    deinit { close() }

    /// Detaches from the interface (another process may then attach to it).
    /// Idempotent; reads and writes fail afterwards.
    public func close() {
        closeLock.lock()
        defer { closeLock.unlock() }
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Reads one frame into `buffer`; nil when none is waiting.
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            return nil
        }
    }

    /// Sends one frame. Returns false if the kernel refused it (the frame is dropped,
    /// as a NIC would on a full queue).
    @discardableResult
    public func write(_ frame: UnsafeRawBufferPointer) -> Bool {
        while true {
            let n = Glibc.write(fd, frame.baseAddress, frame.count)
            if n >= 0 { return true }
            if errno == EINTR { continue }
            return false
        }
    }

    /// Waits up to `milliseconds` for a frame to read.
    public func waitReadable(milliseconds: Int32) -> Bool {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, milliseconds) > 0
    }
}
