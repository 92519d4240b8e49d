import ArgumentParser
import Foundation
import Understudy

/// Asks a running understudy-primary or understudy-standby on this host what
/// state it is in, to switch its guest over, or to stop. Argument parsing and
/// printing only; Understudy's ControlClient does the talking.
struct UnderstudyCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "understudy-ctl",
        abstract: "Control the understudy-primary and understudy-standby processes on this host.",
        discussion: """
            Each process serves a unix socket, by default \(ControlClient.defaultDirectory)/PROGRAM-PID.sock \
            (--control on the process sets another). Without --socket, status asks every process on this host; \
            switchover and stop need exactly one to choose from.
            """,
        subcommands: [Status.self, Switchover.self, Stop.self]
    )

    struct Target: ParsableArguments {
        @Option(help: "The process's control socket (default: the only one in \(ControlClient.defaultDirectory)).")
        var socket: String?

        /// The sockets to ask: the given one, or every one in the default directory.
        func sockets() throws -> [String] {
            if let socket { return [socket] }
            let found = ControlClient.sockets()
            guard !found.isEmpty else { throw ValidationError("no control socket in \(ControlClient.defaultDirectory): is a primary or standby running here? (--socket PATH)") }
            return found
        }

        /// The one socket a command that changes something goes to.
        func single() throws -> String {
            let all = try sockets().filter { socket != nil || (try? ControlClient.send(.status, to: $0, timeout: .seconds(2))) != nil }
            guard all.count == 1, let only = all.first else {
                throw ValidationError(all.isEmpty ? "no running process answers in \(ControlClient.defaultDirectory)"
                                                  : "\(all.count) processes run here; choose one with --socket: \(all.joined(separator: ", "))")
            }
            return only
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Role, protection, generation, last commit, lag, rates and held output.")
        @OptionGroup var target: Target
        @Flag(help: "Print JSON (one object per process, one per line).")
        var json = false

        func run() throws {
            var failed = false
            for path in try target.sockets() {
                do {
                    let reply = try ControlClient.send(.status, to: path, timeout: .seconds(5))
                    if json {
                        print(String(decoding: reply.encoded, as: UTF8.self))
                    } else if let status = reply.status {
                        print("\(path): \(status.text)")
                    } else {
                        print("\(path): \(reply.message ?? "no status")")
                    }
                } catch ControlError.system(_, let code) where target.socket == nil && (code == ECONNREFUSED || code == ENOENT) {
                    continue                    // a socket left by a process that is gone
                } catch {
                    failed = true
                    FileHandle.standardError.write(Data("\(path): \(error)\n".utf8))
                }
            }
            if failed { throw ExitCode(1) }
        }
    }

    struct Switchover: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move the guest to its standby (send to the primary): no acknowledged output lost, connections kept; this host becomes the standby.")
        @OptionGroup var target: Target

        func run() throws { try UnderstudyCtl.send(.switchover, to: target.single()) }
    }

    struct Stop: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop as SIGTERM does: a primary tells its standby goodbye (no takeover) and stops the guest; a standby stops without taking over.")
        @OptionGroup var target: Target

        func run() throws { try UnderstudyCtl.send(.stop, to: target.single()) }
    }

    /// Sends a command that changes something and prints what came back.
    static func send(_ request: ControlRequest, to path: String) throws {
        let reply: ControlReply
        do {
            reply = try ControlClient.send(request, to: path)
        } catch {
            FileHandle.standardError.write(Data("\(path): \(error)\n".utf8))
            throw ExitCode(1)
        }
        print(reply.message ?? (reply.ok ? "done" : "failed"))
        if !reply.ok { throw ExitCode(1) }
    }
}

UnderstudyCtl.main()
