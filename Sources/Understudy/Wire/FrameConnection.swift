import Foundation

/// Frames over a TCP connection: `send` is safe from several threads (a frame
/// is never interleaved with another); `receive` belongs to one reader thread.
public final class FrameConnection: @unchecked Sendable {
    public let connection: TCPConnection
    private var decoder = FrameDecoder()
    private let sendLock = NSLock()
    private let receiveBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 16)
    /// Bytes sent, for statistics.
    public private(set) var bytesSent = 0

    public init(_ connection: TCPConnection) { self.connection = connection }

    deinit { receiveBuffer.deallocate() }

    public var peer: String { connection.peer }

    /// Sends one frame.
    public func send(_ frame: Frame) throws(WireError) {
        let bytes = frame.encoded
        sendLock.lock()
        defer { sendLock.unlock() }
        try connection.send(bytes)
        bytesSent += bytes.count
    }

    /// Sends several frames back to back, none interleaved with another thread's.
    public func send(_ frames: [Frame]) throws(WireError) {
        sendLock.lock()
        defer { sendLock.unlock() }
        for frame in frames {
            let bytes = frame.encoded
            try connection.send(bytes)
            bytesSent += bytes.count
        }
    }

    /// The next frame, waiting at most `timeout` for bytes to arrive.
    public func receive(timeout: Duration) throws(WireError) -> Frame {
        while true {
            if let frame = try decoder.next() { return frame }
            let count = try connection.receive(into: receiveBuffer, timeout: timeout)
            decoder.append(UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<count]))
        }
    }

    /// Ends the connection; blocked calls on other threads return with an error.
    public func shutdown() { connection.shutdown() }

    /// Ends the session so that the peer surely reads `last` (a `resync` with
    /// its reason): sends it, ends the sending direction, then reads and drops
    /// whatever still arrives until the peer closes or `timeout` passes, so
    /// that closing never resets the connection under the peer's unread frame
    /// (a reset could make the peer see only "connection reset", which to a
    /// standby means its primary is gone). Call from the connection's reader.
    public func finish(with last: Frame, timeout: Duration) {
        do { try send(last) } catch { return }
        connection.shutdownSending()
        // Raw bytes, not frames: the stream may be the damaged one that ended
        // the session, and the decoder would stop at the damage again.
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            do { _ = try connection.receive(into: receiveBuffer, timeout: timeout) } catch { break }
        }
    }
}
