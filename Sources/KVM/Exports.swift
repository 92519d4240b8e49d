// The kernel structs (kvm_regs, kvm_sregs, ...) are part of this module's API.
@_exported import CKVM
