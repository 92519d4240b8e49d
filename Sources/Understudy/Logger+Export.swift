// swift-log's `Logger` appears in this module's public initialisers
// (`ReplicationPrimary`, `StandbyReceiver`, `Fence`, ...): it is re-exported,
// so a VMM that imports Understudy can make one without naming swift-log.
// (Configuring log output, `LoggingSystem.bootstrap`, stays swift-log's:
// import Logging for that.)
@_exported import struct Logging.Logger
