import CKVM
import Foundation
import Glibc
import Logging
import Synchronization

/// Serves control requests (`ControlRequest`) on a unix socket: one request
/// line per connection, one JSON reply line (`ControlReply`), then close.
///
/// The socket file is made owner-only (0600), and a peer whose user is
/// neither this process's nor root is refused (SO_PEERCRED): controlling a
/// guest is as privileged as running it. A socket file left by a process that
/// died is replaced; one a live process serves is not (`ControlError.inUse`).
/// Requests are served each on a thread of their own, at most
/// `maximumConcurrent` at once (a switchover takes a while; status stays
/// answerable meanwhile).
public final class ControlServer: @unchecked Sendable {
    public let path: String
    /// Answers a request (on a thread of the server's); replaceable at any time.
    public var handler: @Sendable (ControlRequest) -> ControlReply {
        get { current.withLock { $0 } }
        set { current.withLock { $0 = newValue } }
    }
    public static let maximumConcurrent = 4

    private let fd: Int32
    private let logger: Logger
    private let current = Mutex<@Sendable (ControlRequest) -> ControlReply>({ _ in ControlReply(ok: false, message: "starting") })
    private let stopping = Atomic<Bool>(false)
    private let serving = Atomic<Int>(0)
    private let ended = DispatchSemaphore(value: 0)

    /// Binds `path` and starts serving.
    public init(path: String, logger: Logger) throws(ControlError) {
        self.path = path
        self.logger = logger
        let address = try UnixSocketAddress(path: path)
        if FileManager.default.fileExists(atPath: path) {
            if (try? ControlClient.connect(to: path)).map({ close($0); return true }) == true { throw .inUse(path: path) }
            unlink(path)
        }
        let fd = try UnixSocketAddress.socket()
        let bound = address.withSockaddr { bind(fd, $0, $1) }
        guard bound == 0 else { let code = errno; close(fd); throw .system(call: "bind \(path)", errno: code) }
        chmod(path, 0o600)
        guard listen(fd, 8) == 0 else { let code = errno; close(fd); unlink(path); throw .system(call: "listen \(path)", errno: code) }
        self.fd = fd
        let thread = Thread { [self] in acceptLoop(); ended.signal() }
        thread.name = "understudy-control"
        thread.start()
    }

    /// The server a program opens for its `--control` option: nil for the
    /// default path (`ControlClient.defaultPath`, its directory made if
    /// missing), "none" for no server. A socket that cannot be opened is a
    /// warning, not a reason to stop: the guest matters more than its control.
    public static func open(option: String?, program: String, logger: Logger) -> ControlServer? {
        if option == "none" { return nil }
        let path = option ?? ControlClient.defaultPath(program: program)
        if option == nil { mkdir(ControlClient.defaultDirectory, 0o700) }
        do {
            let server = try ControlServer(path: path, logger: logger)
            logger.info("control socket: understudy-ctl --socket \(path) status")
            return server
        } catch {
            logger.warning("no control socket (understudy-ctl cannot reach this process): \(error)")
            return nil
        }
    }

    /// Stops accepting, removes the socket file; requests being served finish.
    public func stop() {
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        ended.wait()
        close(fd)
        unlink(path)
    }

    deinit { stop() }

    private func acceptLoop() {
        while !stopping.load(ordering: .relaxed) {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) > 0 else { continue }
            let client = accept(fd, nil, nil)
            guard client >= 0 else { continue }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            guard serving.add(1, ordering: .relaxed).newValue <= Self.maximumConcurrent else {
                reply(ControlReply(ok: false, message: "busy: \(Self.maximumConcurrent) requests are being served"), on: client)
                serving.subtract(1, ordering: .relaxed)
                close(client)
                continue
            }
            let thread = Thread { [self] in
                defer { serving.subtract(1, ordering: .relaxed); close(client) }
                serve(client)
            }
            thread.name = "understudy-control-request"
            thread.start()
        }
    }

    private func serve(_ client: Int32) {
        if let refusal = Self.refusal(of: client) {
            logger.warning("control: \(refusal)")
            reply(ControlReply(ok: false, message: refusal), on: client)
            return
        }
        let request: ControlRequest
        do {
            request = try ControlRequest(line: UnixSocketAddress.readLine(client, limit: ControlRequest.maximumLineBytes, timeoutMilliseconds: 2000))
        } catch {
            reply(ControlReply(ok: false, message: "\(error)"), on: client)
            return
        }
        if request != .status { logger.notice("control: \(request.rawValue) requested") }
        reply(handler(request), on: client)
    }

    private func reply(_ reply: ControlReply, on client: Int32) {
        do { try UnixSocketAddress.writeAll(client, reply.encoded + [0x0A]) } catch { logger.debug("control: reply not sent: \(error)") }
    }

    /// Why the peer on `client` may not control this process (nil: it may).
    static func refusal(of client: Int32) -> String? {
        var uid: UInt32 = 0
        guard ckvm_peer_uid(client, &uid) == 0 else {
            return "cannot tell who is asking (getsockopt SO_PEERCRED: errno \(errno))"
        }
        guard uid == 0 || uid == geteuid() else {
            return "user \(uid) may not control this process (run as user \(geteuid()) or root)"
        }
        return nil
    }
}
