// Enrollment gets the agent its certificate over EST (RFC 7030), then renews it.
//  - enroll: a new EC P-256 key, GET /cacerts (the chain), POST /simpleenroll
//    with a PKCS#10 for CN=name and Basic NAME:TOKEN; 202 waits Retry-After and
//    asks again with the same request; other failures back off (Backoff) and
//    start over. Success writes the key (0600), then the certificate (leaf plus
//    the CA chain without a self-signed root), each atomically.
//  - renew: one attempt: a new key, /cacerts, POST /simplereenroll over a
//    connection that shows the current certificate; success writes both files.
// Problems are logged once per change; repeats go to debug.
import EventLoop
import TLS

public final class Enrollment {
    let loop: EventLoop
    let logger: Logger
    var config: AgentConfig
    private var backoff = Backoff(baseMs: 1_000, capMs: 300_000)
    private var jitter: Jitter
    private var exchange: ESTExchange?
    private var timer: TimerID?
    private var lastProblem = ""
    private var cancelled = false

    public init(config: AgentConfig, loop: EventLoop, logger: Logger, seed: UInt64) {
        self.config = config
        self.loop = loop
        self.logger = logger
        jitter = Jitter(seed: seed)
    }

    var ctx: LogContext { LogContext(device: config.name) }

    /// Stops whatever runs; no callback follows.
    public func cancel() {
        cancelled = true
        exchange?.cancel()
        exchange = nil
        loop.cancel(timer)
        timer = nil
    }

    // MARK: First certificate

    /// Enrolls until it succeeds (or `cancel`), then runs `done`.
    public func enroll(done: @escaping () -> Void) {
        guard !cancelled else { return }
        let token: String
        switch readToken() {
        case .success(let t): token = t
        case .failure(let why):
            retryLater(why.description) { self.enroll(done: done) }
            return
        }
        let key: EnrollmentKey
        let csr: [UInt8]
        do throws(OpenSSLError) {
            key = try EnrollmentKey()
            csr = try key.certificateRequest(commonName: config.name)
        } catch {
            retryLater(error.description) { self.enroll(done: done) }
            return
        }
        logger.notice("enrolling as " + config.name + " at " + endpoint.description + " (EST)", ctx)
        fetchChain(withCertificate: false) { chain in
            self.ask(.simpleenroll(request: csr, user: self.config.name, token: token), key: key, chain: chain) { error in
                if let error {
                    self.retryLater(error) { self.enroll(done: done) }
                } else {
                    self.backoff.reset()
                    self.lastProblem = ""
                    done()
                }
            } retry: { seconds in
                self.note("waiting for approval: asking again every " + String(seconds) + " s")
                return true
            }
        } failed: { why in
            self.retryLater(why) { self.enroll(done: done) }
        }
    }

    // MARK: Renewal

    /// One re-enrollment with a new key as `commonName`; `done` gets nil once both
    /// files hold the new key and certificate, or why not.
    public func renew(commonName: String, done: @escaping (String?) -> Void) {
        guard !cancelled else { return }
        let key: EnrollmentKey
        let csr: [UInt8]
        do throws(OpenSSLError) {
            key = try EnrollmentKey()
            csr = try key.certificateRequest(commonName: commonName)
        } catch {
            done(error.description)
            return
        }
        fetchChain(withCertificate: true) { chain in
            self.ask(.simplereenroll(request: csr), key: key, chain: chain, done: done) { _ in false }
        } failed: { why in
            done(why)
        }
    }

    // MARK: Steps

    var endpoint: HostPort { config.estServer ?? config.gateway }

    private func run(_ op: EnrollmentClient.Operation, withCertificate: Bool, _ then: @escaping (EnrollmentClient.Outcome) -> Void) {
        let tls: TLSContext
        do throws(OpenSSLError) { tls = try TLSContext(config.estTLSConfiguration(withCertificate: withCertificate)) } catch {
            then(.failed(error.description))
            return
        }
        let e = endpoint
        let authority = e.port == 443 ? e.host : e.description
        let x = ESTExchange(loop: loop, tls: tls, endpoint: e, serverName: config.serverName ?? e.host,
                            client: EnrollmentClient(op, authority: authority), timeoutMs: config.connectTimeoutMs * 3) { outcome in
            self.exchange = nil
            then(outcome)
        }
        exchange = x
        x.start()
    }

    private func fetchChain(withCertificate: Bool, _ then: @escaping ([[UInt8]]) -> Void, failed: @escaping (String) -> Void) {
        run(.cacerts, withCertificate: withCertificate) { outcome in
            switch outcome {
            case .certificates(let certs): then(certs)
            default: failed("/cacerts: " + Enrollment.describe(outcome))
            }
        }
    }

    /// Sends `op`; 202 asks again after Retry-After while `retry` says so.
    private func ask(_ op: EnrollmentClient.Operation, key: EnrollmentKey, chain: [[UInt8]],
                     done: @escaping (String?) -> Void, retry: @escaping (Int) -> Bool) {
        var reenroll = false
        if case .simplereenroll = op { reenroll = true }
        run(op, withCertificate: reenroll) { outcome in
            switch outcome {
            case .certificates(let certs):
                done(self.install(leaf: certs[0], chain: chain, key: key))
            case .retry(let seconds):
                guard retry(seconds) else {
                    done("/" + op.path + ": " + Enrollment.describe(outcome))
                    return
                }
                self.timer = self.loop.schedule(afterMilliseconds: seconds * 1000) {
                    self.timer = nil
                    self.ask(op, key: key, chain: chain, done: done, retry: retry)
                }
            default:
                done("/" + op.path + ": " + Enrollment.describe(outcome))
            }
        }
    }

    /// Writes the key, then the certificate (its presence means "enrolled").
    private func install(leaf: [UInt8], chain: [[UInt8]], key: EnrollmentKey) -> String? {
        guard let certFile = config.certFile, let keyFile = config.keyFile else { return "no cert and key files set" }
        let pem: [UInt8]
        let info: CertificateInfo
        var keyPEM: [UInt8]
        do throws(ESTError) { pem = try CertificateChain.pem(leaf: leaf, cas: chain) } catch { return error.description }
        do throws(OpenSSLError) {
            info = try CertificateInfo(pem: pem)
            keyPEM = try key.privateKeyPEM()
        } catch {
            return error.description
        }
        defer { for i in keyPEM.indices { keyPEM[i] = 0 } }
        do throws(AtomicFile.Failure) {
            try AtomicFile.write(keyFile, keyPEM, mode: 0o600)
            try AtomicFile.write(certFile, pem, mode: 0o644)
        } catch {
            return error.description
        }
        logger.notice("certificate for " + info.commonName + " written to " + certFile + " (valid until Unix time "
                      + String(info.notAfter) + "), key to " + keyFile, ctx)
        return nil
    }

    static func describe(_ o: EnrollmentClient.Outcome) -> String {
        switch o {
        case .certificates: return "certificates"
        case .retry(let s): return "202, retry after " + String(s) + " s"
        case .refused(let status, let reason): return String(status) + " " + reason
        case .failed(let why): return why
        }
    }

    private func readToken() -> Result<String, TokenError> {
        if let t = config.enrollToken { return .success(t) }
        guard let path = config.enrollTokenFile else { return .failure(TokenError("no enroll_token set")) }
        guard let bytes = AtomicFile.read(path, limit: 4096) else { return .failure(TokenError("cannot read enroll_token_file " + path)) }
        var s = bytes[...]
        while let last = s.last, last == 0x0A || last == 0x0D || last == 0x20 || last == 0x09 { s.removeLast() }
        while let first = s.first, first == 0x20 || first == 0x09 { s.removeFirst() }
        guard !s.isEmpty else { return .failure(TokenError("enroll_token_file " + path + " is empty")) }
        return .success(String(decoding: s, as: UTF8.self))
    }

    struct TokenError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    /// Logs `problem` once (repeats at debug) and runs `again` after the backoff.
    func retryLater(_ problem: String, _ again: @escaping () -> Void) {
        guard !cancelled else { return }
        let delay = backoff.nextDelayMs { self.jitter.next(upTo: $0) }
        if problem != lastProblem {
            logger.warning("enrollment failed: " + problem + " (retrying with backoff)", ctx)
            lastProblem = problem
        } else {
            logger.debug("enrollment failed again: " + problem + "; next in " + String(delay) + " ms", ctx)
        }
        timer = loop.schedule(afterMilliseconds: max(delay, 100)) {
            self.timer = nil
            again()
        }
    }

    private func note(_ message: String) {
        if message != lastProblem {
            logger.notice(message, ctx)
            lastProblem = message
        }
    }
}
