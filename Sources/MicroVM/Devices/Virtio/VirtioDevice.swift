import KVM
import Understudy
import Foundation
import Logging

/// A virtio device on the virtio-mmio transport (virtio 1.x, "modern" register
/// layout, version 2). Subclasses (`VirtioNet`, `VirtioBlock`) supply the device
/// type, features, config space and queue processing.
///
/// All state is guarded by `lock`: vCPU threads (MMIO) and backend threads (tap
/// receive) both enter. A driver error marks the device broken
/// (DEVICE_NEEDS_RESET) with a log line; the VMM keeps running.
open class VirtioDevice: MMIODevice, @unchecked Sendable {
    public let name: String
    public let base: UInt64
    public let size: UInt64 = 0x1000
    public let memory: GuestMemory
    let logger: Logger
    /// Called (outside the lock) after used buffers were returned: wakes the guest.
    let notifyGuest: @Sendable () -> Void

    public let lock = NSLock()
    public var queues: [Virtqueue]
    public var status: UInt32 = 0
    public var driverFeatures: UInt64 = 0
    var deviceFeatureSelect: UInt32 = 0
    var driverFeatureSelect: UInt32 = 0
    var queueSelect: UInt32 = 0
    public var interruptStatus: UInt32 = 0
    var configGeneration: UInt32 = 0
    /// Set by the VMM while the machine is paused: backend threads must not touch guest memory.
    public var quiesced = false

    public static let magic: UInt32 = 0x7472_6976
    public static let featureVersion1: UInt64 = 1 << 32
    public enum Status {
        public static let acknowledge: UInt32 = 1, driver: UInt32 = 2, driverOK: UInt32 = 4
        public static let featuresOK: UInt32 = 8, needsReset: UInt32 = 0x40, failed: UInt32 = 0x80
    }

    /// Subclasses: the virtio device ID (1 net, 2 block).
    open var deviceID: UInt32 { 0 }
    /// Subclasses: features offered (VIRTIO_F_VERSION_1 is added).
    open var offeredFeatures: UInt64 { 0 }

    public init(name: String, base: UInt64, memory: GuestMemory, queueSizes: [UInt16], logger: Logger,
                notifyGuest: @escaping @Sendable () -> Void) {
        self.name = name
        self.base = base
        self.memory = memory
        self.logger = logger
        self.notifyGuest = notifyGuest
        queues = queueSizes.map { Virtqueue(maxSize: $0) }
    }

    public var deviceFeatures: UInt64 { offeredFeatures | Self.featureVersion1 }
    public var isBroken: Bool { lock.withLock { status & Status.needsReset != 0 } }
    public var isDriverReady: Bool { status & Status.driverOK != 0 && status & Status.needsReset == 0 }

    // MARK: subclass hooks (called with `lock` held)

    /// Reads the device-specific config space.
    open func readConfig(offset: UInt64, length: Int) -> UInt64 { 0 }
    /// Writes the device-specific config space.
    open func writeConfig(offset: UInt64, length: Int, value: UInt64) {}
    /// The driver notified queue `index`. Returns true if used buffers were returned.
    open func processQueue(_ index: Int) throws(VirtioError) -> Bool { false }
    /// The driver reset the device.
    open func resetDevice() {}
    /// Ends the device's threads.
    open func shutdown() {}

    public func setQuiesced(_ quiesced: Bool) {
        lock.withLock { self.quiesced = quiesced }
        quiescedChanged(quiesced)
    }

    /// Subclasses: the machine paused (`quiesced`) or resumed; called after the change, outside the lock.
    open func quiescedChanged(_ quiesced: Bool) {}

    // MARK: registers

    public func read(offset: UInt64, length: Int) -> UInt64 {
        lock.lock()
        defer { lock.unlock() }
        if offset >= 0x100 { return readConfig(offset: offset - 0x100, length: length) }
        guard length == 4 else { return 0 }
        let queue = Int(queueSelect) < queues.count ? queues[Int(queueSelect)] : nil
        switch offset {
        case 0x000: return UInt64(Self.magic)
        case 0x004: return 2
        case 0x008: return UInt64(deviceID)
        case 0x00C: return 0x554E_4453          // "UNDS"
        case 0x010: return deviceFeatureSelect < 2 ? (deviceFeatures >> (32 * UInt64(deviceFeatureSelect))) & 0xFFFF_FFFF : 0
        case 0x034: return UInt64(queue?.maxSize ?? 0)
        case 0x044: return queue?.ready == true ? 1 : 0
        case 0x060: return UInt64(interruptStatus)
        case 0x070: return UInt64(status)
        case 0x0FC: return UInt64(configGeneration)
        default: return 0
        }
    }

    public func write(offset: UInt64, length: Int, value: UInt64) -> DeviceAction {
        lock.lock()
        if offset >= 0x100 {
            writeConfig(offset: offset - 0x100, length: length, value: value)
            lock.unlock()
            return .none
        }
        let v = UInt32(truncatingIfNeeded: value)
        var returnedBuffers = false
        let q = Int(queueSelect)
        let configurable = q < queues.count && !queues[q].ready
        switch offset {
        case 0x014: deviceFeatureSelect = v
        case 0x020:
            if driverFeatureSelect < 2, status & Status.featuresOK == 0 {
                let shift = 32 * UInt64(driverFeatureSelect)
                driverFeatures = (driverFeatures & ~(0xFFFF_FFFF << shift)) | UInt64(v) << shift
            }
        case 0x024: driverFeatureSelect = v
        case 0x030: queueSelect = v
        case 0x038: if configurable { queues[q].size = UInt16(truncatingIfNeeded: v) }
        case 0x044:
            if q < queues.count {
                if v == 1 {
                    do {
                        try queues[q].validate(memory)
                        queues[q].ready = true
                    } catch {
                        fail(error)
                    }
                } else {
                    queues[q].ready = false
                }
            }
        case 0x050:
            if Int(v) < queues.count, isDriverReady, queues[Int(v)].ready {
                do { returnedBuffers = try processQueue(Int(v)) } catch { fail(error) }
            }
        case 0x064: interruptStatus &= ~v
        case 0x070: writeStatus(v)
        case 0x080: if configurable { queues[q].descriptorTable = low(queues[q].descriptorTable, v) }
        case 0x084: if configurable { queues[q].descriptorTable = high(queues[q].descriptorTable, v) }
        case 0x090: if configurable { queues[q].availableRing = low(queues[q].availableRing, v) }
        case 0x094: if configurable { queues[q].availableRing = high(queues[q].availableRing, v) }
        case 0x0A0: if configurable { queues[q].usedRing = low(queues[q].usedRing, v) }
        case 0x0A4: if configurable { queues[q].usedRing = high(queues[q].usedRing, v) }
        default: break
        }
        lock.unlock()
        if returnedBuffers { notifyGuest() }
        return .none
    }

    private func low(_ current: UInt64, _ value: UInt32) -> UInt64 { current & 0xFFFF_FFFF_0000_0000 | UInt64(value) }
    private func high(_ current: UInt64, _ value: UInt32) -> UInt64 { current & 0xFFFF_FFFF | UInt64(value) << 32 }

    private func writeStatus(_ value: UInt32) {
        if value == 0 {
            reset()
            return
        }
        var newStatus = value
        if value & Status.featuresOK != 0 && status & Status.featuresOK == 0 {
            // Accept only features we offered, and VERSION_1 is mandatory on this transport.
            if driverFeatures & ~deviceFeatures != 0 || driverFeatures & Self.featureVersion1 == 0 {
                newStatus &= ~Status.featuresOK
            }
        }
        status = newStatus | (status & Status.needsReset)
    }

    /// Back to the initial state (status 0), as a driver's reset does.
    public func reset() {
        status = 0
        driverFeatures = 0
        interruptStatus = 0
        queueSelect = 0
        for i in queues.indices { queues[i] = Virtqueue(maxSize: queues[i].maxSize) }
        resetDevice()
    }

    /// Marks the device broken after a driver error (called with `lock` held).
    func fail(_ error: VirtioError) {
        if status & Status.needsReset == 0 {
            logger.warning("virtio \(name): \(error); device needs reset")
        }
        status |= Status.needsReset
        configGeneration &+= 1
    }

    /// Returns a chain and records the used-buffer interrupt (called with `lock` held).
    func complete(queue index: Int, head: UInt16, length: UInt32) throws(VirtioError) {
        try queues[index].push(head: head, length: length, memory)
        interruptStatus |= 1
    }

    // MARK: state

    /// Subclasses: their own state after the transport's.
    open func saveDeviceState(into writer: inout [UInt8]) {}
    /// Subclasses: restore what `saveDeviceState` wrote (`bytes` is exactly that).
    open func restoreDeviceState(_ bytes: ArraySlice<UInt8>) throws(MachineError) {}

    public func saveState() -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        var out: [UInt8] = [1]
        func put<I: FixedWidthInteger>(_ value: I) { withUnsafeBytes(of: value.littleEndian) { out += $0 } }
        put(status); put(driverFeatures); put(queueSelect); put(interruptStatus); put(configGeneration)
        put(UInt16(queues.count))
        for queue in queues {
            put(queue.size); put(UInt8(queue.ready ? 1 : 0)); put(queue.descriptorTable); put(queue.availableRing)
            put(queue.usedRing); put(queue.nextAvailable); put(queue.nextUsed)
        }
        saveDeviceState(into: &out)
        return out
    }

    public func restoreState(_ bytes: [UInt8]) throws(MachineError) {
        var reader = ByteReader(bytes: bytes[...], part: name)
        guard try reader.u8() == 1 else { throw .invalidState(part: name, reason: "unknown version") }
        let status = try reader.u32()
        let features = try reader.u64()
        let queueSelect = try reader.u32()
        let interruptStatus = try reader.u32()
        let generation = try reader.u32()
        guard features & ~deviceFeatures == 0 else {
            throw .invalidState(part: name, reason: "driver features 0x\(String(features, radix: 16)) include some not offered")
        }
        guard Int(try reader.u16()) == queues.count else { throw .invalidState(part: name, reason: "queue count differs") }
        var restored = queues
        for i in restored.indices {
            restored[i].size = try reader.u16()
            let ready = try reader.u8()
            guard ready <= 1 else { throw .invalidState(part: name, reason: "queue \(i) ready flag \(ready)") }
            restored[i].ready = ready == 1
            restored[i].descriptorTable = try reader.u64()
            restored[i].availableRing = try reader.u64()
            restored[i].usedRing = try reader.u64()
            restored[i].nextAvailable = try reader.u16()
            restored[i].nextUsed = try reader.u16()
            if restored[i].ready {
                do { try restored[i].validate(memory) } catch {
                    throw .invalidState(part: name, reason: "queue \(i): \(error)")
                }
                do { _ = try restored[i].pending(memory) } catch {
                    throw .invalidState(part: name, reason: "queue \(i): \(error)")
                }
                guard memory.load(restored[i].usedRing + 2, as: UInt16.self) == restored[i].nextUsed,
                      restored[i].nextAvailable &- restored[i].nextUsed <= restored[i].size else {
                    throw .invalidState(part: name, reason: "queue \(i): indices out of range")
                }
            } else if restored[i].size > restored[i].maxSize {
                throw .invalidState(part: name, reason: "queue \(i) size \(restored[i].size) above \(restored[i].maxSize)")
            }
        }
        lock.lock()
        defer { lock.unlock() }
        try restoreDeviceState(reader.rest)
        self.status = status
        self.driverFeatures = features
        self.queueSelect = queueSelect
        self.interruptStatus = interruptStatus
        self.configGeneration = generation
        self.queues = restored
    }
}
