import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// Issues ioctls on one descriptor, retrying on EINTR, turning failures into
/// `KVMError.ioctl` with the request's name.
@usableFromInline
struct IOCtl: Sendable {
    @usableFromInline let fd: Int32

    @usableFromInline init(_ fd: Int32) { self.fd = fd }

    /// An ioctl whose argument is an integer. Returns the non-negative result.
    @discardableResult
    @usableFromInline
    func call(_ name: String, _ request: UInt, _ argument: UInt = 0) throws(KVMError) -> Int32 {
        while true {
            let result = ckvm_ioctl_arg(fd, request, argument)
            if result >= 0 { return result }
            let error = ckvm_errno()
            if error == EINTR { continue }
            throw .ioctl(name: name, errno: error)
        }
    }

    /// An ioctl whose argument is a pointer. Returns the non-negative result.
    @discardableResult
    @usableFromInline
    func call(_ name: String, _ request: UInt, pointer: UnsafeMutableRawPointer?) throws(KVMError) -> Int32 {
        while true {
            let result = ckvm_ioctl_ptr(fd, request, pointer)
            if result >= 0 { return result }
            let error = ckvm_errno()
            if error == EINTR { continue }
            throw .ioctl(name: name, errno: error)
        }
    }

    /// An ioctl reading into or writing from a value of a fixed-size C struct.
    @discardableResult
    @usableFromInline
    func call<T>(_ name: String, _ request: UInt, _ value: inout T) throws(KVMError) -> Int32 {
        try withUnsafeMutablePointer(to: &value) { (pointer) throws(KVMError) -> Int32 in
            try call(name, request, pointer: UnsafeMutableRawPointer(pointer))
        }
    }
}

/// Closes a descriptor, ignoring EINTR (Linux always releases the descriptor).
func closeDescriptor(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}
