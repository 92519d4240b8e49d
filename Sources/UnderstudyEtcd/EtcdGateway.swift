import AsyncHTTPClient
import Foundation
import NIOCore
import Synchronization
import Understudy

/// etcd's v3 API through its JSON gateway (`POST /v3/...`, keys and values
/// base64, 64-bit integers as strings), over async-http-client, called from
/// ordinary threads. Each call tries the members until one answers, starting
/// with the one that answered last (a member that died costs one failed
/// attempt, not one per call, which a lease's renewal cannot afford); an
/// answer from any member is the cluster's (etcd forwards to its leader).
/// Every answer is untrusted: anything unexpected is `.malformed`.
public final class EtcdGateway: Sendable {
    /// The members, as `host:port`.
    public let endpoints: [String]
    /// How long one member may take to answer one call.
    public let requestTimeout: Duration
    private let client: HTTPClient
    /// The member that answered last: tried first.
    private let preferred = Atomic<Int>(0)

    /// Parses `etcd://HOST:PORT[,HOST:PORT...]`.
    public static func endpoints(from url: String) throws(ArbiterError) -> [String] {
        guard url.hasPrefix("etcd://") else { throw .invalid("'\(url)' is not etcd://HOST:PORT[,HOST:PORT...]") }
        let members = url.dropFirst("etcd://".count).split(separator: ",").map(String.init)
        guard !members.isEmpty, members.allSatisfy({ member in
            guard let colon = member.lastIndex(of: ":"), let port = UInt16(member[member.index(after: colon)...]), port > 0 else { return false }
            return colon > member.startIndex
        }) else { throw .invalid("'\(url)' is not etcd://HOST:PORT[,HOST:PORT...]") }
        return members
    }

    public init(endpoints: [String], requestTimeout: Duration = .seconds(1)) {
        self.endpoints = endpoints
        self.requestTimeout = requestTimeout
        // One client for the process, never shut down: a gateway dropped while
        // a request to a silent member was still timing out made a private
        // client's shutdown race the connection's release, which
        // async-http-client treats as a fatal error ("a connection that we
        // don't know was released").
        client = HTTPClient.shared
    }

    /// POSTs `body` to `/v3/<path>` and returns the decoded JSON object.
    public func call(_ path: String, _ body: [String: Any]) throws(ArbiterError) -> [String: Any] {
        let payload: Data
        do { payload = try JSONSerialization.data(withJSONObject: body) } catch { throw .malformed("request: \(error)") }
        var failures: [String] = []
        let first = preferred.load(ordering: .relaxed)
        for offset in endpoints.indices {
            let index = (first + offset) % endpoints.count
            let endpoint = endpoints[index]
            let response: HTTPClient.Response
            do {
                let request = try HTTPClient.Request(url: "http://\(endpoint)/v3/\(path)", method: .POST,
                                                     headers: ["Content-Type": "application/json"], body: .bytes(payload))
                response = try client.execute(request: request, deadline: .now() + .milliseconds(Int64(requestTimeout.milliseconds))).wait()
            } catch {
                failures.append("\(endpoint): \(error)")
                continue
            }
            let bytes = response.body.map { Data($0.readableBytesView) } ?? Data()
            guard let object = (try? JSONSerialization.jsonObject(with: bytes)) as? [String: Any] else {
                throw .malformed("\(endpoint) /v3/\(path): HTTP \(response.status.code), not a JSON object")
            }
            guard response.status == .ok else {
                let message = (object["message"] as? String) ?? (object["error"] as? String) ?? "HTTP \(response.status.code)"
                // A member that is not part of a quorum answers with an error: try the next.
                failures.append("\(endpoint): \(message)")
                continue
            }
            preferred.store(index, ordering: .relaxed)
            return object
        }
        throw .unreachable(failures.joined(separator: "; "))
    }

    /// base64 of UTF-8 text, as the gateway takes keys and values.
    public static func encode(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    /// The text of a base64 field.
    public static func decode(_ field: Any?) throws(ArbiterError) -> String {
        guard let string = field as? String, let data = Data(base64Encoded: string) else { throw .malformed("a key or value that is not base64") }
        return String(decoding: data, as: UTF8.self)
    }

    /// An unsigned 64-bit field (member ids); absent is 0.
    public static func unsigned(_ field: Any?) throws(ArbiterError) -> UInt64 {
        guard let field else { return 0 }
        guard let string = field as? String, let value = UInt64(string) else { throw .malformed("\(field) is not an unsigned integer") }
        return value
    }

    /// A 64-bit integer field (the gateway writes them as strings); absent is 0 (proto3).
    public static func integer(_ field: Any?) throws(ArbiterError) -> Int64 {
        switch field {
        case nil: return 0
        case let string as String:
            guard let value = Int64(string) else { throw .malformed("'\(string)' is not an integer") }
            return value
        case let number as NSNumber: return number.int64Value
        default: throw .malformed("\(String(describing: field)) is not an integer")
        }
    }
}
