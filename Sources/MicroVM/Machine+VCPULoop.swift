import Foundation
import KVM
import Understudy

extension Machine {
    /// The body of vCPU thread `index`: run, dispatch exits to devices, park on
    /// pause, end on stop. Nothing a guest does can crash it: every bad exit ends
    /// the machine with a reason.
    func vcpuLoop(_ index: Int) {
        let vcpu = vcpus[index]
        // An MMIO or I/O exit is only complete once KVM_RUN is entered again; a
        // pause must do that (with immediate_exit set) before parking.
        var exitInFlight = false
        defer { gate.threadEnded() }
        while true {
            // Parks while paused (completing an MMIO or I/O exit first), ends on stop.
            let next = gate.enter(index, exitInFlight: &exitInFlight, racedExit: { result, inFlight in
                switch result {
                case .success(let exit):
                    // immediate_exit was cleared under us: a resume raced the pause. Handle normally.
                    return handle(exit, vcpu: vcpu, index: index, exitInFlight: &inFlight)
                case .failure(let error):
                    stop(.hostError(vcpu: index, error: "\(error)"))
                    return false
                }
            }, whileParked: {
                guard captureRequested && gate.allParked && parkedStates[index] == nil else { return false }
                captureOwnState(vcpu, index: index)
                return true
            })
            guard next == .run else { return }

            let exit: VCPUExit
            do {
                exit = try vcpu.run()
            } catch {
                stop(.hostError(vcpu: index, error: "\(error)"))
                return
            }
            guard handle(exit, vcpu: vcpu, index: index, exitInFlight: &exitInFlight) else { return }
        }
    }

    /// Reads `vcpu`'s state for `pause(capturingVCPUState:)`, outside the lock,
    /// once every vCPU is out of KVM_RUN. Called and returns with the lock held.
    /// A read that outlived its pause (resumed and paused again meanwhile, when
    /// other vCPUs may have changed this one's LAPIC) is discarded.
    private func captureOwnState(_ vcpu: VCPU, index: Int) {
        let generation = gate.pauseGeneration
        condition.unlock()
        let result = Result { () throws(KVMError) in try vcpu.captureState() }
        condition.lock()
        if generation == gate.pauseGeneration && captureRequested {
            parkedStates[index] = result
            condition.broadcast()
        }
    }

    /// Handles one exit. Returns false when the thread must end.
    private func handle(_ exit: VCPUExit, vcpu: VCPU, index: Int, exitInFlight: inout Bool) -> Bool {
        // An MMIO or port-I/O instruction is finished only by the next KVM_RUN:
        // a pause completes it first (`VCPU.completeInFlightExit`).
        exitInFlight = VCPU.leavesInstructionInFlight(exit)
        switch exit {
        case .interrupted, .signalPending:
            return true
        case .mmio(let access):
            return handleMMIO(access, vcpu: vcpu, index: index)
        case .hlt:
            return true                     // with an in-kernel LAPIC, HLT does not normally reach us
        case .dirtyRingFull:
            if let handler = onDirtyRingFull {
                handler(vcpu)
                return true
            }
            do {
                guard let dirtyTracker else { throw KVMError.missingCapability(.dirtyLogRing) }
                try dirtyTracker.absorbFullRing(of: vcpu)
                return true
            } catch {
                stop(.hostError(vcpu: index, error: "emptying a full dirty ring: \(error)"))
                return false
            }
        case .shutdown:
            logger.error("vCPU \(index) shut down (triple fault): \(Self.describeFault(vcpu))")
            stop(.shutdown(vcpu: index))
        case .internalError(let suberror, _):
            stop(.internalError(vcpu: index, suberror: suberror))
        case .failEntry(let reason, _):
            stop(.failEntry(vcpu: index, reason: reason))
        case .io(let io):
            guard !portDevices.isEmpty else {
                stop(.unexpectedExit(vcpu: index, exit: "port I/O \(io.direction) 0x\(String(io.port, radix: 16))"))
                return false
            }
            handlePortIO(io, vcpu: vcpu)
            return true
        case .systemEvent(let type, _):
            stop(.unexpectedExit(vcpu: index, exit: "system event \(type)"))
        case .unknown(let reason):
            stop(.unexpectedExit(vcpu: index, exit: "unknown exit reason \(reason)"))
        }
        return false
    }

    /// Where a vCPU was when it shut down: the registers that tell which exception
    /// it could not deliver, for the log. (kvm_amd resets a vCPU when it
    /// intercepts the shutdown, so there this shows the reset state: rip=0xfff0.)
    static func describeFault(_ vcpu: VCPU) -> String {
        do {
            let regs = try vcpu.registers()
            let sregs = try vcpu.specialRegisters()
            let events = try vcpu.events()
            func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
            return "rip=\(hex(regs.rip)) rsp=\(hex(regs.rsp)) rflags=\(hex(regs.rflags)) cs=\(hex(UInt64(sregs.cs.selector))) "
                + "cr0=\(hex(sregs.cr0)) cr2=\(hex(sregs.cr2)) cr3=\(hex(sregs.cr3)) cr4=\(hex(sregs.cr4)) efer=\(hex(sregs.efer)) "
                + "idt=\(hex(sregs.idt.base))/\(sregs.idt.limit) exception=\(events.exception.injected != 0 || events.exception.pending != 0 ? String(events.exception.nr) : "none") "
                + "interrupt=\(events.interrupt.injected != 0 ? String(events.interrupt.nr) : "none")"
        } catch {
            return "registers unreadable: \(error)"
        }
    }

    /// One port-I/O exit (string I/O repeats it `count` times). Ports no device
    /// answers read as all ones and ignore writes, as on a PC.
    private func handlePortIO(_ io: PortIO, vcpu: VCPU) {
        let device = portDevices.first { $0.owns(io.port) }
        let size = min(max(io.size, 1), 4)
        switch io.direction {
        case .in:
            var bytes: [UInt8] = []
            bytes.reserveCapacity(size * io.count)
            for _ in 0..<io.count {
                let value = device?.read(port: io.port, size: size) ?? .max
                for i in 0..<size { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))) }
            }
            vcpu.setIOInData(bytes)
        case .out:
            guard let device else { return }
            var offset = 0
            while offset + size <= io.data.count {
                let value = (0..<size).reduce(UInt32(0)) { $0 | UInt32(io.data[offset + $1]) << (8 * UInt32($1)) }
                device.write(port: io.port, size: size, value: value)
                offset += size
            }
        }
    }

    private func device(at address: UInt64, length: Int) -> (any MMIODevice)? {
        devices.first { address >= $0.base && address - $0.base + UInt64(length) <= $0.size }
    }

    private func handleMMIO(_ access: MMIOAccess, vcpu: VCPU, index: Int) -> Bool {
        guard let device = device(at: access.address, length: access.length) else {
            stop(.badAccess(vcpu: index, address: access.address, isWrite: access.isWrite))
            return false
        }
        let offset = access.address - device.base
        guard access.isWrite else {
            vcpu.setMMIOReadData(device.read(offset: offset, length: access.length))
            return true
        }
        switch device.write(offset: offset, length: access.length, value: access.data) {
        case .none:
            return true
        case .wait(let nanoseconds):
            waitForEvent(nanoseconds: nanoseconds)
            return true
        case .exit(let code):
            stop(.guestExit(code: code))
            return false
        case .puts(let address):
            guard let text = guestString(at: address) else {
                stop(.badAccess(vcpu: index, address: address, isWrite: false))
                return false
            }
            serial.transmit(text)
            return true
        }
    }

    /// Blocks the calling vCPU thread until a doorbell event, the deadline, a pause or a stop.
    private func waitForEvent(nanoseconds: UInt64) {
        let deadline = nanoseconds == 0 ? nil : Date().addingTimeInterval(Double(nanoseconds) / 1e9)
        condition.lock()
        defer { condition.unlock() }
        while !gate.isStopping && !gate.pauseRequested && doorbell.pendingEvents == 0 {
            if let deadline {
                if !condition.wait(until: deadline) { return }
            } else {
                condition.wait()
            }
        }
    }

    /// The NUL-terminated string (at most 4 KiB) at guest-physical `address`, or nil
    /// when it leaves RAM or has no terminator.
    func guestString(at address: UInt64, limit: Int = 4096) -> [UInt8]? {
        guard address < UInt64(memory.size) else { return nil }
        let available = min(limit, memory.size - Int(address))
        let bytes = UnsafeRawBufferPointer(start: memory.base + Int(address), count: available)
        guard let end = bytes.firstIndex(of: 0) else { return nil }
        return Array(bytes[..<end])
    }
}
