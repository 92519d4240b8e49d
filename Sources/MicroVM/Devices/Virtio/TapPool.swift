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

    /// The kept tap `name` (frames that queued while no machine read it are
    /// dropped: they are stale), or a newly opened one.
    public func take(_ name: String) throws(MachineError) -> Tap {
        if let tap = kept.withLock({ $0.removeValue(forKey: name) }) {
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while buffer.withUnsafeMutableBytes({ tap.waitReadable(milliseconds: 0) ? tap.read(into: $0) : nil }) != nil {}
            return tap
        }
        return try Tap(name: name)
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
