import KVM

/// Errors from building, running, saving or restoring a MicroVM machine.
public enum MachineError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A KVM call failed.
    case kvm(KVMError)
    /// The configuration cannot work (`reason` says why).
    case invalidConfiguration(String)
    /// The guest image cannot be loaded.
    case image(GuestImageError)
    /// Saved state was refused; `part` names the bad piece.
    case invalidState(part: String, reason: String)
    /// The operation needs another lifecycle state (e.g. saving a running machine).
    case wrongState(String)
    /// A thread could not be started.
    case thread(errno: Int32)
    /// This host cannot run the guest a primary describes (`reason` says why).
    case cannotRun(String)

    public var description: String {
        switch self {
        case .kvm(let error): "\(error)"
        case .invalidConfiguration(let why): "invalid machine configuration: \(why)"
        case .image(let error): "\(error)"
        case .invalidState(let part, let why): "invalid saved state in \(part): \(why)"
        case .wrongState(let why): "\(why)"
        case .thread(let errno): "pthread_create failed (errno \(errno))"
        case .cannotRun(let why): why
        }
    }

    /// Converts a KVM decode error of saved state into a machine error naming the part.
    static func from(_ error: KVMError, part: String) -> MachineError {
        if case let .invalidState(inner, reason) = error { return .invalidState(part: "\(part): \(inner)", reason: reason) }
        return .kvm(error)
    }
}
