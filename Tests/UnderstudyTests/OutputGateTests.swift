import Synchronization
import Testing
@testable import Understudy

/// The output buffer's release gate (fencing): while it is shut nothing
/// leaves, acknowledged or not, protected or passing through; once it opens,
/// `flush()` releases what was due, in order; `seal()` discards it.
@Suite("Output release gate")
struct OutputGateTests {
    /// What was released, and the gate's state (a valid grant or not).
    final class World: Sendable {
        let items = Mutex<[String]>([])
        let open = Atomic<Bool>(true)
        var seen: [String] { items.withLock { $0 } }
    }

    /// A protecting buffer releasing into `world` while `world.open`.
    static func buffer(releasingTo world: World) -> OutputBuffer {
        let output = OutputBuffer { _, bytes in world.items.withLock { $0.append(String(decoding: bytes, as: UTF8.self)) } }
        output.releaseGate = { world.open.load(ordering: .relaxed) }
        output.protect()
        return output
    }

    static func console(_ text: String, into output: OutputBuffer) {
        Array(text.utf8).withUnsafeBytes { output.hold(.console, $0) }
    }

    @Test func aShutGateHoldsAcknowledgedOutputUntilItOpens() {
        let world = World()
        let output = Self.buffer(releasingTo: world)
        Self.console("a", into: output)
        _ = output.closeEpoch(0)
        Self.console("b", into: output)
        _ = output.closeEpoch(1)
        output.commit(upTo: 0)
        #expect(world.seen == ["a"])
        #expect(output.releasedThrough == 0)
        world.open.store(false, ordering: .relaxed)
        output.commit(upTo: 1)
        #expect(world.seen == ["a"], "acknowledged, but the grant is not valid: held")
        #expect(output.releasedThrough == 0, "the standby is not told it was released")
        #expect(output.flush() == 0)
        world.open.store(true, ordering: .relaxed)
        #expect(output.flush() == 1)
        #expect(world.seen == ["a", "b"])
        #expect(output.releasedThrough == 1)
    }

    @Test func passingThroughBehindAShutGateHoldsInOrder() {
        let world = World()
        world.open.store(false, ordering: .relaxed)
        let output = Self.buffer(releasingTo: world)
        Self.console("held", into: output)
        #expect(output.passThrough() == 0, "no standby, and no valid grant: nothing goes")
        Self.console("later", into: output)
        #expect(world.seen.isEmpty)
        world.open.store(true, ordering: .relaxed)
        #expect(output.flush() == 2)
        Self.console("now", into: output)
        #expect(world.seen == ["held", "later", "now"])
        #expect(output.bytesHeld == 0)
    }

    @Test func aSealedBufferDropsWhatTheGateHeld() {
        let world = World()
        world.open.store(false, ordering: .relaxed)
        let output = Self.buffer(releasingTo: world)
        Self.console("x", into: output)
        _ = output.closeEpoch(0)
        output.commit(upTo: 0)
        output.seal()                                   // superseded: this copy never speaks again
        world.open.store(true, ordering: .relaxed)
        #expect(output.flush() == 0)
        output.passThrough()
        Self.console("y", into: output)
        #expect(world.seen.isEmpty)
    }
}
