import KVM
import Understudy
@testable import MicroVM

/// A minimal virtio driver written in Swift, driving a device model directly
/// (register reads and writes, rings in plain memory): tests need no KVM.
final class VirtioTestDriver {
    let device: VirtioDevice
    let memory: GuestMemory
    /// Per queue: descriptor table, available ring, used ring addresses.
    var rings: [(desc: UInt64, avail: UInt64, used: UInt64)] = []
    var availIndex: [UInt16] = []
    var nextDescriptor: [UInt16] = []
    let queueSize: UInt16

    init(device: VirtioDevice, memory: GuestMemory, queueSize: UInt16 = 16) {
        self.device = device
        self.memory = memory
        self.queueSize = queueSize
    }

    func reg(_ offset: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: device.read(offset: offset, length: 4)) }
    func set(_ offset: UInt64, _ value: UInt32) { _ = device.write(offset: offset, length: 4, value: UInt64(value)) }

    /// Resets, negotiates `features` (VERSION_1 is added), sets up every queue, DRIVER_OK.
    /// Returns whether FEATURES_OK stuck.
    @discardableResult
    func initialize(features: UInt64 = 0, ringBase: UInt64 = 0x10000) -> Bool {
        set(0x070, 0)
        set(0x070, 1)
        set(0x070, 3)
        let wanted = features | VirtioDevice.featureVersion1
        set(0x024, 0); set(0x020, UInt32(truncatingIfNeeded: wanted))
        set(0x024, 1); set(0x020, UInt32(truncatingIfNeeded: wanted >> 32))
        set(0x070, 0xB)
        guard reg(0x070) & 8 != 0 else { return false }
        var address = ringBase
        for q in 0..<device.queues.count {
            set(0x030, UInt32(q))
            set(0x038, UInt32(queueSize))
            let desc = address, avail = address + 0x1000, used = address + 0x2000
            address += 0x3000
            set(0x080, UInt32(truncatingIfNeeded: desc)); set(0x084, UInt32(truncatingIfNeeded: desc >> 32))
            set(0x090, UInt32(truncatingIfNeeded: avail)); set(0x094, UInt32(truncatingIfNeeded: avail >> 32))
            set(0x0A0, UInt32(truncatingIfNeeded: used)); set(0x0A4, UInt32(truncatingIfNeeded: used >> 32))
            set(0x044, 1)
            rings.append((desc, avail, used))
            availIndex.append(0)
            nextDescriptor.append(0)
        }
        set(0x070, 0xF)
        return true
    }

    /// Writes a raw descriptor.
    func descriptor(queue: Int, index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        let base = rings[queue].desc + 16 * UInt64(index)
        memory.store(address, at: base)
        memory.store(length, at: base + 8)
        memory.store(flags, at: base + 12)
        memory.store(next, at: base + 14)
    }

    /// Chains `buffers` (address, length, writable) and makes the chain available. Returns the head.
    @discardableResult
    func offer(queue: Int, _ buffers: [(UInt64, UInt32, Bool)]) -> UInt16 {
        let head = nextDescriptor[queue]
        for (i, buffer) in buffers.enumerated() {
            let index = (head + UInt16(i)) % queueSize
            let last = i == buffers.count - 1
            descriptor(queue: queue, index: index, address: buffer.0, length: buffer.1,
                       flags: (last ? 0 : 1) | (buffer.2 ? 2 : 0), next: (index + 1) % queueSize)
        }
        nextDescriptor[queue] = (head + UInt16(buffers.count)) % queueSize
        makeAvailable(queue: queue, head: head)
        return head
    }

    func makeAvailable(queue: Int, head: UInt16) {
        let avail = rings[queue].avail
        memory.store(head, at: avail + 4 + 2 * UInt64(availIndex[queue] % queueSize))
        availIndex[queue] &+= 1
        memory.store(availIndex[queue], at: avail + 2)
    }

    func notify(_ queue: Int) { set(0x050, UInt32(queue)) }

    /// The used ring's index and its entries so far.
    func used(queue: Int) -> [(id: UInt32, length: UInt32)] {
        let used = rings[queue].used
        let count = Int(memory.load(used + 2, as: UInt16.self)!)
        return (0..<count).map { i in
            let element = used + 4 + 8 * UInt64(UInt16(i) % queueSize)
            return (memory.load(element, as: UInt32.self)!, memory.load(element + 4, as: UInt32.self)!)
        }
    }

    var needsReset: Bool { reg(0x070) & VirtioDevice.Status.needsReset != 0 }
}
