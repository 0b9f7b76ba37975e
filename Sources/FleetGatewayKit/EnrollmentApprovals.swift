// EnrollmentApprovals: the enrollments waiting for an operator (`enroll_approval =
// manual`), one per device name, in memory only (a restart forgets them: the
// device's token is used, so it needs a new one). Bounded: at most `maxEntries`
// requests and `maxBytes` of their DER; a waiting request is forgotten after
// `pendingSeconds`, a decided one after `decidedSeconds` or once the approved
// certificate was handed out. The device asks again with the same request (same
// public key) and the same token: while waiting it gets 202, then the answer.
import FleetPKI
import HTTP1

final class EnrollmentApprovals {
    enum State: Equatable {
        case pending
        /// Decided: what the device gets when it asks again (the certificate, or 403).
        case decided(status: Int, at: Int64)
    }

    struct Entry {
        let name: String
        let request: CertificateRequest
        /// SHA-256 of the token the device presented (the same must come back).
        let tokenHash: [UInt8]
        /// The token's names, for the operator.
        let binding: String
        let address: String
        let requestedAt: Int64
        var state = State.pending
        var answer: ShortResponse?

        init(name: String, request: CertificateRequest, tokenHash: [UInt8], binding: String, address: String, requestedAt: Int64) {
            self.name = name
            self.request = request
            self.tokenHash = tokenHash
            self.binding = binding
            self.address = address
            self.requestedAt = requestedAt
        }
    }

    static let maxEntries = 1_000
    static let maxBytes = 4 << 20
    static let pendingSeconds: Int64 = 7 * 86_400
    static let decidedSeconds: Int64 = 86_400

    private(set) var entries: [String: Entry] = [:]
    private var bytes = 0

    /// The answer for a device asking again with the request and token of its entry
    /// (202 while waiting, then the decision, handed out once when approved); 409 for
    /// another request of a name that has an entry; nil when the name has none.
    func answer(name: String, fingerprint: [UInt8], tokenHash: [UInt8], now: Int64) -> ShortResponse? {
        expire(now: now)
        guard let e = entries[name] else { return nil }
        guard e.request.publicKeyFingerprint == fingerprint, AdminServer.constantTimeEqual(tokenHash, e.tokenHash) else {
            return .error(409, "another enrollment request of " + name + " waits for approval")
        }
        guard case .decided(let status, _) = e.state, let answer = e.answer else {
            return .error(202, "enrollment of " + name + " waits for an operator's approval; send the same request again",
                          retryAfter: ESTService.retryAfterSeconds)
        }
        if status == 200 { remove(name) }
        return answer
    }

    func hasRoom(for request: CertificateRequest, now: Int64) -> Bool {
        expire(now: now)
        return entries.count < EnrollmentApprovals.maxEntries && bytes + request.der.count <= EnrollmentApprovals.maxBytes
    }

    func add(_ entry: Entry) {
        remove(entry.name)
        entries[entry.name] = entry
        bytes += entry.request.der.count
    }

    /// The entry of `name` if it still waits.
    func pending(_ name: String) -> Entry? {
        guard let e = entries[name], e.state == .pending else { return nil }
        return e
    }

    func decide(_ name: String, answer: ShortResponse, now: Int64) {
        entries[name]?.state = .decided(status: answer.head.status, at: now)
        entries[name]?.answer = answer
    }

    private func remove(_ name: String) {
        if let e = entries.removeValue(forKey: name) { bytes -= e.request.der.count }
    }

    func expire(now: Int64) {
        for (name, e) in entries {
            switch e.state {
            case .pending where now - e.requestedAt > EnrollmentApprovals.pendingSeconds: remove(name)
            case .decided(_, let at) where now - at > EnrollmentApprovals.decidedSeconds: remove(name)
            default: break
            }
        }
    }

    /// Every entry, by name, as the admin API lists them.
    func json() -> String {
        JSON.array(entries.values.sorted { $0.name < $1.name }.map { e in
            let state: String
            var decidedAt = "null"
            switch e.state {
            case .pending: state = "pending"
            case .decided(let status, let at):
                state = status == 200 ? "approved" : "denied"
                decidedAt = String(at)
            }
            return JSON.object([("name", JSON.string(e.name)), ("state", JSON.string(state)),
                                ("key", JSON.string(e.request.keyType.description)),
                                ("public_key_sha256", JSON.string(e.request.publicKeyFingerprintHex)),
                                ("token", JSON.string(e.binding)), ("from", JSON.string(e.address)),
                                ("requested_at", String(e.requestedAt)), ("decided_at", decidedAt)])
        })
    }
}
