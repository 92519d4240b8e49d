import KVM
import Understudy
import Foundation
import Logging

/// virtio-blk over a file.
///
/// Requests are served synchronously on the vCPU thread that notified the queue.
/// Every write goes through `writeHook` after reaching the file: the one place
/// disk replication mirrors block writes.
public final class VirtioBlock: VirtioDevice, @unchecked Sendable {
    public static let featureReadOnly: UInt64 = 1 << 5
    public static let featureFlush: UInt64 = 1 << 9
    public static let sectorSize = 512
    public static let queueSize: UInt16 = 128

    public enum RequestType: UInt32 { case read = 0, write = 1, flush = 4, getID = 8 }
    public enum RequestStatus: UInt8 { case ok = 0, ioError = 1, unsupported = 2 }

    public let fd: Int32
    public let path: String
    public let readOnly: Bool
    /// Capacity in 512-byte sectors.
    public let sectors: UInt64
    /// Called after a guest write reached the file: (byte offset, bytes).
    public var writeHook: (@Sendable (UInt64, UnsafeRawBufferPointer) -> Void)?
    /// Called after a guest flush completed.
    public var flushHook: (@Sendable () -> Void)?

    public override var deviceID: UInt32 { 2 }
    public override var offeredFeatures: UInt64 { Self.featureFlush | (readOnly ? Self.featureReadOnly : 0) }

    /// Opens `path` (which must exist; its size, rounded down to sectors, is the capacity).
    public init(base: UInt64, memory: GuestMemory, path: String, readOnly: Bool = false, logger: Logger,
                notifyGuest: @escaping @Sendable () -> Void) throws(MachineError) {
        let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else { throw .invalidConfiguration("disk \(path): open failed (errno \(errno))") }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            close(fd)
            throw .invalidConfiguration("disk \(path): fstat failed (errno \(errno))")
        }
        self.fd = fd
        self.path = path
        self.readOnly = readOnly
        sectors = UInt64(info.st_size) / UInt64(Self.sectorSize)
        super.init(name: "virtio-blk", base: base, memory: memory, queueSizes: [Self.queueSize],
                   logger: logger, notifyGuest: notifyGuest)
    }

    deinit { close(fd) }

    public override func readConfig(offset: UInt64, length: Int) -> UInt64 {
        var config = [UInt8](repeating: 0, count: 24)
        withUnsafeBytes(of: sectors.littleEndian) { for (i, b) in $0.enumerated() { config[i] = b } }
        guard offset < UInt64(config.count) else { return 0 }
        var value: UInt64 = 0
        for i in 0..<length where Int(offset) + i < config.count { value |= UInt64(config[Int(offset) + i]) << (8 * UInt64(i)) }
        return value
    }

    public override func processQueue(_ index: Int) throws(VirtioError) -> Bool {
        var returned = false
        while let chain = try queues[0].pop(memory) {
            let written = try serve(chain)
            try complete(queue: 0, head: chain.head, length: written)
            returned = true
        }
        return returned
    }

    /// Serves one request; returns the bytes written into the chain's writable buffers.
    private func serve(_ chain: Virtqueue.Chain) throws(VirtioError) -> UInt32 {
        guard chain.buffers.count >= 2, let header = chain.buffers.first, !header.writable, header.length >= 16,
              let statusBuffer = chain.buffers.last, statusBuffer.writable, statusBuffer.length >= 1 else {
            throw .badRequest("a block request needs a 16-byte header and a status byte")
        }
        let type = memory.load(header.address, as: UInt32.self) ?? UInt32.max
        let sector = memory.load(header.address + 8, as: UInt64.self) ?? 0
        let data = chain.buffers.dropFirst().dropLast()
        var status = RequestStatus.ok
        var written: UInt32 = 0
        switch RequestType(rawValue: type) {
        case .read?:
            guard data.allSatisfy(\.writable) else { throw .badRequest("read into a device-readable buffer") }
            var offset = sector.multipliedReportingOverflow(by: UInt64(Self.sectorSize))
            let total = data.reduce(0) { $0 + UInt64($1.length) }
            if offset.overflow || !fits(offset.partialValue, total) { status = .ioError; break }
            for buffer in data {
                guard let pointer = memory.pointer(buffer.address, length: Int(buffer.length)) else { throw .badChain("buffer outside RAM") }
                if pread(fd, pointer, Int(buffer.length), off_t(offset.partialValue)) != Int(buffer.length) { status = .ioError; break }
                memory.mark(buffer.address, length: Int(buffer.length))
                offset.partialValue += UInt64(buffer.length)
                written += buffer.length
            }
        case .write?:
            guard data.allSatisfy({ !$0.writable }) else { throw .badRequest("write from a device-writable buffer") }
            if readOnly { status = .ioError; break }
            var offset = sector.multipliedReportingOverflow(by: UInt64(Self.sectorSize))
            let total = data.reduce(0) { $0 + UInt64($1.length) }
            if offset.overflow || !fits(offset.partialValue, total) { status = .ioError; break }
            for buffer in data {
                guard let pointer = memory.pointer(buffer.address, length: Int(buffer.length)) else { throw .badChain("buffer outside RAM") }
                if pwrite(fd, pointer, Int(buffer.length), off_t(offset.partialValue)) != Int(buffer.length) { status = .ioError; break }
                writeHook?(offset.partialValue, UnsafeRawBufferPointer(start: pointer, count: Int(buffer.length)))
                offset.partialValue += UInt64(buffer.length)
            }
        case .flush?:
            if fdatasync(fd) != 0 { status = .ioError } else { flushHook?() }
        case .getID?:
            guard let buffer = data.first, buffer.writable else { throw .badRequest("get-id without a writable buffer") }
            var id = Array("understudy-blk".utf8)
            id += [UInt8](repeating: 0, count: 20 - id.count)
            let count = min(20, Int(buffer.length))
            _ = id.withUnsafeBytes { memory.write(UnsafeRawBufferPointer(rebasing: $0[0..<count]), at: buffer.address) }
            written += UInt32(count)
        case nil:
            status = .unsupported
        }
        guard memory.store(status.rawValue, at: statusBuffer.address) else { throw .badChain("status byte outside RAM") }
        return written + 1
    }

    private func fits(_ offset: UInt64, _ length: UInt64) -> Bool {
        let capacity = sectors * UInt64(Self.sectorSize)
        return offset <= capacity && length <= capacity - offset
    }
}
