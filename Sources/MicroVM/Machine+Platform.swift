import KVM
import Understudy

extension Machine {
    /// The VMM name a MicroVM hello carries for its own (CPL3) guests.
    public static let vmmName = "microvm"
    /// The VMM name a hello carries for a Linux guest's machine (a kernel at
    /// CPL0, port-I/O devices): a standby whose KVM cannot run kernel code
    /// (kvm_pvm) refuses it at the handshake rather than fail at a takeover.
    public static let linuxVMMName = "microvm-linux"

    /// What a standby needs to run this guest, for the hello: MicroVM's state
    /// format, and the TSC rate, XSAVE area and CPU features its vCPUs were given.
    public var platform: Hello.Platform {
        get throws(MachineError) {
            do {
                return Hello.Platform(vmm: uart == nil ? Self.vmmName : Self.linuxVMMName, stateFormat: UInt32(MachineState.version), tscKilohertz: try vcpus[0].tscKHz(),
                                      xsaveBytes: UInt32(try vcpus[0].xsaveSize()), cpuFeatures: CPUFeatures(try vcpus[0].cpuid()))
            } catch {
                throw .kvm(error)
            }
        }
    }

    /// Checks that this host can run the guest `hello` describes, as a standby
    /// does at the handshake: /dev/kvm opens, the state is MicroVM's in a format
    /// this build restores, every CPU feature the guest was shown is offered
    /// here, the XSAVE area fits, the TSC runs at the same rate (a guest's clock
    /// would jump otherwise), and the tap the guest's card will use opens
    /// (`keepingTap`: and stays attached in `TapPool` for the takeover, so its
    /// carrier does not change then). Throws `.cannotRun` naming the first
    /// thing that fails.
    public static func preflight(_ hello: Hello, tap: String?, keepingTap: Bool = false) throws(MachineError) {
        let platform = hello.platform
        guard platform.vmm == vmmName || platform.vmm == linuxVMMName else {
            throw .cannotRun("the guest runs under the VMM '\(platform.vmm)'; this standby restores \(vmmName) guests")
        }
        guard platform.vmm != linuxVMMName || KVM.runsGuestKernels else {
            throw .cannotRun("the guest is a Linux guest and this host's KVM (\(KVM.module ?? "unknown")) emulates guest kernel code: use hardware KVM (kvm_intel, kvm_amd)")
        }
        guard platform.stateFormat == UInt32(MachineState.version) else {
            throw .cannotRun("the guest's state is in \(vmmName) state format \(platform.stateFormat); this build restores format \(MachineState.version)")
        }
        do {
            let kvm = try KVM()
            let vm = try kvm.createVM()
            let vcpu = try vm.createVCPU(id: 0)
            // What a guest here is shown: the supported CPUID as KVM takes it
            // (some KVMs, kvm_pvm among them, add the host's own features).
            try vcpu.setCPUID(kvm.supportedCPUID())
            let missing = platform.cpuFeatures.missing(on: CPUFeatures(try vcpu.cpuid()))
            guard missing.isEmpty else {
                throw MachineError.cannotRun("this host's KVM lacks CPU features the guest was shown: \(missing.prefix(8).joined(separator: ", "))\(missing.count > 8 ? ", ..." : "")")
            }
            let xsave = try vcpu.xsaveSize()
            guard Int(platform.xsaveBytes) <= xsave else {
                throw MachineError.cannotRun("the guest's XSAVE area is \(platform.xsaveBytes) bytes, this host's \(xsave)")
            }
            let tsc = try vcpu.tscKHz()
            if platform.tscKilohertz != 0, abs(Int(platform.tscKilohertz) - Int(tsc)) * 1000 > Int(tsc) {
                throw MachineError.cannotRun("the guest's TSC runs at \(platform.tscKilohertz) kHz, this host's at \(tsc) kHz: its clock would jump on a takeover")
            }
        } catch let error as MachineError {
            throw error
        } catch let error as KVMError {
            throw .cannotRun("\(error)")
        } catch {
            throw .cannotRun("\(error)")
        }
        if hello.devices.contains(.network), let tap {
            do {
                let opened = try TapPool.shared.take(tap)
                if keepingTap { TapPool.shared.keep(opened) } else { opened.close() }
            } catch {
                throw .cannotRun("the tap \(tap) does not open: \(error)")
            }
        }
    }
}
