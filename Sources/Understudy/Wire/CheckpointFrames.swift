/// Cuts a checkpoint into frames: `checkpointBegin`, its body (page records,
/// state, output) in `checkpointData` chunks of at most `Frame.maximumPayload`,
/// then `checkpointEnd` carrying the digest.
public enum CheckpointFrames {
    /// Calls `body` with each frame of `checkpoint` in order (one chunk in memory at a time).
    public static func forEach(_ checkpoint: Checkpoint, releasedThrough: UInt64 = .max, chunkSize: Int = Frame.maximumPayload,
                               _ body: (Frame) throws(WireError) -> Void) throws(WireError) {
        let begin = CheckpointBegin(checkpoint, releasedThrough: releasedThrough)
        try body(Frame(.checkpointBegin, sequence: checkpoint.sequence, payload: begin.payload))
        var chunk: [UInt8] = []
        chunk.reserveCapacity(min(chunkSize, checkpoint.encodedSize))
        for part in [checkpoint.pages, checkpoint.state, checkpoint.output, checkpoint.disk] {
            var offset = 0
            while offset < part.count {
                let take = min(chunkSize - chunk.count, part.count - offset)
                chunk += part[offset..<(offset + take)]
                offset += take
                if chunk.count == chunkSize {
                    try body(Frame(.checkpointData, sequence: checkpoint.sequence, payload: chunk))
                    chunk.removeAll(keepingCapacity: true)
                }
            }
        }
        if !chunk.isEmpty { try body(Frame(.checkpointData, sequence: checkpoint.sequence, payload: chunk)) }
        var digest: [UInt8] = []
        digest.appendLittleEndian(checkpoint.digest)
        try body(Frame(.checkpointEnd, sequence: checkpoint.sequence, payload: digest))
    }

    /// All frames of `checkpoint`.
    public static func frames(for checkpoint: Checkpoint, releasedThrough: UInt64 = .max, chunkSize: Int = Frame.maximumPayload) -> [Frame] {
        var frames: [Frame] = []
        try? forEach(checkpoint, releasedThrough: releasedThrough, chunkSize: chunkSize) { frames.append($0) }
        return frames
    }
}

/// Puts a checkpoint back together from its frames, checking each against the
/// begin frame's promises (same sequence, no more body than announced, an end
/// only after the whole body). Frames come from the network: every violation
/// throws and the partial checkpoint is discarded.
public struct CheckpointAssembler: Sendable {
    public let guestPages: Int
    private var sequence: UInt64?
    private var begin: CheckpointBegin?
    private var body: [UInt8] = []

    public init(guestPages: Int) { self.guestPages = guestPages }

    /// Whether a checkpoint is partly received.
    public var inProgress: Bool { begin != nil }
    /// Body bytes received and announced, for progress reports.
    public var progress: (received: Int, total: Int) { (body.count, begin?.bodyLength ?? 0) }

    /// Takes one checkpoint frame; returns the checkpoint (and the primary's
    /// `releasedThrough` mark) when `frame` completes it.
    public mutating func take(_ frame: Frame) throws(WireError) -> (checkpoint: Checkpoint, releasedThrough: UInt64)? {
        switch frame.kind {
        case .checkpointBegin:
            guard begin == nil else { throw .unexpected("checkpoint \(frame.sequence) begins inside checkpoint \(sequence ?? 0)") }
            let announced = try CheckpointBegin(payload: frame.payload, guestPages: guestPages)
            begin = announced
            sequence = frame.sequence
            body.removeAll(keepingCapacity: true)
            body.reserveCapacity(min(announced.bodyLength, 64 << 20))
            return nil
        case .checkpointData:
            guard let announced = begin, frame.sequence == sequence else { throw .unexpected("checkpoint data for \(frame.sequence) outside its checkpoint") }
            guard frame.payload.count <= announced.bodyLength - body.count else {
                throw .malformed("checkpoint \(frame.sequence) carries more than the \(announced.bodyLength) bytes announced")
            }
            body += frame.payload
            return nil
        case .checkpointEnd:
            guard let announced = begin, frame.sequence == sequence else { throw .unexpected("checkpoint end for \(frame.sequence) outside its checkpoint") }
            defer { begin = nil; sequence = nil; body.removeAll(keepingCapacity: true) }
            guard body.count == announced.bodyLength else {
                throw .malformed("checkpoint \(frame.sequence) ended after \(body.count) of \(announced.bodyLength) bytes (torn)")
            }
            var reader = PayloadReader(frame.payload, what: "checkpoint end")
            let digest: UInt32 = try reader.integer()
            try reader.finish()
            let pagesEnd = Int(announced.pagesLength)
            let stateEnd = pagesEnd + Int(announced.stateLength)
            let outputEnd = stateEnd + Int(announced.outputLength)
            var checkpoint = Checkpoint(sequence: frame.sequence, isFull: announced.isFull, pageCount: Int(announced.pageCount),
                                        pages: Array(body[0..<pagesEnd]), state: Array(body[pagesEnd..<stateEnd]),
                                        output: Array(body[stateEnd..<outputEnd]), disk: Array(body[outputEnd...]))
            checkpoint.digest = digest          // as sent: the replica verifies it against the contents
            return (checkpoint, announced.releasedThrough)
        default:
            throw .unexpected("\(frame.kind) is not part of a checkpoint")
        }
    }

    /// Drops a partly received checkpoint.
    public mutating func reset() {
        begin = nil
        sequence = nil
        body.removeAll()
    }
}
