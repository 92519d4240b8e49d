import KVM

/// The handshake's opening (primary -> standby) and, with the same layout, the
/// standby's welcome: what the standby must match to hold a replica of this guest.
public struct Hello: Sendable, Equatable {
    /// 2: the guest id, the resume flag, and the `resync` frame. 3: the
    /// primary's resume flag (a standby keeps its replica only when asked).
    public static let protocolVersion: UInt16 = 4
    public static let payloadSize = 76 + Platform.size

    public var version: UInt16
    public var flags: Flags
    /// Random per session: a new standby, or a reconnect, is a new session.
    public var session: [UInt8]
    /// Random per guest run, the same in every session of that run: a standby
    /// that holds a committed replica of this guest (from a session that ended
    /// without a takeover) keeps it until the new session's first checkpoint
    /// commits, and the primary does not copy the disk again.
    public var guest: [UInt8]
    public var memorySize: UInt64
    public var pageSize: UInt32
    /// Bit n set: the sender can decode `PageEncoding(rawValue: n)`.
    public var codecFeatures: UInt32
    public var devices: Devices
    /// The primary's epoch in microseconds (informational).
    public var epochMicroseconds: UInt32
    /// The guest's network card's MAC (six zeros without one): the standby's card must have it.
    public var mac: [UInt8]
    /// The guest's disk size in bytes (0 without a disk): the standby's image must match.
    public var diskSize: UInt64
    /// What the standby needs to run the guest: which VMM and state format, the
    /// guest's TSC rate, XSAVE area and CPU features. A standby checks it at
    /// the handshake (`StandbyConfiguration.preflight`), not at takeover.
    public var platform: Platform

    /// The VMM side of the hello (56 bytes).
    public struct Platform: Sendable, Equatable {
        static let size = 16 + 4 + 4 + 4 + 28
        /// The VMM whose state the checkpoints carry, e.g. "microvm" (at most 16 bytes of UTF-8).
        public var vmm: String
        /// The version of that VMM's state format.
        public var stateFormat: UInt32
        /// The guest's TSC frequency in kHz (0: not given).
        public var tscKilohertz: UInt32
        /// The size of the guest's XSAVE area in the state.
        public var xsaveBytes: UInt32
        /// The CPU features the guest was shown.
        public var cpuFeatures: CPUFeatures

        public init(vmm: String = "", stateFormat: UInt32 = 0, tscKilohertz: UInt32 = 0, xsaveBytes: UInt32 = 0,
                    cpuFeatures: CPUFeatures = CPUFeatures(words: [])) {
            self.vmm = String(decoding: Array(vmm.utf8.prefix(16)), as: UTF8.self)
            self.stateFormat = stateFormat
            self.tscKilohertz = tscKilohertz
            self.xsaveBytes = xsaveBytes
            self.cpuFeatures = cpuFeatures
        }

        func append(to out: inout [UInt8]) {
            out += Array(vmm.utf8.prefix(16)) + [UInt8](repeating: 0, count: 16 - min(16, vmm.utf8.count))
            out.appendLittleEndian(stateFormat)
            out.appendLittleEndian(tscKilohertz)
            out.appendLittleEndian(xsaveBytes)
            for word in cpuFeatures.words { out.appendLittleEndian(word) }
        }

        init(reading reader: inout PayloadReader) throws(WireError) {
            let name = Array(try reader.take(16))
            vmm = String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
            stateFormat = try reader.integer()
            tscKilohertz = try reader.integer()
            xsaveBytes = try reader.integer()
            var words: [UInt32] = []
            for _ in 0..<7 { words.append(try reader.integer()) }
            cpuFeatures = CPUFeatures(words: words)
        }
    }

    public struct Flags: OptionSet, Sendable, Equatable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// In a hello: the primary has held every output since its last session
        /// ended (for a resync), so the standby's committed replica of this
        /// guest is still a valid takeover point; without it the standby
        /// forgets that replica (the primary may have released output beyond it).
        /// In a welcome: the standby holds an intact committed replica of this
        /// guest, and its disk image is that checkpoint's. The primary sends the
        /// disk extents written since its last acknowledged checkpoint with the
        /// new full image instead of copying the whole disk.
        public static let resume = Flags(rawValue: 1)
    }

    public struct Devices: OptionSet, Sendable, Equatable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let network = Devices(rawValue: 1)
        public static let disk = Devices(rawValue: 2)
    }

    /// Every page encoding this build decodes.
    public static let supportedCodecFeatures: UInt32 = PageEncoding.allCases.reduce(0) { $0 | 1 << UInt32($1.rawValue) }

    public init(session: [UInt8], guest: [UInt8] = [UInt8](repeating: 0, count: 16), memorySize: UInt64, devices: Devices, epochMicroseconds: UInt32,
                mac: [UInt8] = [0, 0, 0, 0, 0, 0], diskSize: UInt64 = 0, version: UInt16 = Hello.protocolVersion, pageSize: UInt32 = 4096,
                codecFeatures: UInt32 = Hello.supportedCodecFeatures, flags: Flags = [], platform: Platform = Platform()) {
        self.platform = platform
        self.version = version
        self.flags = flags
        self.session = session.count == 16 ? session : Array((session + [UInt8](repeating: 0, count: 16)).prefix(16))
        self.guest = guest.count == 16 ? guest : Array((guest + [UInt8](repeating: 0, count: 16)).prefix(16))
        self.memorySize = memorySize
        self.pageSize = pageSize
        self.codecFeatures = codecFeatures
        self.devices = devices
        self.epochMicroseconds = epochMicroseconds
        self.mac = mac.count == 6 ? mac : [0, 0, 0, 0, 0, 0]
        self.diskSize = diskSize
    }

    /// A fresh random session (or guest) id.
    public static func newSession() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    public var sessionText: String { session.prefix(6).map { String($0, radix: 16).leftPadded(to: 2) }.joined() }

    public var payload: [UInt8] {
        var out: [UInt8] = []
        out.appendLittleEndian(version)
        out.appendLittleEndian(flags.rawValue)
        out += session
        out += guest
        out.appendLittleEndian(memorySize)
        out.appendLittleEndian(pageSize)
        out.appendLittleEndian(codecFeatures)
        out.appendLittleEndian(devices.rawValue)
        out.appendLittleEndian(epochMicroseconds)
        out += mac
        out += [0, 0]
        out.appendLittleEndian(diskSize)
        platform.append(to: &out)
        return out
    }

    /// Reads a hello (or welcome) payload. The version is read first, so a peer
    /// of another version gets "version N" rather than a length complaint.
    public init(payload: [UInt8]) throws(WireError) {
        var reader = PayloadReader(payload, what: "hello")
        version = try reader.integer()
        guard version == Self.protocolVersion else {
            throw .refused("protocol version \(version), this side speaks version \(Self.protocolVersion)")
        }
        guard payload.count == Self.payloadSize else { throw .malformed("hello payload of \(payload.count) bytes, expected \(Self.payloadSize)") }
        flags = Flags(rawValue: try reader.integer())
        guard flags.subtracting(.resume).isEmpty else { throw .malformed("hello flags 0x\(String(flags.rawValue, radix: 16))") }
        session = Array(try reader.take(16))
        guest = Array(try reader.take(16))
        memorySize = try reader.integer()
        pageSize = try reader.integer()
        codecFeatures = try reader.integer()
        devices = Devices(rawValue: try reader.integer())
        epochMicroseconds = try reader.integer()
        mac = Array(try reader.take(6))
        _ = try reader.take(2)
        diskSize = try reader.integer()
        platform = try Platform(reading: &reader)
        try reader.finish()
    }
}

extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
