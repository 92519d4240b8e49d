import CKVM
import Glibc

/// The standby's copy of the guest's disk: an image file of the same size as
/// the primary's, written only with the block writes of committed checkpoints
/// (and, before the first commit, by the initial copy).
public final class ReplicaDisk: @unchecked Sendable {
    public let path: String
    public let fd: Int32
    public let size: UInt64

    /// Opens an existing image for reading and writing.
    public init(path: String) throws(DiskError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .system(call: "open \(path)", errno: errno) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { let code = errno; close(fd); throw .system(call: "fstat \(path)", errno: code) }
        self.path = path
        self.fd = fd
        size = UInt64(info.st_size)
    }

    deinit { close(fd) }

    /// Writes `bytes` at `offset` (inside the disk; checked by the caller).
    public func write(offset: UInt64, _ bytes: ArraySlice<UInt8>) throws(DiskError) {
        var done = 0
        while done < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                pwrite(fd, raw.baseAddress! + done, raw.count - done, off_t(offset) + off_t(done))
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw .system(call: "pwrite \(path)", errno: errno)
            }
            done += written
        }
    }

    /// Reads `count` bytes at `offset` (inside the disk; checked by the caller).
    public func read(offset: UInt64, count: Int) throws(DiskError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = bytes.withUnsafeMutableBytes { raw in
                pread(fd, raw.baseAddress! + done, count - done, off_t(offset) + off_t(done))
            }
            if got < 0 {
                if errno == EINTR { continue }
                throw .system(call: "pread \(path)", errno: errno)
            }
            if got == 0 { break }           // past the end of the file: holes read as zeros
            done += got
        }
        return bytes
    }

    /// Puts back bytes read before a write (undoing it). All-zero bytes are put
    /// back as a hole, so undoing a write into a hole needs no space (the
    /// write may have failed because there was none).
    public func restore(offset: UInt64, _ bytes: [UInt8]) throws(DiskError) {
        if bytes.allSatisfy({ $0 == 0 }),
           ckvm_punch_hole(fd, Int64(offset), Int64(bytes.count)) == 0 {
            return
        }
        try write(offset: offset, bytes[...])
    }

    /// Makes everything written so far durable.
    public func sync() throws(DiskError) {
        guard fdatasync(fd) == 0 else { throw .system(call: "fdatasync \(path)", errno: errno) }
    }

    /// Empties the image (all holes, same size) before a new primary's copy.
    public func reset() throws(DiskError) {
        guard ftruncate(fd, 0) == 0, ftruncate(fd, off_t(size)) == 0 else { throw .system(call: "ftruncate \(path)", errno: errno) }
    }
}
