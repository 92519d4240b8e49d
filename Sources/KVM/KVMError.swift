#if canImport(Glibc)
import Glibc
#endif

/// An error from the KVM layer: what failed, and at the bottom the failing
/// system call or ioctl with its `errno`.
public enum KVMError: Error, Equatable, Sendable, CustomStringConvertible {
    /// An ioctl failed. `name` is the request (`"KVM_RUN"`), `errno` the raw error number.
    case ioctl(name: String, errno: Int32)
    /// Another system call (`open`, `mmap`, `memfd_create`, ...) failed.
    case systemCall(name: String, errno: Int32)
    /// `/dev/kvm` speaks a different API version than the one these bindings were written for (12).
    case unsupportedAPIVersion(Int32)
    /// A capability the operation needs is not offered by this host's KVM.
    case missingCapability(Capability)
    /// The caller passed a value KVM would reject, explained in `reason`.
    case invalidArgument(String)
    /// Saved state could not be decoded; `part` names the piece that was bad.
    case invalidState(part: String, reason: String)
    /// KVM refused to set an MSR the saved state holds, and the fresh vCPU's value differs.
    case msrRejected(index: UInt32, saved: UInt64, current: UInt64)

    public var description: String {
        switch self {
        case let .ioctl(name, errno):
            return "\(name) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        case let .systemCall(name, errno):
            return "\(name) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        case let .unsupportedAPIVersion(version):
            return "KVM API version \(version) is not supported (expected 12)"
        case let .missingCapability(capability):
            return "KVM lacks capability \(capability)"
        case let .invalidArgument(reason):
            return "invalid argument: \(reason)"
        case let .invalidState(part, reason):
            return "invalid saved state in \(part): \(reason)"
        case let .msrRejected(index, saved, current):
            return "KVM_SET_MSRS refused MSR 0x\(String(index, radix: 16)) = 0x\(String(saved, radix: 16)) (vCPU has 0x\(String(current, radix: 16)))"
        }
    }

    /// The errno at the bottom of the error, if a call failed.
    public var errno: Int32? {
        switch self {
        case let .ioctl(_, errno), let .systemCall(_, errno): return errno
        default: return nil
        }
    }
}
