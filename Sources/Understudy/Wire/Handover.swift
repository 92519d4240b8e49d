/// The payload of a `handover` frame: a planned switchover. The primary sends
/// it once every checkpoint it sent is acknowledged and its guest is paused for
/// good; the frame's sequence is that last checkpoint. The standby answers with
/// an empty `handover` frame and takes the guest over at once.
public struct Handover: Sendable, Equatable {
    /// The most bytes the address may take.
    public static let maximumAddressBytes = 255

    /// The newest checkpoint whose output the primary released (nil: none): a
    /// standby taking over releases the output of every committed epoch after it.
    public var releasedThrough: UInt64?
    /// Where the former primary now waits as a standby (nil: nowhere): the
    /// new primary protects the guest there.
    public var standby: SocketAddress?

    public init(releasedThrough: UInt64?, standby: SocketAddress?) {
        self.releasedThrough = releasedThrough
        self.standby = standby
    }

    /// releasedThrough u64 (`UInt64.max`: none), then the address as
    /// "HOST:PORT" in UTF-8 (empty: none), at most 255 bytes.
    public var payload: [UInt8] {
        var out: [UInt8] = []
        out.appendLittleEndian(releasedThrough ?? .max)
        out += Array((standby?.description ?? "").utf8.prefix(Self.maximumAddressBytes))
        return out
    }

    /// Reads and checks a handover payload.
    public init(payload: [UInt8]) throws(WireError) {
        var reader = PayloadReader(payload, what: "handover")
        let released = try reader.integer(UInt64.self)
        releasedThrough = released == .max ? nil : released
        let rest = payload.dropFirst(8)
        guard rest.count <= Self.maximumAddressBytes else { throw .malformed("handover address of \(rest.count) bytes") }
        if rest.isEmpty {
            standby = nil
        } else {
            guard let text = String(validating: rest, as: UTF8.self) else { throw .malformed("handover address is not UTF-8") }
            do { standby = try SocketAddress(parsing: text) } catch { throw .malformed("handover address: \(error)") }
        }
    }
}
