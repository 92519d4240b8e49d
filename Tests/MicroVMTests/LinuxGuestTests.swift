import Foundation
import KVM
@testable import MicroVM
import TestGuests
import Testing

/// Reading a bzImage: Debian's kernel is accepted with the fields the boot
/// protocol needs; anything else is refused with the reason, never a crash.
@Suite("Linux kernel image")
struct LinuxKernelImageTests {
    @Test func debiansKernelIsRead() throws {
        let kernel = try LinuxKernel(bzImage: [UInt8](try Data(contentsOf: URL(fileURLWithPath: LinuxGuest.files().kernel))))
        #expect(kernel.protocolVersion >= 0x020C)
        #expect(kernel.initSize > UInt32(kernel.protectedMode.count / 2))
        #expect(kernel.commandLineMax >= 255)
        #expect(kernel.setupHeader.count > 0x268 - LinuxKernel.headerOffset)
    }

    @Test func whatIsNotABzImageIsRefused() throws {
        #expect(throws: GuestImageError.self) { try LinuxKernel(bzImage: []) }
        #expect(throws: GuestImageError.self) { try LinuxKernel(bzImage: [UInt8](repeating: 0, count: 8192)) }
        var header = [UInt8](try Data(contentsOf: URL(fileURLWithPath: LinuxGuest.files().kernel)).prefix(65536))
        header[0x236] &= ~1                                    // no 64-bit entry
        #expect(throws: GuestImageError.unsupported("the kernel has no 64-bit entry point (XLF_KERNEL_64 is clear)")) {
            try LinuxKernel(bzImage: header)
        }
    }

    /// Random damage to a real kernel's first 64 KiB: a clear error or a kernel, never a crash.
    @Test func damagedHeadersNeverCrash() throws {
        let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: LinuxGuest.files().kernel)).prefix(65536))
        var rng = SplitMix(seed: 0x11AA)
        for round in 0..<20_000 {
            var bytes = original
            for _ in 0..<(1 + Int(rng.next() % 8)) {
                bytes[0x1F0 + Int(rng.next() % 0x80)] = UInt8(truncatingIfNeeded: rng.next())
            }
            if round % 7 == 0 { bytes.removeLast(Int(rng.next() % 65536)) }
            _ = try? LinuxKernel(bzImage: bytes)
        }
    }
}

/// Debian's stock kernel booted by `understudy-primary --kernel` through the
/// 64-bit boot protocol (no BIOS): its init runs and prints on ttyS0, and its
/// kvstore answers a client in a network namespace over virtio-net and
/// journals to virtio-blk. Needs a KVM that runs guest kernel code (kvm_intel,
/// kvm_amd): on kvm_pvm hosts test.sh runs this suite in the KVM box.
@Suite("Linux guest", .enabled(if: TestNetwork.available, "needs root and ip(8)"), .enabled(if: TestHost.kvmAvailable && KVM.runsGuestKernels,
                               "runs in the KVM box on this host (kvm_pvm emulates guest kernels)"),
       .serialized, .deadline(minutes: 30))
struct LinuxGuestTests {
    @Test
    func bootsAndServesAClientFromItsDisk() throws {
        let (kernel, initrd) = try LinuxGuest.files()
        let network = try TestNetwork()
        let tap = try network.addTap()
        let disk = JournalImage.makeImage(megabytes: 16)
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let guest = try ChildProcess("understudy-primary", [
            "--unprotected", "--kernel", kernel, "--initrd", initrd, "--memory", "256M", "--tap", tap, "--disk", disk,
            "--append", LinuxBoot.defaultCommandLine + " understudy.ip=10.77.0.2/24"])
        defer { guest.signal(SIGTERM); _ = guest.waitForExit(timeout: TestHost.seconds(30)) }
        let started = eventually(timeout: 60) {
            guest.standardOutput.text.contains("kvstore: listening") || !guest.isRunning
        }
        #expect(started && guest.isRunning,
                "the guest's service started; console:\n\(guest.standardOutput.text.suffix(6000))\n\(guest.standardError.text.suffix(2000))")
        let console = guest.standardOutput.text
        #expect(console.contains("understudy-linux: up"))
        #expect(console.contains("understudy-linux: virtio devices: virtio0 virtio1"), "both devices found through ACPI")
        #expect(console.contains("kvstore: replayed 0 records"))
        let client = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7000,
                                                 timeout: 20)
        #expect(try client.command("PING") == "PONG")
        #expect(try client.command("SET greeting hello") == "OK 1")
        #expect(try client.command("INCR n") == "VALUE 1 2")
        #expect(try client.command("GET greeting") == "VALUE hello")
        // Acknowledged means on the disk: the host reads both records from the image.
        #expect(try LinuxGuest.journal(path: disk) == [("greeting", "hello"), ("n", "1")].map(LinuxGuest.Record.init))
        let ticks = guest.standardOutput.lines.filter { $0.hasPrefix("understudy-linux: tick") }.count
        #expect(eventually(timeout: 10) { guest.standardOutput.lines.filter { $0.hasPrefix("understudy-linux: tick") }.count > ticks + 1 },
                "the guest keeps running; console:\n\(guest.standardOutput.text.suffix(3000))\n\(guest.standardError.text.suffix(2000))")
    }
}
