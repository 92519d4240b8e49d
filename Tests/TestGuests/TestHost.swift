import Foundation
import KVM
import TestGuests
import Testing

/// What kind of KVM the tests run on, and how much slower than native it is.
///
/// Tests assert the same things everywhere; what they may scale is how long they
/// wait for progress (never how much work they demand). On the KVM box (a nested
/// kvm_amd under QEMU's TCG, see Scripts/kvm-box.sh) everything a guest does is
/// emulated, so waits are scaled by `slowdown`; `UNDERSTUDY_TEST_SLOWDOWN` sets it.
public enum TestHost {
    /// The KVM module bound on this host (kvm_intel, kvm_amd, kvm_pvm), or "none".
    public static let kvmModule: String = {
        for module in ["kvm_intel", "kvm_amd", "kvm_pvm"] where FileManager.default.fileExists(atPath: "/sys/module/\(module)") {
            return module
        }
        return "none"
    }()

    /// Whether this process runs inside the KVM box.
    public static let inBox = ProcessInfo.processInfo.environment["UNDERSTUDY_IN_BOX"] == "1"

    /// How many times longer than on native KVM a wait for guest progress may take.
    public static let slowdown: Double = {
        if let text = ProcessInfo.processInfo.environment["UNDERSTUDY_TEST_SLOWDOWN"], let value = Double(text), value >= 1 {
            return value
        }
        return inBox ? 10 : 1
    }()

    /// `seconds` scaled for this host's KVM.
    public static func seconds(_ seconds: Double) -> Double { seconds * slowdown }

    /// `duration` scaled for this host's KVM.
    public static func scaled(_ duration: Duration) -> Duration { duration * slowdown }

    /// How many rounds of a repetitive test to run here: `native` on native KVM;
    /// on a slower KVM `native / slowdown`, but never fewer than `minimum` (nor more
    /// than `native`). Every round asserts the same things; tests that scale their
    /// rounds print how many they ran.
    public static func rounds(_ native: Int, minimum: Int) -> Int {
        min(native, max(minimum, Int((Double(native) / slowdown).rounded(.up))))
    }

    /// A line for the test log: which KVM, and the scale applied to waits.
    public static let description: String =
        "KVM: \(kvmModule)\(inBox ? " in the KVM box (emulated)" : ""); waits scaled ×\(slowdown)"

    /// Whether /dev/kvm opens here; if not, says so loudly once, so that a run
    /// that skipped the KVM tests is never mistaken for one that passed them.
    public static let kvmAvailable: Bool = {
        if KVM.isAvailable {
            print("test host: \(description)")
            return true
        }
        print("""
            ************************************************************************
            * KVM TESTS SKIPPED: /dev/kvm is missing or not readable and writable  *
            * by this user. Run Scripts/test.sh, which runs them in the KVM box    *
            * where this host has no KVM.                                          *
            ************************************************************************
            """)
        return false
    }()
}

/// A bound on how long each test may run (scaled for the host's KVM). A test that
/// overruns it ends the test process at once with a line naming it, so that a
/// hang fails fast with its output instead of eating CI's time; a synchronous
/// wait that never returns cannot be cancelled any other way.
public struct Deadline: TestTrait, SuiteTrait, TestScoping {
    public let seconds: Double
    public var isRecursive: Bool { true }

    public func scopeProvider(for test: Test, testCase: Test.Case?) -> Deadline? {
        test.isSuite ? nil : self
    }

    public func provideScope(for test: Test, testCase: Test.Case?,
                             performing function: @Sendable () async throws -> Void) async throws {
        let finished = Flag()
        let limit = TestHost.seconds(seconds)
        let name = test.name
        DispatchQueue.global().asyncAfter(deadline: .now() + limit) {
            guard !finished.isSet else { return }
            print("✘ DEADLINE: test \(name) is still running after \(Int(limit)) s (\(Int(seconds)) s on native KVM; \(TestHost.description)). Ending the test process so the hang is seen; its output is above.")
            fflush(nil)
            exit(3)
        }
        defer { finished.set() }
        try await function()
    }
}

/// A flag set once, read from another thread.
private final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

extension Trait where Self == Deadline {
    /// Each test may run for at most `minutes` on native KVM (scaled on slower KVMs).
    public static func deadline(minutes: Double) -> Deadline { Deadline(seconds: minutes * 60) }
}
