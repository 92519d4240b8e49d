import Foundation
import KVM
import Understudy
import Logging
@testable import MicroVM
import Synchronization
import Testing

/// virtio devices and virtqueues over plain memory: no KVM needed.
@Suite("virtio")
struct VirtioTests {
    final class Frames: Sendable {
        let list = Mutex<[[UInt8]]>([])
        var egress: @Sendable (UnsafeRawBufferPointer) -> Void { { [self] frame in list.withLock { $0.append(Array(frame)) } } }
    }

    static func net() throws -> (VirtioNet, GuestMemory, Frames) {
        let memory = GuestMemory(try SharedMemory(size: 1 << 20))
        let net = VirtioNet(base: 0, memory: memory, mac: [2, 0, 0, 0, 0, 1], tap: nil,
                            logger: Logger(label: "test"), notifyGuest: {})
        let frames = Frames()
        net.egress = frames.egress
        return (net, memory, frames)
    }

    @Test func identificationAndConfig() throws {
        let (net, memory, _) = try Self.net()
        let driver = VirtioTestDriver(device: net, memory: memory)
        #expect(driver.reg(0x000) == 0x7472_6976)
        #expect(driver.reg(0x004) == 2)
        #expect(driver.reg(0x008) == 1)
        // MAC in config space, link up.
        #expect((0..<6).map { UInt8(net.read(offset: 0x100 + UInt64($0), length: 1)) } == [2, 0, 0, 0, 0, 1])
        #expect(net.read(offset: 0x106, length: 2) == 1)
    }

    @Test func featuresNotOfferedAreRefused() throws {
        let (net, memory, _) = try Self.net()
        let driver = VirtioTestDriver(device: net, memory: memory)
        #expect(!driver.initialize(features: 1 << 0), "CSUM was not offered")
        #expect(driver.initialize(features: VirtioNet.featureMAC))
    }

    @Test func transmitStripsHeaderAndReceiveAddsIt() throws {
        let (net, memory, frames) = try Self.net()
        let driver = VirtioTestDriver(device: net, memory: memory)
        #expect(driver.initialize(features: VirtioNet.featureMAC))
        // Transmit: header + frame split over two buffers.
        let frame = (0..<100).map { UInt8($0) }
        _ = [UInt8](repeating: 0, count: 12).withUnsafeBytes { memory.write($0, at: 0x40000) }
        _ = frame.withUnsafeBytes { memory.write($0, at: 0x41000) }
        driver.offer(queue: 1, [(0x40000, 12, false), (0x41000, 100, false)])
        driver.notify(1)
        #expect(frames.list.withLock { $0 } == [frame])
        #expect(driver.used(queue: 1).count == 1)

        // Receive: no buffer posted -> held; posting one delivers it.
        let incoming = [UInt8](repeating: 0xAB, count: 60)
        #expect(!net.receive(incoming))
        driver.offer(queue: 0, [(0x50000, 2048, true)])
        driver.notify(0)
        let used = driver.used(queue: 0)
        #expect(used.count == 1 && used[0].length == 72)
        #expect(memory.read(0x50000 + 10, count: 2) == [1, 0], "num_buffers = 1")
        #expect(memory.read(0x50000 + 12, count: 60) == incoming)
        // VMM writes into guest memory are recorded for the checkpoint.
        let dirty = DirtyBitmap(pageCount: 256)
        memory.takeDirtyPages(into: dirty)
        #expect(dirty[0x50000 / 4096] && dirty[0x10000 / 4096 + 2], "receive buffer and used ring pages")
    }

    /// A frame delivered by the receive thread and the guest's notification of
    /// it are one step for a pause: quiescing the device (what a checkpoint's
    /// pause does) cannot complete between them. The receive thread is held
    /// inside the notification here; a pause that completes meanwhile would
    /// capture a frame in the used ring with no event raised.
    @Test func aPauseNeverFallsBetweenAFrameAndItsNotification() throws {
        let memory = GuestMemory(try SharedMemory(size: 1 << 20))
        let inNotify = DispatchSemaphore(value: 0), proceed = DispatchSemaphore(value: 0)
        let notified = Atomic<Int>(0)
        let net = VirtioNet(base: 0, memory: memory, mac: [2, 0, 0, 0, 0, 1], tap: nil, logger: Logger(label: "test")) {
            inNotify.signal()
            proceed.wait()
            notified.add(1, ordering: .sequentiallyConsistent)
        }
        let driver = VirtioTestDriver(device: net, memory: memory)
        #expect(driver.initialize(features: VirtioNet.featureMAC))
        driver.offer(queue: 0, [(0x50000, 2048, true)])
        let received = DispatchSemaphore(value: 0)
        Thread.detachNewThread { net.receive([UInt8](repeating: 0xAB, count: 60)); received.signal() }
        inNotify.wait()
        let paused = DispatchSemaphore(value: 0)
        let notifiedAtPause = Atomic<Int>(-1)
        Thread.detachNewThread {
            net.setQuiesced(true)
            notifiedAtPause.store(notified.load(ordering: .sequentiallyConsistent), ordering: .sequentiallyConsistent)
            paused.signal()
        }
        // Give the pause every chance to slip in while the notification is held.
        let slippedIn = paused.wait(timeout: .now() + .milliseconds(300)) == .success
        proceed.signal()
        received.wait()
        if !slippedIn { paused.wait() }
        #expect(driver.used(queue: 0).count == 1)
        #expect(notifiedAtPause.load(ordering: .sequentiallyConsistent) == 1,
                "when the pause completed, the delivered frame's notification had been raised")
    }

    /// Hostile chains: each breaks the device (needs reset) without crashing, and a
    /// reset makes it usable again.
    @Test(arguments: ["loop", "outside RAM", "indirect", "head out of range", "next out of range", "readable after writable", "huge length"])
    func hostileChainsBreakTheDevice(kind: String) throws {
        let (net, memory, frames) = try Self.net()
        let driver = VirtioTestDriver(device: net, memory: memory)
        driver.initialize()
        switch kind {
        case "loop":
            driver.descriptor(queue: 1, index: 0, address: 0x40000, length: 12, flags: 1, next: 1)
            driver.descriptor(queue: 1, index: 1, address: 0x40000, length: 12, flags: 1, next: 0)
            driver.makeAvailable(queue: 1, head: 0)
        case "outside RAM":
            driver.offer(queue: 1, [(0xFFFF_0000, 64, false)])
        case "indirect":
            driver.descriptor(queue: 1, index: 0, address: 0x40000, length: 16, flags: 4, next: 0)
            driver.makeAvailable(queue: 1, head: 0)
        case "head out of range":
            driver.makeAvailable(queue: 1, head: 999)
        case "next out of range":
            driver.descriptor(queue: 1, index: 0, address: 0x40000, length: 12, flags: 1, next: 500)
            driver.makeAvailable(queue: 1, head: 0)
        case "readable after writable":
            driver.offer(queue: 1, [(0x40000, 12, true), (0x41000, 12, false)])
        default:
            driver.offer(queue: 1, [(0x40000, 0xFFFF_FFF0, false)])
        }
        driver.notify(1)
        #expect(driver.needsReset, "\(kind)")
        #expect(frames.list.withLock { $0 }.isEmpty)
        // Further notifies are ignored while broken; a reset recovers.
        driver.notify(1)
        driver.set(0x070, 0)
        #expect(!driver.needsReset)
    }

    @Test func queueOutsideMemoryIsNotMadeReady() throws {
        let (net, memory, _) = try Self.net()
        let driver = VirtioTestDriver(device: net, memory: memory)
        driver.initialize(ringBase: 0xFF000)          // used ring runs past the 1 MiB of RAM
        #expect(driver.needsReset)
    }

    @Test func availableIndexTooFarAheadIsRefused() throws {
        let (net, memory, _) = try Self.net()
        let driver = VirtioTestDriver(device: net, memory: memory)
        driver.initialize()
        memory.store(UInt16(40), at: driver.rings[1].avail + 2)        // 40 > queue size 16
        driver.notify(1)
        #expect(driver.needsReset)
    }

    @Test func stateRoundTripAndValidation() throws {
        let (net, memory, _) = try Self.net()
        let driver = VirtioTestDriver(device: net, memory: memory)
        driver.initialize(features: VirtioNet.featureMAC)
        driver.offer(queue: 0, [(0x50000, 2048, true)])
        let saved = net.saveState()
        let (copy, _, _) = try Self.net()
        // A copy over the same memory restores; over other memory the used index does not match.
        let sameMemory = VirtioNet(base: 0, memory: memory, mac: [2, 0, 0, 0, 0, 1], tap: nil, logger: Logger(label: "t"), notifyGuest: {})
        try sameMemory.restoreState(saved)
        #expect(sameMemory.saveState() == saved)
        _ = copy
        var badFeatures = saved
        badFeatures[5] |= 0x01                       // driver feature bit 0 (CSUM), never offered
        #expect(throws: MachineError.self) { try sameMemory.restoreState(badFeatures) }
        var badAddress = saved
        // First queue's descriptor table address (after version, status, features, select, isr, gen, count, size, ready).
        let descOffset = 1 + 4 + 8 + 4 + 4 + 4 + 2 + 2 + 1
        badAddress[descOffset + 7] = 0x7F
        #expect(throws: MachineError.self) { try sameMemory.restoreState(badAddress) }
        #expect(throws: MachineError.self) { try sameMemory.restoreState(Array(saved.dropLast(3))) }
        let otherMAC = VirtioNet(base: 0, memory: memory, mac: [2, 0, 0, 0, 0, 2], tap: nil, logger: Logger(label: "t"), notifyGuest: {})
        #expect(throws: MachineError.self) { try otherMAC.restoreState(saved) }
    }

    @Test func blockReadWriteFlushGetID() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("blk-\(UUID()).img").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        FileManager.default.createFile(atPath: path, contents: Data(count: 64 * 512))
        let memory = GuestMemory(try SharedMemory(size: 1 << 20))
        let writes = Mutex<[UInt64]>([])
        let block = try VirtioBlock(base: 0, memory: memory, path: path, logger: Logger(label: "t"), notifyGuest: {})
        block.writeHook = { offset, _ in writes.withLock { $0.append(offset) } }
        #expect(block.read(offset: 0x100, length: 8) == 64)
        let driver = VirtioTestDriver(device: block, memory: memory)
        #expect(driver.initialize(features: VirtioBlock.featureFlush))
        func request(_ type: UInt32, sector: UInt64, data: (UInt64, UInt32, Bool)?) -> UInt8 {
            memory.store(type, at: 0x30000); memory.store(UInt32(0), at: 0x30004); memory.store(sector, at: 0x30008)
            memory.store(UInt8(0xFF), at: 0x30100)
            var buffers: [(UInt64, UInt32, Bool)] = [(0x30000, 16, false)]
            if let data { buffers.append(data) }
            buffers.append((0x30100, 1, true))
            driver.offer(queue: 0, buffers)
            driver.notify(0)
            return memory.load(0x30100, as: UInt8.self)!
        }
        let pattern = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7) }
        _ = pattern.withUnsafeBytes { memory.write($0, at: 0x40000) }
        #expect(request(1, sector: 10, data: (0x40000, 1024, false)) == 0)
        #expect(writes.withLock { $0 } == [10 * 512])
        #expect(request(0, sector: 10, data: (0x48000, 1024, true)) == 0)
        #expect(memory.read(0x48000, count: 1024) == pattern)
        #expect(request(4, sector: 0, data: nil) == 0)
        #expect(request(8, sector: 0, data: (0x49000, 20, true)) == 0)
        #expect(String(decoding: memory.read(0x49000, count: 14)!, as: UTF8.self) == "understudy-blk")
        #expect(request(0, sector: 63, data: (0x48000, 1024, true)) == 1, "read past the end is an I/O error")
        #expect(request(77, sector: 0, data: nil) == 2, "unsupported type")
        let onDisk = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(Array(onDisk[(10 * 512)..<(10 * 512 + 1024)]) == pattern)
    }
}
