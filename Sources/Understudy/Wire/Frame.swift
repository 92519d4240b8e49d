import CKVM

/// One frame of the replication protocol (Docs/Protocol.md).
///
/// Header, 24 bytes little-endian: magic "USRP" (u32), type (u8), flags (u8,
/// zero), reserved (u16, zero), payload length (u32), sequence (u64), then
/// CRC-32C (u32) of header bytes 0..<20 followed by the payload. Payloads are
/// at most `maximumPayload` bytes.
public struct Frame: Sendable, Equatable {
    public enum Kind: UInt8, Sendable, CaseIterable {
        /// Primary -> standby: protocol version, session, guest layout, codec features.
        case hello = 1
        /// Standby -> primary: the session is accepted.
        case welcome = 2
        /// Either way: the handshake is refused; payload is the reason (UTF-8).
        case refuse = 3
        /// Primary -> standby: a checkpoint starts (sequence = checkpoint number).
        case checkpointBegin = 4
        /// Primary -> standby: the next bytes of the checkpoint's body.
        case checkpointData = 5
        /// Primary -> standby: the checkpoint is complete; payload is its digest.
        case checkpointEnd = 6
        /// Standby -> primary: checkpoint `sequence` is committed.
        case ack = 7
        /// Either way: still alive.
        case heartbeat = 8
        /// Either way: an orderly end of the session (no failover follows).
        case goodbye = 9
        /// Primary -> standby, before the first checkpoint: disk image bytes
        /// (payload: byte offset u64, then the bytes).
        case diskData = 10
        /// Either way, inside a session: what arrived was damaged, too big, or
        /// could not be applied (payload: the reason, UTF-8). The session ends
        /// *without* a takeover: the standby keeps its last committed replica,
        /// the primary keeps holding output and starts a new session at once.
        case resync = 11
        /// Primary -> standby, before the first checkpoint of a session that does
        /// not resume a replica: guest RAM copied while the guest runs (payload:
        /// first page number u32, then whole pages). Checkpoint 0 then carries
        /// only the pages dirtied since the copy began.
        case memoryData = 12
        /// Primary -> standby: a planned switchover (`Handover`): every
        /// checkpoint sent is acknowledged, the last one (sequence) was taken
        /// with the guest paused, and the guest never runs on the primary
        /// again; the standby takes over at once. Standby -> primary, empty:
        /// the handover is accepted.
        case handover = 13
    }

    public static let magic: UInt32 = 0x5052_5355          // "USRP" little-endian
    public static let headerSize = 24
    /// The cap on one frame's payload; checkpoint bodies are sent in chunks of at most this.
    public static let maximumPayload = 1 << 20

    public var kind: Kind
    public var sequence: UInt64
    public var payload: [UInt8]

    public init(_ kind: Kind, sequence: UInt64 = 0, payload: [UInt8] = []) {
        self.kind = kind
        self.sequence = sequence
        self.payload = payload
    }

    /// The frame's bytes on the wire.
    public var encoded: [UInt8] {
        precondition(payload.count <= Self.maximumPayload, "frame payload over the cap")
        var out: [UInt8] = []
        out.reserveCapacity(Self.headerSize + payload.count)
        out.appendLittleEndian(Self.magic)
        out.append(kind.rawValue)
        out.append(0)
        out.appendLittleEndian(UInt16(0))
        out.appendLittleEndian(UInt32(payload.count))
        out.appendLittleEndian(sequence)
        let crc = Self.checksum(header: out, payload: payload)
        out.appendLittleEndian(crc)
        out += payload
        return out
    }

    static func checksum(header: some Collection<UInt8>, payload: [UInt8]) -> UInt32 {
        let first = Array(header.prefix(20))
        let crc = first.withUnsafeBytes { ckvm_crc32c(0, $0.baseAddress, $0.count) }
        return payload.withUnsafeBytes { ckvm_crc32c(crc, $0.baseAddress, $0.count) }
    }
}
