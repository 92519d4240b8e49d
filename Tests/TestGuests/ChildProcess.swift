import Foundation
import Synchronization

/// Bytes a child process wrote, collected as they arrive.
public final class OutputCollector: Sendable {
    private let bytes = Mutex<[UInt8]>([])
    /// Where arriving bytes are copied too (see `ChildProcess.liveLog`).
    private let copy = Mutex<FileHandle?>(nil)

    public init() {}

    public func append(_ data: Data) {
        copy.withLock { file in
            bytes.withLock { $0 += data }
            try? file?.write(contentsOf: data)
        }
    }

    /// Writes what arrived so far, and from now on what arrives, to `file` too.
    func copy(to file: FileHandle?) {
        guard let file else { return }
        copy.withLock { copy in
            copy = file
            try? file.write(contentsOf: Data(bytes.withLock { $0 }))
        }
    }

    public var data: [UInt8] { bytes.withLock { $0 } }
    public var text: String { String(decoding: data, as: UTF8.self) }
    /// Complete lines so far, without their line ending. (A Linux guest's tty
    /// ends them with "\r\n", which is one Character: splitting at "\n"
    /// would not split there.)
    public var lines: [String] {
        var lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).map(String.init)
        lines.removeLast()
        return lines
    }
}

/// One of the package's executables run as a child process, its standard
/// output and error collected separately. Killed with SIGKILL when dropped.
public final class ChildProcess: @unchecked Sendable {
    public let process = Process()
    public let standardOutput = OutputCollector()
    public let standardError = OutputCollector()

    /// The built executable `name` next to the test bundle (or `name` itself,
    /// when it is an absolute path, for a system program).
    public static func executable(_ name: String) -> String? {
        if name.hasPrefix("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<5 {
            let candidate = directory.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        // Benchmarks may run from elsewhere: the package's release build.
        let release = GuestPrograms.packageRoot.appendingPathComponent(".build/release/\(name)").path
        return FileManager.default.isExecutableFile(atPath: release) ? release : nil
    }

    /// With `closingStandardOutput`, the read end of the child's standard
    /// output is closed as soon as it starts (a reader that went away). A
    /// `launcher` (such as `ip netns exec NAME`) runs the executable by exec,
    /// so the child's process id is the executable's.
    public init(_ name: String, _ arguments: [String], closingStandardOutput: Bool = false, launcher: [String] = []) throws {
        guard let path = Self.executable(name) else { throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: name]) }
        if launcher.isEmpty {
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = arguments
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = launcher + [path] + arguments
        }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let stdout = standardOutput, stderr = standardError
        out.fileHandleForReading.readabilityHandler = { stdout.append($0.availableData) }
        err.fileHandleForReading.readabilityHandler = { stderr.append($0.availableData) }
        try process.run()
        stdout.copy(to: Self.liveLog(name, process.processIdentifier, "out"))
        stderr.copy(to: Self.liveLog(name, process.processIdentifier, "err"))
        if closingStandardOutput {
            out.fileHandleForReading.readabilityHandler = nil
            try out.fileHandleForReading.close()
        }
    }

    deinit {
        if isRunning { kill(process.processIdentifier, SIGKILL) }
    }

    /// Whether the process still runs (`ChildExit`: not `process.isRunning`,
    /// which can miss the end of a child).
    public var isRunning: Bool { ChildExit.status(of: process) == nil }

    /// With `UNDERSTUDY_CHILD_LOGS=DIR`, each child's output is also appended,
    /// as it arrives, to DIR/PID-NAME.out and .err: how to watch a test that
    /// seems stuck (in the KVM box too: DIR under the checkout is shared).
    static func liveLog(_ name: String, _ pid: Int32, _ stream: String) -> FileHandle? {
        guard let directory = ProcessInfo.processInfo.environment["UNDERSTUDY_CHILD_LOGS"], !directory.isEmpty else { return nil }
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = "\(directory)/\(pid)-\(name).\(stream)"
        guard FileManager.default.createFile(atPath: path, contents: nil) else { return nil }
        return FileHandle(forWritingAtPath: path)
    }

    public func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// The exit status once the process has ended, nil while it runs (Foundation
    /// traps when asked for the status of a running process).
    public var exitStatus: Int32? { ChildExit.status(of: process) }

    /// Waits for the process to end; false if it still runs after `timeout` seconds,
    /// and then prints where each of its threads is (see `whereItIs`).
    public func waitForExit(timeout: TimeInterval = 30) -> Bool {
        let ended = eventually(timeout: timeout) { !isRunning }
        if ended { Thread.sleep(forTimeInterval: 0.1) }   // let the pipes drain
        else { print("\(process.executableURL?.lastPathComponent ?? "process") \(process.processIdentifier) still runs after \(Int(timeout)) s:\n\(whereItIs())") }
        return ended
    }

    /// Each thread's name, state and kernel stack, and the user-space stacks
    /// when gdb is installed: what a test that waited in vain reports.
    public func whereItIs() -> String {
        let pid = process.processIdentifier
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        var report = tasks.sorted().map { tid -> String in
            func read(_ file: String) -> String {
                (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/\(file)", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            }
            let state = read("status").split(separator: "\n").first { $0.hasPrefix("State:") } ?? "State: ?"
            return "thread \(tid) \(read("comm")) \(state) wchan=\(read("wchan"))\n\(read("stack"))"
        }.joined(separator: "\n")
        if let gdb = ["/usr/bin/gdb"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) {
            let debugger = Process()
            debugger.executableURL = URL(fileURLWithPath: gdb)
            debugger.arguments = ["-p", "\(pid)", "-batch", "-ex", "thread apply all bt 30"]
            let pipe = Pipe()
            debugger.standardOutput = pipe
            debugger.standardError = FileHandle.nullDevice
            if (try? debugger.run()) != nil {
                let text = pipe.fileHandleForReading.readDataToEndOfFile()
                ChildExit.wait(for: debugger)
                report += "\n" + String(decoding: text, as: UTF8.self)
            }
        }
        return report
    }

    /// The port a standby logged it listens on.
    public func listeningPort(timeout: TimeInterval = 30) -> UInt16? {
        var port: UInt16?
        _ = eventually(timeout: timeout) {
            guard isRunning || !standardError.text.isEmpty else { return true }
            guard let range = standardError.text.range(of: #"address=[0-9.]+:([0-9]+)"#, options: .regularExpression) else { return false }
            port = UInt16(standardError.text[range].split(separator: ":").last ?? "")
            return port != nil
        }
        return port
    }
}
