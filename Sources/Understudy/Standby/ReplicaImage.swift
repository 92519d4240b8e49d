import CKVM
import KVM

/// The standby's copy of the guest: RAM in a memfd (so a VMM can hand it to KVM
/// on failover without copying) and the state of the last committed checkpoint.
///
/// `apply(_:)` verifies a checkpoint completely (digest, sequence, every page
/// record's bounds and encoding) and decodes it into staging before touching
/// the image: the image is always exactly one whole checkpoint.
public final class ReplicaImage: @unchecked Sendable {
    public let memory: SharedMemory
    /// The committed machine state (empty before the first checkpoint).
    public private(set) var state: [UInt8] = []
    /// The external output of the committed checkpoint's epoch, as decoded
    /// (and so verified) before the commit.
    public private(set) var output: [OutputRecord] = []
    /// The standby's disk image, if the guest has a disk: each checkpoint's block
    /// writes are applied to it when, and only when, the checkpoint commits.
    public var disk: ReplicaDisk?
    /// Block-write bytes applied by the newest checkpoint, and how long that took.
    public private(set) var lastDiskApply: (bytes: Int, time: Duration) = (0, .zero)
    /// The sequence number of the committed checkpoint, nil before the first.
    public private(set) var committedSequence: UInt64?
    /// False once a failed apply could not be undone: memory and disk may then
    /// be of different checkpoints, and nothing may resume from this image.
    public private(set) var isIntact = true
    /// Set by `beginResync()`: the next checkpoint must be a full image.
    private var awaitingFull = false
    /// Pages written by `precopy` since the last commit (nil: none).
    private var precopied: DirtyBitmap?

    /// Whether a pre-copy has covered every page: then a session's first
    /// checkpoint may carry only the pages dirtied since.
    public var isPrecopied: Bool { precopied.map { $0.count == $0.pageCount } ?? false }

    /// Guest RAM copied while the primary's guest ran (`CheckpointEngine.precopy`),
    /// written straight into the image: only while no intact committed
    /// checkpoint is there to keep (a first session, or a torn replica).
    /// `bytes` is whole pages from `firstPage`.
    public func precopy(firstPage: Int, _ bytes: ArraySlice<UInt8>) throws(ApplyError) {
        guard bytes.count % pageSize == 0 else {
            throw .badPage(index: firstPage, reason: "pre-copied memory of \(bytes.count) bytes is not whole pages")
        }
        let target = try precopyTarget(firstPage: firstPage, count: bytes.count / pageSize)
        bytes.withUnsafeBytes { raw in
            if let base = raw.baseAddress { target.copyMemory(from: base, byteCount: raw.count) }
        }
    }

    /// `count` pages from `firstPage` that were all zero on the primary.
    public func precopyZeroPages(firstPage: Int, count: Int) throws(ApplyError) {
        let target = try precopyTarget(firstPage: firstPage, count: count)
        target.initializeMemory(as: UInt8.self, repeating: 0, count: count * pageSize)
    }

    /// Where pre-copied pages `firstPage..<firstPage+count` go, marked as copied.
    private func precopyTarget(firstPage: Int, count: Int) throws(ApplyError) -> UnsafeMutableRawPointer {
        guard committedSequence == nil || !isIntact else {
            throw .badPage(index: firstPage, reason: "pre-copied memory while an intact committed checkpoint is held")
        }
        guard firstPage >= 0, count >= 0, firstPage <= pageCount, count <= pageCount - firstPage else {
            throw .badPage(index: firstPage, reason: "pre-copied pages \(firstPage)+\(count) beyond guest RAM")
        }
        let marks = precopied ?? DirtyBitmap(pageCount: pageCount)
        precopied = marks
        for page in firstPage..<(firstPage + count) { marks[page] = true }
        return memory.base + firstPage * pageSize
    }

    private let codec = PageCodec()
    private var staging: UnsafeMutableRawPointer
    private var stagingCapacity: Int
    private var stagedPages: [Int] = []

    /// An empty image of `memorySize` bytes.
    public init(memorySize: Int) throws(KVMError) {
        memory = try SharedMemory(size: memorySize, name: "understudy-replica")
        stagingCapacity = 1024
        staging = .allocate(byteCount: stagingCapacity * pageSize, alignment: 64)
    }

    deinit { staging.deallocate() }

    public var pageCount: Int { memory.size / pageSize }

    /// Why a checkpoint was refused. The image is unchanged.
    public enum ApplyError: Error, Equatable, Sendable, CustomStringConvertible {
        case digestMismatch
        case outOfSequence(expected: UInt64?, got: UInt64)
        case firstMustBeFull
        case badPage(index: Int, reason: String)
        case badOutput(String)
        case badDisk(String)
        /// The disk image could not be written. The writes made before the failure
        /// were undone (the image is still the previous checkpoint) unless the
        /// reason says otherwise, and then `isIntact` is false.
        case diskFailed(String)
        /// An earlier failure left the image torn: it takes no checkpoint and must
        /// not be taken over from until a new primary session replaces it.
        case torn

        public var description: String {
            switch self {
            case .digestMismatch: "checkpoint digest does not match its contents"
            case .outOfSequence(let expected, let got): "checkpoint \(got) out of sequence (expected \(expected.map(String.init) ?? "a full checkpoint"))"
            case .firstMustBeFull: "the first checkpoint must be a full image"
            case .badPage(let index, let reason): "page record \(index): \(reason)"
            case .badOutput(let reason): "output: \(reason)"
            case .badDisk(let reason): "disk: \(reason)"
            case .diskFailed(let reason): "writing the replica's disk failed: \(reason)"
            case .torn: "the replica is torn by an earlier failure and takes no checkpoint until it is replaced"
            }
        }
    }

    /// Verifies, decodes and commits `checkpoint`.
    public func apply(_ checkpoint: Checkpoint) throws(ApplyError) {
        guard checkpoint.computedDigest == checkpoint.digest else { throw .digestMismatch }
        // A session's first checkpoint is a full image, or, after a complete
        // pre-copy, the pages dirtied since.
        let precopiedFirst = isPrecopied && checkpoint.sequence == 0
        if let committed = committedSequence, !awaitingFull {
            guard checkpoint.sequence == committed &+ 1 else { throw .outOfSequence(expected: committed &+ 1, got: checkpoint.sequence) }
        } else {
            guard checkpoint.isFull || precopiedFirst else { throw .firstMustBeFull }
        }
        let outputRecords: [OutputRecord]
        do { outputRecords = try OutputRecord.decode(checkpoint.output) } catch { throw .badOutput(error.description) }
        var diskItems: [DiskRecord.Item] = []
        if !checkpoint.disk.isEmpty {
            guard let disk else { throw .badDisk("block writes for a standby without a disk") }
            do { diskItems = try DiskRecord.decode(checkpoint.disk, diskSize: disk.size) } catch { throw .badDisk(error.description) }
        }
        guard isIntact || checkpoint.isFull || precopiedFirst else { throw .torn }
        try decodeIntoStaging(checkpoint)
        // Commit. The disk first, undoably: if a write fails part way, what was
        // written is put back, and memory stays the previous checkpoint too.
        if let disk, !diskItems.isEmpty || checkpoint.isFull {
            let started = ContinuousClock.now
            var bytes = 0
            var undo: [(offset: UInt64, old: [UInt8])] = []
            do {
                var flush = checkpoint.isFull        // the initial copy becomes durable with the full image
                for item in diskItems {
                    switch item {
                    case .write(let offset, let data):
                        undo.append((offset, try disk.read(offset: offset, count: data.count)))
                        try disk.write(offset: offset, data)
                        bytes += data.count
                    case .flush:
                        flush = true
                    }
                }
                if flush { try disk.sync() }
            } catch {
                do {
                    for (offset, old) in undo.reversed() { try disk.restore(offset: offset, old) }
                } catch let rollback {
                    isIntact = false
                    throw .diskFailed("\(error); putting the earlier bytes back failed too (\(rollback)): the replica's disk is torn")
                }
                throw .diskFailed("\(error); the \(undo.count) writes made before it were undone")
            }
            lastDiskApply = (bytes, ContinuousClock.now - started)
        }
        // Commit: nothing below can fail.
        for (index, page) in stagedPages.enumerated() {
            (memory.base + page * pageSize).copyMemory(from: staging + index * pageSize, byteCount: pageSize)
        }
        state = checkpoint.state
        output = outputRecords
        committedSequence = checkpoint.sequence
        awaitingFull = false
        isIntact = true
        precopied = nil
    }

    /// Forgets the committed checkpoint: the image is no takeover point any
    /// more, and the next session fills it as a first one would (pre-copy, or
    /// a full image). Memory keeps its bytes until they are overwritten.
    public func discard() {
        committedSequence = nil
        state = []
        output = []
        awaitingFull = false
        isIntact = true
        precopied = nil
    }

    /// A new session of the same guest begins: the committed checkpoint stays
    /// (it can still be taken over from) until the session's first checkpoint,
    /// a full image, commits and replaces it; sequence numbers start again there.
    public func beginResync() {
        awaitingFull = true
    }

    private func decodeIntoStaging(_ checkpoint: Checkpoint) throws(ApplyError) {
        if checkpoint.pageCount > stagingCapacity {
            guard checkpoint.pageCount <= pageCount else {
                throw .badPage(index: checkpoint.pageCount, reason: "more pages than guest RAM has")
            }
            staging.deallocate()
            stagingCapacity = checkpoint.pageCount
            staging = .allocate(byteCount: stagingCapacity * pageSize, alignment: 64)
        }
        stagedPages.removeAll(keepingCapacity: true)
        do {
            try checkpoint.pages.withUnsafeBytes { raw in try decodeRecords(raw, of: checkpoint) }
        } catch let error as ApplyError {
            throw error
        } catch {
            throw .badPage(index: 0, reason: "\(error)")
        }
        if checkpoint.isFull && stagedPages.count != pageCount {
            throw .badPage(index: stagedPages.count, reason: "a full checkpoint must carry all \(pageCount) pages")
        }
    }

    private func decodeRecords(_ raw: UnsafeRawBufferPointer, of checkpoint: Checkpoint) throws(ApplyError) {
        var seen = Set<Int>()
        do {
            var offset = 0
            for index in 0..<checkpoint.pageCount {
                guard raw.count - offset >= 9 else { throw .badPage(index: index, reason: "truncated record header") }
                let page = Int(raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian)
                let tag = raw[offset + 4]
                let length = Int(raw.loadUnaligned(fromByteOffset: offset + 5, as: UInt32.self).littleEndian)
                offset += 9
                guard page < pageCount else { throw .badPage(index: index, reason: "page \(page) beyond guest RAM") }
                guard seen.insert(page).inserted else { throw .badPage(index: index, reason: "page \(page) appears twice") }
                guard let encoding = PageEncoding(rawValue: tag) else { throw .badPage(index: index, reason: "unknown encoding \(tag)") }
                guard !(checkpoint.isFull && encoding.isDelta) else { throw .badPage(index: index, reason: "delta in a full checkpoint") }
                guard length <= raw.count - offset else { throw .badPage(index: index, reason: "payload runs past the checkpoint") }
                let target = staging + index * pageSize
                target.copyMemory(from: memory.base + page * pageSize, byteCount: pageSize)
                do {
                    try codec.decode(encoding, payload: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + length)]), into: target)
                } catch {
                    throw .badPage(index: index, reason: "\(error)")
                }
                stagedPages.append(page)
                offset += length
            }
            guard offset == raw.count else { throw .badPage(index: checkpoint.pageCount, reason: "\(raw.count - offset) bytes after the last record") }
        }
    }

    /// CRC-32C of the whole image (tests compare it with the guest's memory).
    public var memoryDigest: UInt32 { ckvm_crc32c(0, memory.base, memory.size) }
}
