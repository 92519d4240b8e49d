// `Logger` is in MicroVM's public initialisers too (`Machine`, the devices,
// `StandbyRunner`): re-exported as Understudy does (Logger+Export.swift there).
@_exported import struct Logging.Logger
