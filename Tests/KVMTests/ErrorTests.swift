import Foundation
@testable import KVM
import CKVM
import TestGuests
import Testing

@Suite("Errors", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct ErrorTests {
    @Test func ioctlOnClosedDescriptorNamesIoctlAndErrno() {
        #expect(throws: KVMError.ioctl(name: "KVM_GET_API_VERSION", errno: EBADF)) {
            try IOCtl(-1).call("KVM_GET_API_VERSION", CKVM_GET_API_VERSION)
        }
    }

    /// A VM whose descriptor no longer refers to KVM (replaced by /dev/null):
    /// every ioctl fails with ENOTTY and says which ioctl it was.
    @Test func ioctlOnNonKVMDescriptor() throws {
        let vm = try KVM().createVM()
        let null = open("/dev/null", O_RDWR)
        #expect(null >= 0)
        #expect(dup2(null, vm.fd) == vm.fd)
        close(null)
        #expect(throws: KVMError.ioctl(name: "KVM_GET_CLOCK", errno: ENOTTY)) { try vm.clock() }
        #expect(throws: KVMError.ioctl(name: "KVM_CREATE_VCPU", errno: ENOTTY)) { try vm.createVCPU(id: 0) }
        let error = KVMError.ioctl(name: "KVM_GET_CLOCK", errno: ENOTTY)
        #expect(error.description.contains("KVM_GET_CLOCK") && error.description.contains("errno \(ENOTTY)"))
    }

    @Test func openingAMissingDeviceNamesTheCall() {
        #expect(throws: KVMError.systemCall(name: "open(/nonexistent/kvm)", errno: ENOENT)) {
            try KVM(path: "/nonexistent/kvm")
        }
    }

    @Test func badArgumentsAreRefusedBeforeKVM() throws {
        let machine = try TestMachine(tracking: .bitmap)
        let bitmap = DirtyBitmap(pageCount: machine.slot.pageCount)
        #expect(throws: KVMError.self) { try machine.vm.clearDirtyLog(slot: 1, bitmap: bitmap, firstPage: 3) }
        #expect(throws: KVMError.self) {
            try machine.vm.setUserMemoryRegion(MemoryRegion(slot: 1, guestPhysicalAddress: 0x123, size: 4096, hostAddress: 0))
        }
        #expect(throws: KVMError.self) { try machine.memory.write([1, 2, 3], at: machine.memory.size - 2) }
        // Bad memory slot number reaches KVM and comes back as EINVAL or ENOENT from the ioctl.
        let log = DirtyBitmap(pageCount: 10)
        #expect {
            try machine.vm.dirtyLog(slot: 999, into: log)
        } throws: { error in
            (error as? KVMError)?.description.contains("KVM_GET_DIRTY_LOG") == true
        }
    }

    /// A guest whose state KVM refuses (an invalid CR0/CR4 combination) is an error from
    /// KVM_SET_SREGS, not a crash.
    @Test func invalidRegisterStateIsRefused() throws {
        let machine = try TestMachine()
        var sregs = try machine.vcpu.specialRegisters()
        sregs.cr0 = 0x8000_0000   // paging without protection: architecturally invalid
        #expect(throws: KVMError.ioctl(name: "KVM_SET_SREGS", errno: EINVAL)) {
            try machine.vcpu.setSpecialRegisters(sregs)
        }
    }
}
