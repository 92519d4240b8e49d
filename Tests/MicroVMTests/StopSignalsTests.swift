import Foundation
@testable import MicroVM
import Synchronization
import TestGuests
import Testing

/// SIGINT and SIGTERM in a runner process (`StopSignals`): sent to this test
/// process itself, which StopSignals then handles (no other test uses it).
@Suite("Stop signals")
struct StopSignalsTests {
    /// A SIGTERM between two phases (a standby's receiver has ended, the
    /// machine that takes over is not built yet) is kept and goes to the next
    /// action. It used to go to an action that did nothing: a standby that took
    /// over then ignored the SIGTERM sent as its first output appeared (the
    /// released output of the last epochs), and ran on; seen in CI.
    @Test func aSignalBetweenPhasesGoesToTheNextAction() {
        let signals = StopSignals.shared
        signals.hold()
        kill(getpid(), SIGTERM)
        #expect(eventually(timeout: 10) { signals.hasKeptSignal }, "the signal is kept while no action is set")
        let received = Mutex<[Int32]>([])
        signals.onStop { number in received.withLock { $0.append(number) } }
        #expect(eventually(timeout: 10) { received.withLock { $0 } == [SIGTERM] }, "the next action gets it")
        #expect(!signals.hasKeptSignal)
        // And a signal while an action is set goes straight to it.
        kill(getpid(), SIGINT)
        #expect(eventually(timeout: 10) { received.withLock { $0 } == [SIGTERM, SIGINT] })
        signals.hold()
    }
}
