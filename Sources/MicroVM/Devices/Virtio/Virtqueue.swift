import KVM
import Understudy

/// One split virtqueue (virtio 1.x §2.7), as the device side sees it.
///
/// Every index and address comes from the guest and is untrusted: chains are
/// walked with bounds checks, a cycle or an over-long chain is an error, and a
/// buffer outside guest RAM is an error. The device is then marked broken.
public struct Virtqueue: Sendable, Equatable {
    /// Largest queue size this device accepts.
    public let maxSize: UInt16
    /// Size the driver chose (a power of two, at most `maxSize`).
    public var size: UInt16 = 0
    public var ready = false
    public var descriptorTable: UInt64 = 0
    public var availableRing: UInt64 = 0
    public var usedRing: UInt64 = 0
    /// The next available-ring index the device will consume.
    public var nextAvailable: UInt16 = 0
    /// The next used-ring index the device will fill.
    public var nextUsed: UInt16 = 0

    public init(maxSize: UInt16) { self.maxSize = maxSize }

    /// One buffer of a chain.
    public struct Buffer: Sendable, Equatable {
        public var address: UInt64
        public var length: UInt32
        /// Device-writable (VIRTQ_DESC_F_WRITE).
        public var writable: Bool
    }

    /// A descriptor chain the driver made available.
    public struct Chain: Sendable, Equatable {
        public var head: UInt16
        public var buffers: [Buffer]
        public var readableLength: Int { buffers.filter { !$0.writable }.reduce(0) { $0 + Int($1.length) } }
        public var writableLength: Int { buffers.filter(\.writable).reduce(0) { $0 + Int($1.length) } }
    }

    static let flagNext: UInt16 = 1, flagWrite: UInt16 = 2, flagIndirect: UInt16 = 4

    /// Checks the rings lie in guest memory and the size is valid.
    public func validate(_ memory: GuestMemory) throws(VirtioError) {
        guard size > 0, size <= maxSize, size & (size - 1) == 0 else { throw .badQueue("size \(size)") }
        let n = Int(size)
        guard memory.contains(descriptorTable, length: 16 * n), descriptorTable % 16 == 0 else {
            throw .badQueue("descriptor table at 0x\(String(descriptorTable, radix: 16)) outside RAM or misaligned")
        }
        guard memory.contains(availableRing, length: 6 + 2 * n), availableRing % 2 == 0 else {
            throw .badQueue("available ring at 0x\(String(availableRing, radix: 16)) outside RAM or misaligned")
        }
        guard memory.contains(usedRing, length: 6 + 8 * n), usedRing % 4 == 0 else {
            throw .badQueue("used ring at 0x\(String(usedRing, radix: 16)) outside RAM or misaligned")
        }
    }

    /// Chains available and not yet consumed, as the driver's index says.
    public func pending(_ memory: GuestMemory) throws(VirtioError) -> Int {
        guard let index = memory.load(availableRing + 2, as: UInt16.self) else { throw .badQueue("available ring unreadable") }
        let count = Int(index &- nextAvailable)
        guard count <= Int(size) else { throw .badQueue("available index \(index) is \(count) ahead of \(nextAvailable)") }
        return count
    }

    /// Takes the next available chain, or nil when there is none.
    public mutating func pop(_ memory: GuestMemory) throws(VirtioError) -> Chain? {
        guard ready else { return nil }
        guard try pending(memory) > 0 else { return nil }
        let slot = availableRing + 4 + 2 * UInt64(nextAvailable % size)
        guard let head = memory.load(slot, as: UInt16.self) else { throw .badQueue("available ring unreadable") }
        guard head < size else { throw .badChain("head \(head) beyond queue size \(size)") }
        var buffers: [Buffer] = []
        var index = head
        var sawWritable = false
        while true {
            guard buffers.count < Int(size) else { throw .badChain("chain from \(head) is longer than the queue (a loop?)") }
            let descriptor = descriptorTable + 16 * UInt64(index)
            guard let address = memory.load(descriptor, as: UInt64.self),
                  let length = memory.load(descriptor + 8, as: UInt32.self),
                  let flags = memory.load(descriptor + 12, as: UInt16.self),
                  let next = memory.load(descriptor + 14, as: UInt16.self) else {
                throw .badChain("descriptor \(index) unreadable")
            }
            guard flags & Self.flagIndirect == 0 else { throw .badChain("indirect descriptor (not negotiated)") }
            let writable = flags & Self.flagWrite != 0
            guard !(sawWritable && !writable) else { throw .badChain("readable buffer after a writable one") }
            sawWritable = sawWritable || writable
            guard length > 0 else { throw .badChain("descriptor \(index) has zero length") }
            guard memory.contains(address, length: Int(length)) else {
                throw .badChain("buffer 0x\(String(address, radix: 16))+\(length) outside guest RAM")
            }
            buffers.append(Buffer(address: address, length: length, writable: writable))
            guard flags & Self.flagNext != 0 else { break }
            guard next < size else { throw .badChain("next \(next) beyond queue size \(size)") }
            index = next
        }
        nextAvailable &+= 1
        return Chain(head: head, buffers: buffers)
    }

    /// Returns a chain to the driver with `length` bytes written into it.
    public mutating func push(head: UInt16, length: UInt32, _ memory: GuestMemory) throws(VirtioError) {
        let element = usedRing + 4 + 8 * UInt64(nextUsed % size)
        guard memory.store(UInt32(head), at: element), memory.store(length, at: element + 4) else {
            throw .badQueue("used ring unwritable")
        }
        nextUsed &+= 1
        guard memory.store(nextUsed, at: usedRing + 2) else { throw .badQueue("used ring unwritable") }
    }
}

/// A driver error the device refuses; the device is then broken until reset.
public enum VirtioError: Error, Equatable, Sendable, CustomStringConvertible {
    case badQueue(String)
    case badChain(String)
    case badRequest(String)
    case backend(String)

    public var description: String {
        switch self {
        case .badQueue(let why): "bad virtqueue: \(why)"
        case .badChain(let why): "bad descriptor chain: \(why)"
        case .badRequest(let why): "bad request: \(why)"
        case .backend(let why): "backend failure: \(why)"
        }
    }
}
