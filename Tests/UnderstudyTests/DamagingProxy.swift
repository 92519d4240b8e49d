import Foundation
import Synchronization
import Understudy

/// A TCP proxy on loopback between a primary and its standby (or a host and
/// its arbiter) that can flip one bit of the byte stream, once, in either
/// direction: the damage a bad NIC, cable or switch does that TCP's own
/// checksum can miss; and can cut the link (a partition: nothing passes either
/// way, nothing is closed, new connections wait) and heal it. Serves any
/// number of connections (the primary reconnects through it).
final class DamagingProxy: @unchecked Sendable {
    enum Direction: String, Sendable, CaseIterable {
        case toStandby, toPrimary
    }

    let listener: TCPListener
    private let target: SocketAddress
    private let armed = Mutex<Direction?>(nil)
    private let flips = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private let isCut = Atomic<Bool>(false)
    private let connections = Mutex<[TCPConnection]>([])

    init(to target: SocketAddress) throws {
        self.target = target
        listener = try TCPListener(address: SocketAddress(host: "127.0.0.1", port: 0))
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    var port: UInt16 { listener.port }
    /// Bits flipped so far.
    var flipped: Int { flips.load(ordering: .relaxed) }

    /// The next bytes going `direction` get one bit flipped.
    func flipOneBit(_ direction: Direction) { armed.withLock { $0 = direction } }

    /// A partition: from now on nothing passes, in either direction.
    func cut() { isCut.store(true, ordering: .relaxed) }

    /// The partition heals: what waited flows again.
    func heal() { isCut.store(false, ordering: .relaxed) }

    /// Waits (without reading) while the link is cut.
    private func waitWhileCut() {
        while isCut.load(ordering: .relaxed) && !stopping.load(ordering: .relaxed) { usleep(10_000) }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        connections.withLock { $0.forEach { $0.shutdown() } }
    }

    private func acceptLoop() {
        while !stopping.load(ordering: .relaxed) {
            waitWhileCut()
            guard let client = try? listener.accept(timeout: .milliseconds(100)) else { continue }
            guard let server = try? TCPConnection.connect(to: target) else { client.shutdown(); continue }
            connections.withLock { $0 += [client, server] }
            Thread.detachNewThread { [self] in pump(from: client, to: server, .toStandby) }
            Thread.detachNewThread { [self] in pump(from: server, to: client, .toPrimary) }
        }
    }

    /// Copies one direction. An orderly end (FIN) is passed on as an orderly
    /// end of the other side's sending only, as TCP would: a half-closed
    /// connection stays open the other way.
    private func pump(from source: TCPConnection, to sink: TCPConnection, _ direction: Direction) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
        defer { buffer.deallocate() }
        while !stopping.load(ordering: .relaxed) {
            waitWhileCut()
            let count: Int
            do {
                count = try source.receive(into: buffer, timeout: .seconds(3600))
            } catch .closed {
                sink.shutdownSending()
                return
            } catch {
                source.shutdown()
                sink.shutdown()
                return
            }
            // Flip a bit in the middle of a chunk that holds at least a frame
            // header (the standby's acks and heartbeats come 24 bytes at a time).
            if count >= 24, armed.withLock({ value in defer { if value == direction { value = nil } }; return value == direction }) {
                buffer[count / 2] ^= 0x10
                flips.add(1, ordering: .relaxed)
            }
            waitWhileCut()                  // what was on its way when the link was cut waits too
            do {
                try sink.send(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            } catch {
                source.shutdown()
                sink.shutdown()
                return
            }
        }
    }
}
