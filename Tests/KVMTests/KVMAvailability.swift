import KVM

/// Whether the KVM tests can run here. When they cannot, this says so loudly
/// once, so a skipped run is never mistaken for a passing one.
enum KVMAvailability {
    static let available: Bool = {
        if KVM.isAvailable { return true }
        print("""
            ************************************************************************
            * KVM TESTS SKIPPED: /dev/kvm is missing or not readable and writable  *
            * by this user. These tests need real KVM; run them as root on a host  *
            * with /dev/kvm.                                                       *
            ************************************************************************
            """)
        return false
    }()
}
