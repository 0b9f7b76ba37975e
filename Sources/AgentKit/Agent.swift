// Agent runs N Dialers on one event loop, sharing the TLS context and the pool of
// connections to the local API.
//  - stop (SIGTERM): GOAWAY on every connection, requests in flight finish, exit.
//  - reload (SIGHUP): a new configuration and new certificates are rolled in one
//    connection at a time: a new connection comes up with them, then the old one
//    it replaces is drained (GOAWAY, its requests finish). If the first new
//    connection cannot come up, the reload is abandoned and the running
//    connections are kept.
//  - enrollment (Enrollment): with a token and no certificate yet, the agent gets
//    one over EST before it dials; CertificateRenewal re-enrolls at about two
//    thirds of its life and rolls the connections onto it as a reload does.
import CLibc
import EventLoop
import TLS

public final class Agent {
    public private(set) var config: AgentConfig
    public let loop: EventLoop
    public let logger: Logger
    public private(set) var dialers: [Dialer] = []
    private(set) var pool: LocalPool
    private var tls: TLSContext?
    private let identity: TLSIdentity?
    private let handler: LocalHandler?
    private var connectionCounter = 0
    private var onChange: (() -> Void)?
    /// Dialers replaced by a reload or stopped, draining.
    private var retiring: [Dialer] = []
    private var reloading = false
    private var stopping = false
    /// The dialer a reload is bringing up, not yet in `dialers`.
    private var rolling: Dialer?
    /// The completion of the reload in progress.
    private var reloadDone: ((String?) -> Void)?
    private var enrollment: Enrollment?
    public private(set) var renewal: CertificateRenewal?

    public convenience init(config: AgentConfig, loop: EventLoop, logger: Logger) throws(OpenSSLError) {
        let tls = config.plaintext || config.needsEnrollment ? nil : try TLSContext(config.tlsConfiguration())
        self.init(config: config, loop: loop, logger: logger, tls: tls)
    }

    /// An agent on a TLS context built elsewhere, presenting `identity` if set (one
    /// context for many simulated devices), and serving requests with `handler`
    /// in-process instead of forwarding them to `config.local`.
    public init(config: AgentConfig, loop: EventLoop, logger: Logger, tls: TLSContext?,
                identity: TLSIdentity? = nil, handler: LocalHandler? = nil) {
        self.config = config
        self.loop = loop
        self.logger = logger
        self.tls = tls
        self.identity = identity
        self.handler = handler
        pool = LocalPool(loop: loop, endpoint: config.local, maxActive: config.localMaxConnections)
    }

    public var connectedCount: Int {
        var n = 0
        for d in dialers where d.state == .connected { n += 1 }
        return n
    }

    /// `onChange` runs whenever a connection comes up or goes down.
    public func start(onChange: (() -> Void)? = nil) {
        self.onChange = onChange
        warnIfPlaintext(config)
        guard identity == nil, config.needsEnrollment || config.renew else {
            dial()
            return
        }
        let e = Enrollment(config: config, loop: loop, logger: logger, seed: seed(slot: 64))
        enrollment = e
        if config.needsEnrollment {
            e.enroll { self.enrolled() }
        } else {
            dial()
        }
    }

    private func dial() {
        for i in 0..<config.connections { dialers.append(makeDialer(slot: i, config: config, tls: tls, pool: pool)) }
        for d in dialers { d.start() }
        if config.renew, identity == nil, let e = enrollment { startRenewal(e) }
    }

    /// The first certificate is written: load it and dial.
    private func enrolled() {
        guard !stopping else { return }
        do throws(OpenSSLError) {
            tls = try TLSContext(config.tlsConfiguration())
        } catch {
            logger.error("the enrolled certificate does not load: " + error.description + "; trying again in 10 s", LogContext(device: config.name))
            loop.schedule(afterMilliseconds: 10_000) { self.enrolled() }
            return
        }
        dial()
    }

    private func startRenewal(_ e: Enrollment) {
        let r = CertificateRenewal(loop: loop, logger: logger, device: config.name, seed: seed(slot: 65), wallClock: { rh_wall_seconds() },
                                   certificate: { self.currentCertificate() }, attempt: { info, done in e.renew(commonName: info.commonName, done: done) },
                                   renewed: { self.rollToRenewedCertificate() })
        renewal = r
        r.start()
    }

    private func currentCertificate() -> CertificateInfo? {
        guard let path = config.certFile, let pem = AtomicFile.read(path) else { return nil }
        return try? CertificateInfo(pem: pem)
    }

    /// The renewed key and certificate are on disk: roll the connections onto them.
    private func rollToRenewedCertificate() {
        guard !stopping else { return }
        reload(config) { error in
            guard let error else {
                self.logger.notice("connections rolled to the renewed certificate", LogContext(device: self.config.name))
                return
            }
            self.logger.warning("rolling to the renewed certificate: " + error + "; trying again in 5 s", LogContext(device: self.config.name))
            self.loop.schedule(afterMilliseconds: 5_000) { self.rollToRenewedCertificate() }
        }
    }

    private func seed(slot: Int) -> UInt64 {
        loop.now ^ (UInt64(UInt32(bitPattern: getpid())) << 32) ^ (UInt64(slot) &* 0x9E37_79B9_7F4A_7C15)
    }

    private func warnIfPlaintext(_ c: AgentConfig) {
        if c.plaintext {
            logger.warning("INSECURE: --plaintext: the tunnel is not encrypted and the gateway is not authenticated; use only on loopback or for tests")
        }
    }

    private func makeDialer(slot: Int, config: AgentConfig, tls: TLSContext?, pool: LocalPool) -> Dialer {
        let d = Dialer(slot: slot, config: config, loop: loop, tls: tls, identity: identity, pool: pool, handler: handler,
                       logger: logger, seed: seed(slot: slot)) {
            self.connectionCounter += 1
            return self.connectionCounter
        }
        d.onStateChange = { _ in self.onChange?() }
        return d
    }

    /// Stops dialing and drains: GOAWAY on every connection, the streams in flight
    /// finish, then `done` runs once every connection is closed.
    public func stop(done: @escaping () -> Void) {
        stopping = true
        enrollment?.cancel()
        renewal?.stop()
        var all = dialers + retiring
        if let r = rolling {
            all.append(r)
            rolling = nil
        }
        dialers = []
        retiring = []
        var open = all.count
        for d in all {
            d.onStopped = {
                open -= 1
                if open == 0 {
                    self.pool.closeAll()
                    self.onChange = nil  // it may hold the owner of this agent
                    done()
                }
            }
        }
        for d in all { d.stop() }
        if all.isEmpty {
            onChange = nil
            done()
        }
    }

    // MARK: Reload

    /// Rolls `newConfig` in; `done` gets nil when every slot runs on it, or why not.
    public func reload(_ newConfig: AgentConfig, done: @escaping (String?) -> Void) {
        guard !reloading else {
            done("a reload is already in progress")
            return
        }
        // Kept, not passed on: a closure argument would make the optimizer copy
        // rollIn for each caller (SIGHUP, a renewal), 3 KB each in the Embedded agent.
        reloadDone = done
        rollIn(newConfig)
    }

    @inline(never)
    private func rollIn(_ newConfig: AgentConfig) {
        let newTLS: TLSContext?
        do throws(OpenSSLError) {
            newTLS = newConfig.plaintext ? nil : try TLSContext(newConfig.tlsConfiguration())
        } catch {
            reloaded(error.description)
            return
        }
        reloading = true
        logger.level = newConfig.logLevel
        warnIfPlaintext(newConfig)
        let newPool = newConfig.local == config.local && newConfig.localMaxConnections == config.localMaxConnections
            ? pool : LocalPool(loop: loop, endpoint: newConfig.local, maxActive: newConfig.localMaxConnections)
        if newPool === pool { pool.forgetAddress() }  // the name may point elsewhere now
        roll(slot: 0, newConfig, newTLS, newPool) { error in
            self.reloading = false
            if error == nil {
                if newPool !== self.pool { self.pool.closeAll() }
                self.config = newConfig
                self.enrollment?.config = newConfig
                self.tls = newTLS
                self.pool = newPool
            }
            self.reloaded(error)
        }
    }

    private func reloaded(_ error: String?) {
        let done = reloadDone
        reloadDone = nil
        done?(error)
    }

    /// Replaces the dialer of `slot` with one on the new configuration, then the next.
    private func roll(slot: Int, _ c: AgentConfig, _ t: TLSContext?, _ p: LocalPool, done: @escaping (String?) -> Void) {
        guard !stopping else {
            done("stopping")
            return
        }
        guard slot < c.connections else {
            // Fewer connections than before: drain the surplus.
            while dialers.count > c.connections { retire(dialers.removeLast()) }
            done(nil)
            return
        }
        let fresh = makeDialer(slot: slot, config: c, tls: t, pool: p)
        rolling = fresh
        var finished = false
        let deadline = loop.schedule(afterMilliseconds: c.connectTimeoutMs) {
            guard !finished, !self.stopping else { return }
            finished = true
            self.rolling = nil
            fresh.onStateChange = { _ in self.onChange?() }
            if slot == 0 {
                // The new configuration never connected: keep what runs.
                let why = fresh.lastFailure.isEmpty ? "no connection within " + String(c.connectTimeoutMs) + " ms" : fresh.lastFailure
                fresh.onStopped = nil
                fresh.stop()
                done("the new configuration does not connect: " + why + "; keeping the running connections")
                return
            }
            self.install(fresh, slot: slot)
            self.roll(slot: slot + 1, c, t, p, done: done)
        }
        fresh.onStateChange = { state in
            self.onChange?()
            guard state == .connected, !finished, !self.stopping else { return }
            finished = true
            self.rolling = nil
            self.loop.cancel(deadline)
            fresh.onStateChange = { _ in self.onChange?() }
            self.install(fresh, slot: slot)
            self.roll(slot: slot + 1, c, t, p, done: done)
        }
        fresh.start()
    }

    private func install(_ fresh: Dialer, slot: Int) {
        if slot < dialers.count {
            // The fresh one takes the slot first: whoever counts the connections
            // while the old one stops sees the new one, never an empty slot.
            let old = dialers[slot]
            dialers[slot] = fresh
            retire(old)
        } else {
            dialers.append(fresh)
        }
    }

    private func retire(_ d: Dialer) {
        retiring.append(d)
        d.onStopped = { self.retiring.removeAll { $0 === d } }  // one-shot: the dialer drops it
        d.stop()
    }
}
