import Testing
import Understudy

@Suite("Engine configuration")
struct EngineConfigurationTests {
    @Test func epochsFromHalfAMillisecondUp() throws {
        try EngineConfiguration(epoch: .microseconds(500)).validate()
        try EngineConfiguration().validate()
        #expect(throws: EngineError.self) { try EngineConfiguration(epoch: .microseconds(499)).validate() }
        #expect(throws: EngineError.self) { try EngineConfiguration(referenceCachePages: 0).validate() }
    }
}
