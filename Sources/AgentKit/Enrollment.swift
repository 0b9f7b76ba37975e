// Enrollment gets the agent its certificate over EST (RFC 7030), then renews it.
// One run at a time, as a small state machine (Step) driven by the outcomes of
// ESTExchange:
//   chain    GET /cacerts (the CA chain to write after the leaf)
//   request  POST /simpleenroll (a new EC P-256 key's PKCS#10 for CN=name, Basic
//            NAME:TOKEN and/or the claim certificate shown in TLS) or /simplereenroll (a new key, CN of the current
//            certificate, over a connection that shows the current certificate)
//   waiting  202: the same request again after Retry-After
// Success writes the key (0600) and the certificate (leaf plus the chain
// without a self-signed root) to temporary files, then renames both. An
// enrollment that fails backs off (Backoff) and tries again until it succeeds,
// with the same key and request and the chain it already has: if the gateway
// used the token and signed but the answer came after the timeout, the retry
// with the same key gets that certificate again (the gateway's IssuedReplays);
// a new key would be refused with the used token for good. The key stays in
// memory only (it reaches the disk with its certificate, never alone). A
// renewal reports to its caller (CertificateRenewal), which backs off, and
// uses a new key and a fresh chain each time.
// Problems are logged once per change; repeats go to debug.
import EventLoop
import TLS

public final class Enrollment {
    enum Step { case idle, chain, request, waiting }

    let loop: EventLoop
    let logger: Logger
    var config: AgentConfig
    private var step = Step.idle
    private var renewing = false
    private var key: EnrollmentKey?
    private var csr: [UInt8] = []
    /// The CN `csr` asks for.
    private var csrName = ""
    private var token: String?
    /// The CA certificates to write after the leaf (PEM, no self-signed root).
    private var chain: [UInt8] = []
    /// `chain` came from /cacerts in this run (kept across an enrollment's retries).
    private var haveChain = false
    /// Called once when the run ends: nil on success, or why not.
    private var finished: ((String?) -> Void)?
    private var backoff = Backoff(baseMs: 1_000, capMs: 300_000)
    private var jitter: Jitter
    private var exchange: ESTExchange?
    private var timer: TimerID?
    private var lastProblem = ""
    private var cancelled = false
    /// Each failed enrollment attempt, with why, before its backoff (the simulator counts them).
    public var onFailure: ((String) -> Void)?

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
        finished = nil
        exchange?.cancel()
        exchange = nil
        loop.cancel(timer)
        timer = nil
        step = .idle
    }

    /// Enrolls until it succeeds (or `cancel`), then runs `done`: one run, one key.
    public func enroll(done: @escaping () -> Void) {
        forget()
        attempt(done)
    }

    /// One attempt of an enrollment run; a failed one schedules the next.
    private func attempt(_ done: @escaping () -> Void) {
        renewing = false
        finished = { error in
            guard let error else {
                self.backoff.reset()
                self.lastProblem = ""
                done()
                return
            }
            self.problem("enrollment failed: " + error)
            self.onFailure?(error)
            self.timer = self.loop.schedule(afterMilliseconds: max(100, self.backoff.nextDelayMs { self.jitter.next(upTo: $0) })) {
                self.timer = nil
                self.attempt(done)
            }
        }
        begin(commonName: config.name)
    }

    /// One re-enrollment with a new key as `commonName`; `done` gets nil once both
    /// files hold the new key and certificate, or why not.
    public func renew(commonName: String, done: @escaping (String?) -> Void) {
        forget()
        renewing = true
        finished = done
        begin(commonName: commonName)
    }

    @inline(never)
    private func begin(commonName: String) {
        guard !cancelled, step == .idle else { return }
        token = nil
        if !renewing && config.hasToken {
            guard let t = readToken() else { return }
            token = t
        }
        if key == nil || csrName != commonName {
            do throws(OpenSSLError) {
                let k = try EnrollmentKey()
                csr = try k.certificateRequest(commonName: commonName)
                csrName = commonName
                key = k
            } catch {
                end(error.description)
                return
            }
        }
        if !renewing && lastProblem.isEmpty { logger.notice("enrolling as " + config.name + " at " + endpoint.description, ctx) }
        if haveChain {
            sendRequest()
        } else {
            step = .chain
            run(.cacerts(authority: authority))
        }
    }

    var endpoint: HostPort { config.estServer ?? config.gateway }
    var authority: String { endpoint.port == 443 ? endpoint.host : endpoint.description }

    private func sendRequest() {
        step = .request
        run(renewing ? .simplereenroll(request: csr, authority: authority)
            : .simpleenroll(request: csr, user: config.name, token: token, authority: authority))
    }

    @inline(never)
    private func run(_ client: EnrollmentClient) {
        let tls: TLSContext
        do throws(OpenSSLError) {
            tls = try TLSContext(config.estTLSConfiguration(withCertificate: step == .chain ? .none : renewing ? .current : .claim))
        } catch {
            end(error.description)
            return
        }
        let e = endpoint
        let x = ESTExchange(loop: loop, tls: tls, endpoint: e, serverName: config.serverName ?? e.host, client: client,
                            timeoutMs: config.connectTimeoutMs * 3) { self.handle($0) }
        exchange = x
        x.start()
    }

    /// The answer of the exchange `step` started.
    private func handle(_ outcome: EnrollmentClient.Outcome) {
        exchange = nil
        let why: String
        switch outcome {
        case .certificates(let pem, _):
            if step == .chain {
                chain = pem
                haveChain = true
                sendRequest()
            } else {
                end(install(leaf: pem))
            }
            return
        case .retry(let seconds):
            if step == .request && !renewing {
                step = .waiting
                note("waiting for approval: asking again every " + String(seconds) + " s")
                timer = loop.schedule(afterMilliseconds: seconds * 1000) {
                    self.timer = nil
                    self.sendRequest()
                }
                return
            }
            why = "202"
        case .refused(let status, let reason):
            why = String(status) + " " + reason
        case .failed(let reason):
            why = reason
        }
        end((step == .chain ? "/cacerts: " : renewing ? "/simplereenroll: " : "/simpleenroll: ") + why)
    }

    private func end(_ error: String?) {
        step = .idle
        if error == nil || renewing { forget() }  // an enrollment's retry keeps its key and chain
        let cb = finished
        finished = nil
        cb?(error)
    }

    /// Drops the key, its request and the chain: the next run starts afresh.
    private func forget() {
        key = nil
        csr = []
        chain = []
        haveChain = false
    }

    /// Writes the key, then the certificate (its presence means "enrolled").
    private func install(leaf: [UInt8]) -> String? {
        guard let certFile = config.certFile, let keyFile = config.keyFile, let key else { return "no cert and key files set" }
        let pem = leaf + chain
        var keyPEM: [UInt8]
        do throws(OpenSSLError) { keyPEM = try key.privateKeyPEM() } catch { return error.description }
        defer { for i in keyPEM.indices { keyPEM[i] = 0 } }
        do throws(AtomicFile.Failure) {
            try AtomicFile.prepare(keyFile, keyPEM, mode: 0o600)
            try AtomicFile.prepare(certFile, pem, mode: 0o644)
            try AtomicFile.commit(keyFile)
            try AtomicFile.commit(certFile)
        } catch {
            return error.description
        }
        logger.notice("new certificate written to " + certFile + ", its key to " + keyFile, ctx)
        return nil
    }

    /// The token, inline or from its file (surrounding white space dropped).
    private func readToken() -> String? {
        if let t = config.enrollToken { return t }
        let path = config.enrollTokenFile ?? ""
        var token: [UInt8] = []
        for b in AtomicFile.read(path, limit: 4096) ?? [] where b > 0x20 { token.append(b) }  // no white space in a token
        guard !token.isEmpty else {
            end("cannot read a token from enroll_token_file " + path)
            return nil
        }
        return String(decoding: token, as: UTF8.self)
    }

    private func problem(_ p: String) {
        if p != lastProblem {
            logger.warning(p + " (retrying with backoff)", ctx)
            lastProblem = p
        } else {
            logger.debug("again: " + p, ctx)
        }
    }

    private func note(_ message: String) {
        if message != lastProblem {
            logger.notice(message, ctx)
            lastProblem = message
        }
    }
}
