// EnrollmentApprovals: the enrollments waiting for an operator (`enroll_approval =
// manual`), one per device name. Bounded: at most `maxEntries` requests, of which
// `maxPerCredential` from one claim or token, and `maxBytes` of their DER; a waiting request is forgotten after `pendingSeconds`,
// a decided one after `decidedSeconds` or once the approved certificate was handed
// out. The device asks again with the same request (same public key) and the same
// token (or claim): while waiting it gets 202, then the answer.
//
// Kept across restarts in DIR/enroll-approvals (0600), rewritten atomically after
// each change: the device's one-time token was used when its request was put on
// hold, so a restart that forgot the request would strand the device until an
// operator made it a new token. One entry a line, tab-separated:
//   NAME STATE(pending|approved|denied) REQUESTED_AT DECIDED_AT(-) TOKEN_SHA256(base64)
//   ADDRESS BINDING CSR(base64 DER) ANSWER(the approved certificate's EST body, or -)
// An unreadable file is logged and left as it is until the next change rewrites it.
import Bytes
import FleetPKI
import HTTP1
import TLS

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
    /// Requests one credential (a claim; a token is used once anyway) may have waiting.
    static let maxPerCredential = 50
    static let maxBytes = 4 << 20
    static let pendingSeconds: Int64 = 7 * 86_400
    static let decidedSeconds: Int64 = 86_400

    static let fileName = "enroll-approvals"
    /// Largest file read back (the DER bound, in base64, plus the answers).
    static let maxFileBytes = 16 << 20

    private(set) var entries: [String: Entry] = [:]
    private var bytes = 0
    /// DIR/enroll-approvals; nil: in memory only.
    let path: String?
    /// Where save and load failures are told (the gateway's log).
    var onError: (String) -> Void = { _ in }

    init(path: String? = nil) {
        self.path = path
    }

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
        if status == 200 {
            remove(name)
            save()
        }
        return answer
    }

    /// Room for one more request made with the credential whose SHA-256 is `credential`
    /// (a token's, a claim's): the whole queue is bounded, and so is one credential's
    /// share of it, so that one claim (baked into many boards: the easiest credential to
    /// extract) cannot fill the queue and turn every other enrollment away.
    func hasRoom(for request: CertificateRequest, credential: [UInt8], now: Int64) -> Bool {
        expire(now: now)
        guard entries.count < EnrollmentApprovals.maxEntries, bytes + request.der.count <= EnrollmentApprovals.maxBytes else {
            return false
        }
        var same = 0
        for e in entries.values where e.state == .pending && e.tokenHash == credential {
            same += 1
            if same >= EnrollmentApprovals.maxPerCredential { return false }
        }
        return true
    }

    func add(_ entry: Entry) {
        remove(entry.name)
        entries[entry.name] = entry
        bytes += entry.request.der.count
        save()
    }

    /// The entry of `name` if it still waits.
    func pending(_ name: String) -> Entry? {
        guard let e = entries[name], e.state == .pending else { return nil }
        return e
    }

    func decide(_ name: String, answer: ShortResponse, now: Int64) {
        entries[name]?.state = .decided(status: answer.head.status, at: now)
        entries[name]?.answer = answer
        save()
    }

    private func remove(_ name: String) {
        if let e = entries.removeValue(forKey: name) { bytes -= e.request.der.count }
    }

    func expire(now: Int64) {
        let before = entries.count
        for (name, e) in entries {
            switch e.state {
            case .pending where now - e.requestedAt > EnrollmentApprovals.pendingSeconds: remove(name)
            case .decided(_, let at) where now - at > EnrollmentApprovals.decidedSeconds: remove(name)
            default: break
            }
        }
        if entries.count != before { save() }
    }

    // MARK: - The file

    /// What `save` writes.
    func formatted() -> [UInt8] {
        var out = "# fleet-gateway: EST enrollments waiting for approval or decided (rewritten by the gateway)\n"
        for e in entries.values.sorted(by: { $0.name < $1.name }) {
            let state: String, decidedAt: String
            var answer = "-"
            switch e.state {
            case .pending:
                state = "pending"
                decidedAt = "-"
            case .decided(let status, let at):
                state = status == 200 ? "approved" : "denied"
                decidedAt = String(at)
                // The EST body without its line breaks (ESTBody.encode puts them back on load).
                if status == 200, let body = e.answer?.body {
                    answer = String(decoding: body.filter { $0 != UInt8(ascii: "\r") && $0 != UInt8(ascii: "\n") }, as: UTF8.self)
                }
            }
            out += [e.name, state, String(e.requestedAt), decidedAt, Base64.encode(e.tokenHash, urlSafe: false),
                    EnrollmentApprovals.field(e.address), EnrollmentApprovals.field(e.binding),
                    Base64.encode(e.request.der, urlSafe: false), answer].joined(separator: "\t") + "\n"
        }
        return Array(out.utf8)
    }

    /// No tab or line break inside a field.
    private static func field(_ s: String) -> String {
        s.isEmpty ? "-" : String(s.map { $0 == "\t" || $0 == "\n" || $0 == "\r" ? " " : $0 })
    }

    private func save() {
        guard let path else { return }
        do throws(PKIError) {
            try PKI.replaceFile(path, formatted(), mode: 0o600)
        } catch {
            onError("cannot save the enrollments waiting for approval: " + error.description)
        }
    }

    /// Reads the file back (at start); a missing file is no entry.
    func load(now: Int64) {
        guard let path else { return }
        let data: [UInt8]
        do throws(PKIError) {
            data = try PKI.readFile(path, limit: EnrollmentApprovals.maxFileBytes)
        } catch {
            if case .io(_, let code) = error, code == 2 { return }  // ENOENT
            return onError("cannot read the enrollments waiting for approval: " + error.description)
        }
        do throws(ApprovalFileError) {
            entries = [:]
            bytes = 0
            for e in try EnrollmentApprovals.parse(data) where entries.count < EnrollmentApprovals.maxEntries
                && bytes + e.request.der.count <= EnrollmentApprovals.maxBytes {
                entries[e.name] = e
                bytes += e.request.der.count
            }
        } catch {
            entries = [:]
            bytes = 0
            return onError(path + ": " + error.text + "; the enrollments waiting for approval start empty")
        }
        expire(now: now)
    }

    struct ApprovalFileError: Error { let text: String }

    static func parse(_ data: [UInt8]) throws(ApprovalFileError) -> [Entry] {
        var out: [Entry] = []
        for (index, raw) in data.split(separator: UInt8(ascii: "\n")).enumerated() {
            let line = String(decoding: raw, as: UTF8.self)
            if line.hasPrefix("#") || line.isEmpty { continue }
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            let bad = ApprovalFileError(text: "line " + String(index + 1) + " is not an enrollment")
            guard f.count == 9, PKI.isCanonicalDeviceName(f[0]), let requestedAt = Int64(f[2]),
                  let tokenHash = Base64.decode(Array(f[4].utf8), urlSafe: false), tokenHash.count == 32,
                  let der = Base64.decode(Array(f[7].utf8), urlSafe: false) else { throw bad }
            let request: CertificateRequest
            do throws(ESTError) { request = try CertificateRequest(der: der) } catch { throw bad }
            var e = Entry(name: f[0], request: request, tokenHash: tokenHash, binding: f[6] == "-" ? "" : f[6],
                          address: f[5] == "-" ? "" : f[5], requestedAt: requestedAt)
            switch f[1] {
            case "pending":
                break
            case "approved":
                guard let at = Int64(f[3]), let p7 = Base64.decode(Array(f[8].utf8), urlSafe: false) else { throw bad }
                e.state = .decided(status: 200, at: at)
                e.answer = ESTService.certificates(String(decoding: ESTBody.encode(p7), as: UTF8.self),
                                                   contentType: PKCS7CertsOnly.contentType)
            case "denied":
                guard let at = Int64(f[3]) else { throw bad }
                e.state = .decided(status: 403, at: at)
                e.answer = .error(403, "the enrollment of " + f[0] + " was denied")
            default:
                throw bad
            }
            out.append(e)
        }
        return out
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
