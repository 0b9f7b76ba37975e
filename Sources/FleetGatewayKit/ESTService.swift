// ESTService: the gateway's EST server (RFC 7030, issue 17) without sockets: a
// parsed request and who sent it (ESTClient) in, a complete answer out. The
// device listener's ESTConnection feeds it; the tests call it directly.
//
//   GET  /.well-known/est/cacerts          the chain (DIR/ca.crt), certs-only PKCS#7, base64
//   POST /.well-known/est/simpleenroll     PKCS#10 (base64) + a one-time enrollment token as
//                                          Basic auth's password (the user is not used: the
//                                          token alone says which names it allows), or,
//                                          without Authorization, a claim certificate as the
//                                          TLS client certificate (DIR/claims.txt says which
//                                          names it allows; not used up; refused once expired
//                                          or in revoked.txt)
//   POST /.well-known/est/simplereenroll   PKCS#10 (base64), authenticated by the current
//                                          device certificate (TLS): same subject, new key
//
// The certificate's CN is the request's CN in canonical form, which the token's
// binding (its one name, or its globs) must allow, and which the gateway must
// admit as a device (allow_devices, reserved names, hostname_template): the same
// rules as a connecting device. Order of an enrollment: token well-formed (401),
// request parsed and its signature checked (400), token usable (401), name allowed
// (403), no live certificate of that name (409), then the token is used
// (EnrollmentTokens.consume, outside PKI's lock) and the certificate signed.
// With `enroll_approval = manual` the request waits in EnrollmentApprovals (202 +
// Retry-After) until the admin API approves it; the same request sent again with
// the same token (or claim) then gets the certificate. A claim is checked by
// ClaimAuthority and is not used up; ESTServiceAdmin.swift holds approve/deny and
// the counters. A token already used by the same name with the same public key
// gets the certificate issued for it again (IssuedReplays: the device's first
// answer was lost); DIR/enroll-tokens is parsed only when it changed
// (EnrollmentTokens.FileCache), and is written and synced before signing.
import FleetAccess
import FleetPKI
import EventLoop
import HTTP1
import TLS

/// One EST request as the handler sees it (the connection has bounded its size).
struct ESTRequest {
    var method: String
    /// The request target without its query.
    var path: String
    var contentType: String?
    /// Every Authorization field.
    var authorization: [String] = []
    var body: [UInt8] = []
}

/// Who sent it: the TLS connection's peer.
struct ESTClient {
    var address: String
    /// The verified client certificate (DER), nil without one.
    var certificateDER: [UInt8]?
    var commonName: String?
    var isUserCertificate = false
    /// The certificate's subject has OU=reversehttp-claim (PKIClaims.swift).
    var isClaimCertificate = false
}

final class ESTService {
    enum Operation: String, CaseIterable { case cacerts, simpleenroll, simplereenroll }

    static let prefix = "/.well-known/est/"
    static let pkcs10 = "application/pkcs10"
    /// Seconds a client waiting for approval is told to wait (Retry-After).
    static let retryAfterSeconds = 60

    private let settings: CurrentConfig
    let logger: Logger
    /// Unix seconds now (injected: the tests' clock).
    let now: () -> Int64
    /// The gateway's own names, which no device may take (Gateway keeps it current).
    var reserved: ReservedNames
    /// The CA that signs, nil when DIR/ca.key is not readable (enrollment answers 503).
    private(set) var ca: CertificateAuthority?
    /// Why `ca` is nil (logged at load, said in the 503).
    private(set) var caUnavailable: String?
    /// The /cacerts body (base64 of the certs-only PKCS#7 of DIR/ca.crt), nil when unreadable.
    private var cacertsBody: String?
    /// Enrollments on hold (`enroll_approval = manual`), kept in DIR/enroll-approvals.
    let approvals: EnrollmentApprovals
    /// Answers by operation and result (rhttp_est_requests_total).
    private(set) var counts: [String: Int] = [:]
    /// DIR/enroll-tokens as parsed last, while the file is unchanged.
    let tokenCache = EnrollmentTokens.FileCache()
    /// Certificates issued for tokens, to send again to the same key (a lost answer).
    var replays = IssuedReplays()

    init(settings: CurrentConfig, logger: Logger, reserved: ReservedNames, now: @escaping () -> Int64) {
        self.settings = settings
        self.logger = logger
        self.reserved = reserved
        self.now = now
        approvals = EnrollmentApprovals(path: settings.value.pkiDir.map { $0 + "/" + EnrollmentApprovals.fileName })
        approvals.onError = { [logger] text in logger.error("EST: " + text) }
        approvals.load(now: now())
        reload()
    }

    var config: GatewayConfig { settings.value }
    var directory: String { config.pkiDir ?? "." }

    /// Reads DIR/ca.crt (for /cacerts) and the CA's key (at start and on SIGHUP).
    func reload() {
        guard let dir = config.pkiDir else { return }
        do throws(PKIError) {
            let p7 = try PKCS7CertsOnly.encode(certificatesPEM: PKI.readFile(dir + "/ca.crt"))
            cacertsBody = String(decoding: ESTBody.encode(p7), as: UTF8.self)
        } catch {
            cacertsBody = nil
            logger.error("EST: cannot read the CA chain " + dir + "/ca.crt: " + error.description + "; /cacerts answers 503")
        }
        do throws(PKIError) {
            ca = try CertificateAuthority(directory: dir)
            caUnavailable = nil
        } catch {
            ca = nil
            caUnavailable = "this gateway does not hold the CA key (pki_dir " + dir + ": " + error.description
                + "): it serves /cacerts only"
            logger.warning("EST: " + caUnavailable!)
        }
    }

    // MARK: - The one entry

    func handle(_ req: ESTRequest, client: ESTClient) -> ShortResponse {
        guard req.path.hasPrefix(ESTService.prefix),
              let op = Operation(rawValue: String(req.path.dropFirst(ESTService.prefix.count))) else {
            return .error(404, "not found: this port serves EST (" + ESTService.prefix + "cacerts, simpleenroll, simplereenroll)")
        }
        let r: ShortResponse
        switch op {
        case .cacerts:
            r = req.method == "GET" ? cacerts() : methodNotAllowed("GET")
        case .simpleenroll:
            r = req.method == "POST" ? enroll(req, client) : methodNotAllowed("POST")
        case .simplereenroll:
            r = req.method == "POST" ? reenroll(req, client) : methodNotAllowed("POST")
        }
        count(op, status: r.head.status)
        return r
    }

    private func methodNotAllowed(_ allow: String) -> ShortResponse {
        .error(405, "method not allowed", fields: HTTPHeaders([("Allow", allow)]))
    }

    /// Every result word `result(_:)` gives: the metric's fixed label set.
    static let results = ["ok", "pending", "bad_request", "unauthorized", "refused", "conflict", "too_large",
                          "unavailable", "not_found", "error"]

    /// A result word per status, for the metric.
    static func result(_ status: Int) -> String {
        switch status {
        case 200: return "ok"
        case 202: return "pending"
        case 400, 415: return "bad_request"
        case 401: return "unauthorized"
        case 403: return "refused"
        case 409: return "conflict"
        case 413: return "too_large"
        case 503: return "unavailable"
        case 404, 405: return "not_found"
        default: return "error"
        }
    }

    /// A body over the limit, refused by the connection before it reached `handle`.
    func countTooLarge(path: String) {
        let p = path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        guard p.hasPrefix(ESTService.prefix), let op = Operation(rawValue: String(p.dropFirst(ESTService.prefix.count))) else { return }
        count(op, status: 413)
    }

    func count(_ op: Operation, status: Int) {
        counts[op.rawValue + " " + ESTService.result(status), default: 0] += 1
    }

    // MARK: - /cacerts

    private func cacerts() -> ShortResponse {
        guard let body = cacertsBody else { return .error(503, "the CA chain cannot be read (see the gateway's log)") }
        return ESTService.certificates(body, contentType: "application/pkcs7-mime")
    }

    static func certificates(_ base64: String, contentType: String) -> ShortResponse {
        ShortResponse(status: 200, body: base64, contentType: contentType,
                      fields: HTTPHeaders([("Content-Transfer-Encoding", "base64"), ("Cache-Control", "no-store")]))
    }

    static func issuedResponse(_ issued: IssuedCertificate) -> ShortResponse {
        // RFC 7030 §4.2.3: only the certificate that was issued (the chain is /cacerts').
        do throws(PKIError) {
            let body = try PKCS7CertsOnly.estBody(certificatesDER: [issued.certificateDER])
            return certificates(String(decoding: body, as: UTF8.self), contentType: PKCS7CertsOnly.contentType)
        } catch {
            return .error(500, "cannot encode the certificate")
        }
    }

    // MARK: - /simpleenroll

    private static let challenge = HTTPHeaders([("WWW-Authenticate", "Basic realm=\"EST enrollment\", charset=\"UTF-8\"")])

    private func unauthorized(_ why: String, _ client: ESTClient) -> ShortResponse {
        logger.notice("EST simpleenroll from " + client.address + " refused: " + why)
        return .error(401, why + " (send the enrollment token as Basic auth's password)", fields: ESTService.challenge)
    }

    private func refused(_ status: Int, _ op: Operation, _ why: String, _ client: ESTClient) -> ShortResponse {
        logger.notice("EST " + op.rawValue + " from " + client.address + " refused: " + why)
        return .error(status, why)
    }

    /// The token: Basic auth's password (one Authorization field).
    private func tokenSecret(_ req: ESTRequest) -> String? {
        guard req.authorization.count == 1, case .basic(_, let password)? = Credentials.parse(authorization: req.authorization[0]),
              EnrollmentTokens.isWellFormedSecret(password) else { return nil }
        return password
    }

    /// The PKCS#10 request of the body, or the answer refusing it.
    private enum Parsed {
        case request(CertificateRequest)
        case refused(ShortResponse)
    }

    private func parseRequest(_ req: ESTRequest, _ op: Operation, _ client: ESTClient) -> Parsed {
        let type = req.contentType.map { PKI.asciiLowercased(String($0.split(separator: ";").first ?? "")).filter { $0 != " " } }
        guard type == ESTService.pkcs10 else {
            return .refused(refused(415, op, "the body must be Content-Type: application/pkcs10 (base64 DER)", client))
        }
        do throws(ESTError) {
            return .request(try CertificateRequest(estBody: req.body))
        } catch {
            if case .tooLarge = error { return .refused(refused(413, op, error.description, client)) }
            return .refused(refused(400, op, error.description, client))
        }
    }

    /// What authorizes an enrollment: a one-time token, or a claim certificate.
    private enum Authority {
        case token(String)
        case claim(ClaimRecord, EnrollmentBinding)
    }

    private func enroll(_ req: ESTRequest, _ client: ESTClient) -> ShortResponse {
        guard let ca else { return .error(503, caUnavailable ?? "EST is off") }
        let authority: Authority
        if req.authorization.isEmpty, let der = client.certificateDER, let cert = PresentedCertificate(der: der),
           cert.isClaim || client.isClaimCertificate {
            do throws(ClaimRefusal) {
                let (record, binding) = try ClaimAuthority.check(cert, directory: directory, now: now())
                authority = .claim(record, binding)
            } catch {
                if error.status == 500 {
                    logger.error("EST: " + error.description)
                    return .error(500, "the claims cannot be read (see the gateway's log)")
                }
                return refused(error.status, .simpleenroll, error.description, client)
            }
        } else {
            guard let secret = tokenSecret(req) else {
                return unauthorized(req.authorization.isEmpty ? "no enrollment token" : "not an enrollment token", client)
            }
            authority = .token(secret)
        }
        let request: CertificateRequest
        switch parseRequest(req, .simpleenroll, client) {
        case .request(let r): request = r
        case .refused(let answer): return answer
        }
        guard let name = PKI.canonicalDeviceName(request.commonName) else {
            return refused(400, .simpleenroll, "the request's CN is not a device name (a hostname)", client)
        }
        // What must come back with the request while it waits for approval: the same
        // token, or the same claim certificate.
        let tokenHash: [UInt8]
        switch authority {
        case .token(let secret): tokenHash = sha256(Array(secret.utf8))
        case .claim(let record, _): tokenHash = sha256(Array(("claim " + record.serial).utf8))
        }
        if case .token = authority, let answer = replay(tokenHash: tokenHash, name: name, request: request, client: client) {
            return answer
        }
        if config.enrollApprovalManual, let answer = approvals.answer(name: name, fingerprint: request.publicKeyFingerprint,
                                                                      tokenHash: tokenHash, now: now()) {
            return answer
        }
        let binding: EnrollmentBinding
        let what: String
        switch authority {
        case .token(let secret):
            do throws(EnrollmentTokenError) {
                binding = try EnrollmentTokens.lookup(directory: directory, secret: secret, now: now(), cache: tokenCache)
            } catch {
                return tokenRefusal(error, client)
            }
            what = "the enrollment token"
        case .claim(let record, let names):
            binding = names
            what = "claim " + record.name
        }
        guard binding.allows(name) else {
            return refused(403, .simpleenroll, what + " is for " + binding.text + ", not " + name, client)
        }
        if case .failure(let refusal) = DeviceIdentity.admit(commonName: name, config: config, reserved: reserved) {
            return refused(403, .simpleenroll, refusal.description, client)
        }
        do throws(PKIError) {
            try ca.checkIssuable(name: name)
        } catch {
            return pkiRefusal(error, .simpleenroll, name, client)
        }
        if config.enrollApprovalManual {
            guard approvals.hasRoom(for: request, credential: tokenHash, now: now()) else {
                return .error(503, "too many enrollments wait for approval (in all, or with this " + (what == "the enrollment token" ? "token" : what) + ")",
                              retryAfter: ESTService.retryAfterSeconds)
            }
        }
        var tokenExpires: Int64?
        if case .token(let secret) = authority {
            do throws(EnrollmentTokenError) {
                tokenExpires = try EnrollmentTokens.consumeEntry(directory: directory, secret: secret, forName: name,
                                                                 now: now(), cache: tokenCache).expires
            } catch {
                return tokenRefusal(error, client)
            }
        }
        if config.enrollApprovalManual {
            let shown: String
            if case .claim(let record, _) = authority { shown = "claim " + record.name + ": " + binding.text } else { shown = binding.text }
            approvals.add(EnrollmentApprovals.Entry(name: name, request: request, tokenHash: tokenHash, binding: shown,
                                                    address: client.address, requestedAt: now()))
            logger.notice("EST simpleenroll: " + name + " from " + client.address + " waits for approval (key "
                          + request.keyType.description + ", SHA-256 " + request.publicKeyFingerprintHex + ")")
            return .error(202, "enrollment of " + name + " waits for an operator's approval; send the same request again",
                          retryAfter: ESTService.retryAfterSeconds)
        }
        return issue(request, name: name, earlier: .refuse, op: .simpleenroll, client: client) { issued in
            guard let expires = tokenExpires else { return }
            self.replays.record(tokenHash: tokenHash, IssuedReplays.Entry(
                name: name, keyFingerprint: request.publicKeyFingerprint, serial: issued.serial,
                certificateDER: issued.certificateDER, expires: expires), now: self.now())
        }
    }

    /// The certificate issued earlier for this used token, name and key, sent again
    /// (IssuedReplays); nil when there is none, so that the token is refused as used.
    private func replay(tokenHash: [UInt8], name: String, request: CertificateRequest, client: ESTClient) -> ShortResponse? {
        guard let entry = replays.replay(tokenHash: tokenHash, name: name, keyFingerprint: request.publicKeyFingerprint,
                                         now: now()) else { return nil }
        do throws(PKIError) {
            if try PKI.isRevoked(directory: directory, serial: entry.serial) { return nil }
        } catch {
            logger.error("EST: revoked.txt: " + error.description)
            return .error(500, "the revocation list cannot be read (see the gateway's log)")
        }
        logger.notice("EST simpleenroll: sent " + name + " serial " + entry.serial + " again to " + client.address
                      + " (the same token and key: its first answer was lost)")
        do throws(PKIError) {
            let body = try PKCS7CertsOnly.estBody(certificatesDER: [entry.certificateDER])
            return ESTService.certificates(String(decoding: body, as: UTF8.self), contentType: PKCS7CertsOnly.contentType)
        } catch {
            return .error(500, "cannot encode the certificate")
        }
    }

    private func tokenRefusal(_ error: EnrollmentTokenError, _ client: ESTClient) -> ShortResponse {
        switch error {
        case .unknown, .used, .expired:
            return unauthorized(error.description, client)
        case .wrongName:
            return refused(403, .simpleenroll, error.description, client)
        case .invalid, .file:
            logger.error("EST: enrollment tokens: " + error.description)
            return .error(500, "the enrollment tokens cannot be read (see the gateway's log)")
        }
    }

    private func pkiRefusal(_ error: PKIError, _ op: Operation, _ name: String, _ client: ESTClient) -> ShortResponse {
        switch error {
        case .stillIssued:
            return refused(409, op, name + " has a certificate that is still valid: re-enroll with it (simplereenroll), "
                           + "or revoke it first (fleet-gateway pki revoke DIR " + name + ")", client)
        case .invalidName, .notCanonical, .reservedName:
            return refused(403, op, error.description, client)
        default:
            logger.error("EST " + op.rawValue + " for " + name + ": " + error.description)
            return .error(500, "the certificate cannot be issued (see the gateway's log)")
        }
    }

    /// Signs and answers; logs the serial.
    func issue(_ request: CertificateRequest, name: String, earlier: EarlierCertificates, op: Operation,
               client: ESTClient, issuedHook: (IssuedCertificate) -> Void = { _ in }) -> ShortResponse {
        guard let ca else { return .error(503, caUnavailable ?? "EST is off") }
        do throws(PKIError) {
            let issued = try ca.issueDevice(request: request, name: name, days: config.deviceCertDays, earlier: earlier)
            logger.notice("EST " + op.rawValue + ": issued " + name + " serial " + issued.serial + " to " + client.address
                          + ", valid " + String(config.deviceCertDays) + " days")
            issuedHook(issued)
            return ESTService.issuedResponse(issued)
        } catch {
            return pkiRefusal(error, op, name, client)
        }
    }

    // MARK: - /simplereenroll

    private func reenroll(_ req: ESTRequest, _ client: ESTClient) -> ShortResponse {
        guard ca != nil else { return .error(503, caUnavailable ?? "EST is off") }
        guard let current = client.certificateDER else {
            return refused(403, .simplereenroll, "simplereenroll needs the current device certificate as the TLS client certificate", client)
        }
        let name: String
        switch DeviceIdentity.admit(commonName: client.commonName, isUserCertificate: client.isUserCertificate,
                                    isClaimCertificate: client.isClaimCertificate, config: config, reserved: reserved) {
        case .success(let identity): name = identity.name
        case .failure(let refusal): return refused(403, .simplereenroll, refusal.description, client)
        }
        // The CRL refuses a revoked certificate at the handshake once the gateway reloaded
        // it; revoked.txt is read here so that `pki revoke` stops renewals at once.
        guard let presented = PresentedCertificate(der: current), !presented.isClaim else {
            return refused(403, .simplereenroll, "the client certificate cannot be read as a device's", client)
        }
        do throws(PKIError) {
            if try PKI.isRevoked(directory: directory, serial: presented.serial) {
                return refused(403, .simplereenroll, name + ": the certificate (serial " + presented.serial + ") is revoked", client)
            }
        } catch {
            logger.error("EST: revoked.txt: " + error.description)
            return .error(500, "the revocation list cannot be read (see the gateway's log)")
        }
        let request: CertificateRequest
        switch parseRequest(req, .simplereenroll, client) {
        case .request(let r): request = r
        case .refused(let answer): return answer
        }
        do throws(ESTError) {
            try request.checkReenrollment(currentCertificateDER: current)
        } catch {
            return refused(error == .keyReused ? 409 : 403, .simplereenroll, name + ": " + error.description, client)
        }
        return issue(request, name: name, earlier: .keep, op: .simplereenroll, client: client)
    }
}
