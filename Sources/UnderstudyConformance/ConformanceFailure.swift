/// What the conformance kit found wrong, with what it needs to be found.
public enum ConformanceFailure: Error, Equatable, Sendable, CustomStringConvertible {
    /// After checkpoint `sequence`, with the guest still paused, the replica's
    /// RAM differs from guest RAM in these pages (the first few; `count` in
    /// all): pages written but not reported dirty (the guest's, or the VMM's
    /// own writes), or reported but copied wrong.
    case replicaDiffers(phase: String, sequence: UInt64, pages: [Int], count: Int)
    /// The restored machine's RAM, before it ran, is not the replica's.
    case restoredMemoryDiffers(pages: [Int], count: Int)
    /// A step the VMM performs threw.
    case machineFailed(phase: String, step: String, error: String)
    /// The engine's checkpoint could not be applied to a fresh replica.
    case applyFailed(phase: String, sequence: UInt64, error: String)

    public var description: String {
        switch self {
        case .replicaDiffers(let phase, let sequence, let pages, let count):
            "\(phase): after checkpoint \(sequence) the replica differs from guest RAM in \(count) pages (first: \(pages.map(String.init).joined(separator: ", "))): a write the dirty set missed (KVM's log, the VMM's own writes, a late re-arming not carried), or a page copied torn"
        case .restoredMemoryDiffers(let pages, let count):
            "the restored machine's RAM differs from the replica's in \(count) pages (first: \(pages.map(String.init).joined(separator: ", ")))"
        case .machineFailed(let phase, let step, let error):
            "\(phase): \(step) failed: \(error)"
        case .applyFailed(let phase, let sequence, let error):
            "\(phase): checkpoint \(sequence) does not apply to a replica: \(error)"
        }
    }
}
