import Glibc

/// Sends a whole disk image to a new standby while the guest keeps running:
/// only the allocated parts of a sparse image (SEEK_DATA/SEEK_HOLE), in chunks
/// of at most 1 MiB, then the parts the guest wrote meanwhile, in rounds,
/// until what is left is small; that remainder goes in the first checkpoint
/// (`DiskWriteLog.closeEpoch`), read while the guest is paused.
public enum DiskSync {
    /// Chunk size of the copy.
    public static let chunk = (1 << 20) - 16

    /// The data extents of `fd` (the whole file if SEEK_DATA is unsupported).
    public static func allocatedExtents(fd: Int32, size: UInt64) -> [(UInt64, Int)] {
        var extents: [(UInt64, Int)] = []
        var position: off_t = 0
        while UInt64(position) < size {
            let data = lseek(fd, position, 3 /* SEEK_DATA */)
            if data < 0 {
                if errno == ENXIO { break }                  // no data after position
                return [(0, Int(size))]                       // no SEEK_DATA: everything
            }
            var hole = lseek(fd, data, 4 /* SEEK_HOLE */)
            if hole < 0 { hole = off_t(size) }
            extents.append((UInt64(data), Int(min(UInt64(hole), size) - UInt64(data))))
            position = hole
        }
        return extents
    }

    /// Copies the image through `send(offset, bytes)`. `log` must be in sync
    /// mode (`beginSync()`), so that writes made meanwhile are tracked.
    /// `progress(done, total)` is called as bytes go. Returns the bytes sent.
    ///
    /// A guest that writes faster than the link carries never lets the rounds
    /// converge. After the last round, if what is left is over the log's epoch
    /// budget, `pauseGuest` (when given) pauses the guest and returns how to
    /// resume it: the rest is sent with the guest held, so the first
    /// checkpoint never carries more than a budget's worth.
    @discardableResult
    public static func copy(log: DiskWriteLog, send: (UInt64, [UInt8]) throws -> Void,
                            progress: (Int, Int) -> Void = { _, _ in },
                            pauseGuest: (() throws -> () throws -> Void)? = nil) throws -> Int {
        var extents = allocatedExtents(fd: log.fd, size: log.size)
        let total = extents.reduce(0) { $0 + $1.1 }
        var sent = 0
        func copyRound(_ extents: [(UInt64, Int)], round: Int) throws {
            for (offset, length) in extents {
                var position = offset
                let end = offset + UInt64(length)
                while position < end {
                    let count = Int(min(end - position, UInt64(chunk)))
                    var buffer = [UInt8](repeating: 0, count: count)
                    let read = buffer.withUnsafeMutableBytes { pread(log.fd, $0.baseAddress, count, off_t(position)) }
                    guard read == count else { throw DiskError.system(call: "pread", errno: read < 0 ? errno : EIO) }
                    try send(position, buffer)
                    sent += count
                    if round == 0 { progress(sent, total) }
                    position += UInt64(count)
                }
            }
        }
        for round in 0..<8 {
            try copyRound(extents, round: round)
            // What the guest wrote during this round goes again, until it is
            // small; the last round's writes stay tracked (never taken and
            // dropped: they go below, or in the first checkpoint).
            let written = log.trackedExtents()
            if written.reduce(0, { $0 + $1.1 }) <= min(8 << 20, log.epochBudget) || round == 7 { break }
            extents = log.takeTrackedExtents()
        }
        // Not converging: the guest writes faster than the link. Hold it for the rest.
        if let pauseGuest, log.trackedExtents().reduce(0, { $0 + $1.1 }) > log.epochBudget {
            let resume = try pauseGuest()
            do {
                try copyRound(log.takeTrackedExtents(), round: 8)
            } catch {
                try? resume()
                throw error
            }
            try resume()
        }
        return sent
    }
}
