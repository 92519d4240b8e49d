import KVM
import Understudy
import Foundation
import Logging

/// virtio-net over a tap interface.
///
/// Queue 0 receives, queue 1 transmits. Every frame the guest sends goes through
/// `egress` (by default: straight to the tap), the one place the output-commit
/// buffer holds frames. Frames from the tap are delivered at once by a
/// receive thread, which wakes a waiting guest through `notifyGuest`.
public final class VirtioNet: VirtioDevice, @unchecked Sendable {
    public static let featureMAC: UInt64 = 1 << 5
    public static let featureStatus: UInt64 = 1 << 16
    /// The virtio-net header that precedes every frame (virtio 1.x: 12 bytes).
    public static let headerSize = 12
    public static let queueSize: UInt16 = 256

    public let mac: [UInt8]
    public let tap: Tap?
    /// Whether `shutdown()` keeps the tap attached in `TapPool` rather than closing it.
    public let keepsTapOpen: Bool
    /// Where transmitted frames go. Set before the machine starts.
    public var egress: @Sendable (UnsafeRawBufferPointer) -> Void
    public private(set) var linkUp = true
    /// Frames received while no receive buffer was posted, held for delivery (at most one).
    private var heldFrame: [UInt8]?
    private var stopReceiving = false
    private let receiverDone = DispatchSemaphore(value: 0)
    /// Wakes the receive thread when a frame may be deliverable again: the
    /// driver posted receive buffers, the machine resumed, or the device stops.
    private let receiverWake = DispatchSemaphore(value: 0)
    private var receiverStarted = false
    /// Frames dropped because the guest's receive buffers were too small.
    public private(set) var droppedFrames = 0

    public override var deviceID: UInt32 { 1 }
    public override var offeredFeatures: UInt64 { Self.featureMAC | Self.featureStatus }

    public init(base: UInt64, memory: GuestMemory, mac: [UInt8], tap: Tap?, keepsTapOpen: Bool = false, logger: Logger,
                notifyGuest: @escaping @Sendable () -> Void) {
        precondition(mac.count == 6, "a MAC address is 6 bytes")
        self.mac = mac
        self.tap = tap
        self.keepsTapOpen = keepsTapOpen
        egress = { frame in tap?.write(frame) }
        super.init(name: "virtio-net", base: base, memory: memory, queueSizes: [Self.queueSize, Self.queueSize],
                   logger: logger, notifyGuest: notifyGuest)
    }

    // MARK: config

    public override func readConfig(offset: UInt64, length: Int) -> UInt64 {
        var config = mac + [linkUp ? 1 : 0, 0]
        config += [UInt8](repeating: 0, count: 8)
        guard offset < UInt64(config.count) else { return 0 }
        var value: UInt64 = 0
        for i in 0..<length where Int(offset) + i < config.count { value |= UInt64(config[Int(offset) + i]) << (8 * UInt64(i)) }
        return value
    }

    // MARK: transmit

    public override func processQueue(_ index: Int) throws(VirtioError) -> Bool {
        if index == 0 {
            // New receive buffers: deliver a held frame if there is one.
            receiverWake.signal()
            if let frame = heldFrame, try deliverLocked(frame) { heldFrame = nil; return true }
            return false
        }
        var returned = false
        var frame: [UInt8] = []
        while let chain = try queues[1].pop(memory) {
            frame.removeAll(keepingCapacity: true)
            for buffer in chain.buffers where !buffer.writable {
                guard frame.count + Int(buffer.length) <= 65_562 + Self.headerSize else {
                    throw .badChain("transmit chain longer than a frame")
                }
                guard let pointer = memory.pointer(buffer.address, length: Int(buffer.length)) else {
                    throw .badChain("buffer outside RAM")
                }
                frame += UnsafeRawBufferPointer(start: pointer, count: Int(buffer.length))
            }
            guard frame.count >= Self.headerSize else { throw .badChain("transmit chain shorter than the virtio-net header") }
            frame.withUnsafeBytes { raw in egress(UnsafeRawBufferPointer(rebasing: raw[Self.headerSize...])) }
            try complete(queue: 1, head: chain.head, length: 0)
            returned = true
        }
        return returned
    }

    // MARK: receive

    /// Writes `frame` into the next receive chain. False if no chain is available.
    /// Called with `lock` held.
    private func deliverLocked(_ frame: [UInt8]) throws(VirtioError) -> Bool {
        guard isDriverReady, queues[0].ready, !quiesced else { return false }
        guard let chain = try queues[0].pop(memory) else { return false }
        let needed = Self.headerSize + frame.count
        guard chain.writableLength >= needed else {
            droppedFrames += 1
            try complete(queue: 0, head: chain.head, length: 0)
            return true
        }
        var header = [UInt8](repeating: 0, count: Self.headerSize)
        header[10] = 1                                  // num_buffers
        var written = 0
        let payload = header + frame
        for buffer in chain.buffers where buffer.writable && written < needed {
            let count = min(Int(buffer.length), needed - written)
            _ = payload.withUnsafeBytes { raw in
                memory.write(UnsafeRawBufferPointer(rebasing: raw[written..<(written + count)]), at: buffer.address)
            }
            written += count
        }
        try complete(queue: 0, head: chain.head, length: UInt32(needed))
        return true
    }

    /// Delivers a frame from outside (the tap thread, or a test). Returns false
    /// when it had to be held because no receive buffer was posted (only one frame is held).
    ///
    /// The frame and the guest's notification are one step under the device
    /// lock: a pause (which quiesces the device under that lock) sees both or
    /// neither, so a checkpoint never holds a delivered frame whose
    /// notification is still to come (a replica resumed from it would have a
    /// guest waiting for ever for a frame already in its ring).
    @discardableResult
    public func receive(_ frame: [UInt8]) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        var delivered = false
        do {
            if heldFrame == nil, try deliverLocked(frame) { delivered = true } else if heldFrame == nil { heldFrame = frame }
        } catch {
            fail(error)
        }
        if delivered { notifyGuest() }
        return delivered
    }

    /// Whether a frame could be delivered now (buffers posted, not quiesced).
    private var canAccept: Bool {
        lock.withLock {
            guard isDriverReady, queues[0].ready, !quiesced else { return false }
            return ((try? queues[0].pending(memory)) ?? 0) > 0
        }
    }

    /// Delivers the held frame if a buffer is there now. Returns whether none is held afterwards.
    private func deliverHeld() -> Bool {
        lock.lock()
        var delivered = false
        if let frame = heldFrame {
            do {
                if try deliverLocked(frame) {
                    heldFrame = nil
                    delivered = true
                }
            } catch {
                fail(error)
            }
        }
        if delivered { notifyGuest() }          // under the lock, as in `receive`
        let clear = heldFrame == nil
        lock.unlock()
        return clear
    }

    /// Starts the thread that moves frames from the tap to the guest. A frame
    /// that finds no receive buffer (or a paused machine) is held and retried
    /// before the next is read from the tap.
    public func startReceiving() {
        guard let tap, !receiverStarted else { return }
        receiverStarted = true
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while !lock.withLock({ stopReceiving }) {
                // Nothing to do until the guest can take a frame: wait for what
                // changes that (with a timeout, in case a change came between
                // the check and the wait). Polling here instead cost a booting
                // Linux guest most of its CPU in the KVM box.
                guard deliverHeld(), canAccept else {
                    _ = receiverWake.wait(timeout: .now() + .milliseconds(20))
                    continue
                }
                guard tap.waitReadable(milliseconds: 20) else { continue }
                let count = buffer.withUnsafeMutableBytes { tap.read(into: $0) }
                guard let count, count > 0 else { continue }
                receive(Array(buffer[0..<count]))
            }
            receiverDone.signal()
        }
        thread.name = "virtio-net rx"
        thread.start()
    }

    public override func quiescedChanged(_ quiesced: Bool) {
        if !quiesced { receiverWake.signal() }
    }

    public override func shutdown() {
        lock.withLock { stopReceiving = true }
        receiverWake.signal()
        if receiverStarted {
            receiverDone.wait()
            receiverStarted = false
        }
        // Hand the interface over: a restored machine may attach to it (in
        // this process, when kept: `TapPool`).
        if let tap { if keepsTapOpen { TapPool.shared.keep(tap) } else { tap.close() } }
    }

    public override func resetDevice() { heldFrame = nil }

    // MARK: state

    public override func saveDeviceState(into writer: inout [UInt8]) {
        writer += mac
        writer.append(linkUp ? 1 : 0)
    }

    public override func restoreDeviceState(_ bytes: ArraySlice<UInt8>) throws(MachineError) {
        guard bytes.count == 7 else { throw .invalidState(part: name, reason: "net state of \(bytes.count) bytes") }
        guard Array(bytes.prefix(6)) == mac else {
            throw .invalidState(part: name, reason: "saved MAC differs from the configured one")
        }
        guard bytes.last! <= 1 else { throw .invalidState(part: name, reason: "link flag \(bytes.last!)") }
        linkUp = bytes.last! == 1
        heldFrame = nil
    }
}
