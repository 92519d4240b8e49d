import Synchronization

/// Taps this process keeps attached between machines. A host that changes
/// role (standby, then the guest's runner, then standby again) keeps its tap
/// open throughout: closing and reopening one turns its carrier off and on,
/// and the kernel may take up to a second to pass a carrier change on to a
/// bridge (link events are rate-limited per device), during which the bridge
/// drops the frames of the guest that just took over. Seen as 1.1 s pauses in
/// switchovers one or two seconds apart.
public final class TapPool: Sendable {
    public static let shared = TapPool()
    private let kept = Mutex<[String: Tap]>([:])

    /// The kept tap `name` (with whatever queued on it), or a newly opened one.
    public func take(_ name: String) throws(MachineError) -> Tap {
        if let tap = kept.withLock({ $0.removeValue(forKey: name) }) { return tap }
        return try Tap(name: name)
    }

    /// A takeover's first step, before the machine is built: drops the frames
    /// that queued on the tap while this host was a standby (stale; not when
    /// `keepingQueuedFrames`, after an earlier announcement), writes `frames`
    /// (the guest's announcement) so the network sends the guest's traffic
    /// here from now on, and keeps the tap for the machine, which then finds
    /// what arrived meanwhile (a request sent during the takeover) waiting for
    /// it. Returns how many frames went out.
    public func announce(_ frames: [[UInt8]], on name: String, keepingQueuedFrames: Bool = false) throws(MachineError) -> Int {
        let tap = try take(name)
        defer { keep(tap) }
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while !keepingQueuedFrames, buffer.withUnsafeMutableBytes({ tap.waitReadable(milliseconds: 0) ? tap.read(into: $0) : nil }) != nil {}
        var written = 0
        for frame in frames where frame.withUnsafeBytes({ tap.write($0) }) { written += 1 }
        return written
    }

    /// Keeps `tap` attached for the next `take` of its name (an older one kept
    /// under that name is closed).
    public func keep(_ tap: Tap) {
        guard tap.fd >= 0 else { return }
        kept.withLock { $0.updateValue(tap, forKey: tap.name) }?.close()
    }

    /// Whether a tap of this name is kept open.
    public func holds(_ name: String) -> Bool { kept.withLock { $0[name] != nil } }
}
