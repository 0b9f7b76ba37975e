// Gateway wires the two sides together on one event loop: the device listener
// (mTLS, reversed HTTP/2 connections into the registry) and the public listener
// (users' HTTP/1.1 requests, routed by Host through an Exchange).
import CLibc
import FleetAccess
import FleetPKI
import EventLoop
import HTTP2
import TLS
import ConfigFormat
import Wire

final class Gateway: UserConnectionOwner {
    /// The settings in force (reload replaces them for every part that holds `settings`).
    let settings: CurrentConfig
    var config: GatewayConfig { settings.value }
    let loop: EventLoop
    let logger: Logger
    /// The one device directory: which connections each device has.
    let registry: GatewayDirectory
    let queue: GatewayQueue
    let health: HealthChecker
    let admin: AdminServer
    let metrics: Metrics
    /// Who may reach which device: every user request is decided here before it is routed.
    let access: AccessControl
    private var jwksFetcher: JWKSFetcher?
    private var jwksRefresh: TimerID?
    /// Who last reached each device (admin /devices/NAME "last_access").
    let ledger: AccessLedger
    /// Users' HTTP/2 upload windows, all connections (UploadWindow).
    let uploads = UploadBudget()
    let recorder: RequestRecorder
    /// Free heap goes back to the kernel after a storm of device connections.
    let heapTrim: HeapTrim
    /// What every user connection and its exchanges are given (made once, on first use).
    private lazy var userServices = UserServices(loop: loop, logger: logger, settings: settings, access: access, queue: queue,
                                                 uploads: uploads, recorder: recorder, owner: self)
    private var deviceTLS: TLSContext?
    /// Names no device may take (the gateway's own), from the certificates in `config`.
    private var reservedNames: ReservedNames
    private var publicTLS: TLSContext?
    private var deviceListener: Int32 = -1
    private var publicListener: Int32 = -1
    private var connectionCounter = 0
    /// Every reversed connection, registered or not yet, by connection id.
    private var devices: [Int: DeviceConnection] = [:]
    /// Users' connections (HTTP/1.1 and HTTP/2), by object identity.
    private var users: [ObjectIdentifier: UserConnection] = [:]
    /// Connections to the device listener still in their TLS handshake (unauthenticated),
    /// by connection id, since when: when descriptors run short they make room, so that
    /// strangers dialing the device port cannot take those of devices and the admin listener.
    private var pendingDevices: [Int: (transport: Transport, since: UInt64)] = [:]
    private let fileLimit: Int
    private var evictedHandshakes = 0
    private var evictionLoggedAt: UInt64?
    /// Users' connections not yet handed to a protocol (TLS handshake, sniffing), since when.
    private var pendingUsers: [ObjectIdentifier: (transport: Transport, since: UInt64)] = [:]
    private var onDrained: (() -> Void)?
    /// EST on the device listener (`pki_dir`), nil without it.
    private(set) var est: ESTService?
    /// Connections to the device listener that are EST clients, by connection id.
    private var estConnections: [Int: ESTConnection] = [:]
    static let maxESTConnections = 1_024
    /// The CRL in use: its expiry, and its renewal when the gateway holds the CA key.
    private(set) var crl: CRLKeeper!
    /// Users' connections counted against the descriptors (devices are not counted).
    private(set) var budget: ConnectionBudget
    /// User connections refused since the last log line about it (one line per burst).
    private var refusedUsers = 0
    private var refusalLoggedAt: UInt64?

    init(config: GatewayConfig, loop: EventLoop, logger: Logger) throws(OpenSSLError) {
        let settings = CurrentConfig(config)
        self.settings = settings
        self.loop = loop
        self.logger = logger
        heapTrim = HeapTrim(loop: loop, logger: logger)
        let registry = GatewayDirectory()
        self.registry = registry
        reservedNames = ReservedNames(config: config)
        fileLimit = Int(rh_raise_nofile())
        budget = ConnectionBudget(fileLimit: fileLimit, limit: config.maxUserConnections,
                                  perAddress: config.maxUserConnectionsPerAddress)
        deviceTLS = config.plaintextDevices ? nil : try config.makeDeviceTLS()
        publicTLS = try config.publicTLS().map { c throws(OpenSSLError) in try TLSContext(c) }
        access = AccessControl(config: config, clock: loop.clock, logger: logger)
        let metrics = Metrics()
        metrics.perDevice = config.metricsPerDevice
        self.metrics = metrics
        let ledger = AccessLedger()
        self.ledger = ledger
        recorder = RequestRecorder(loop: loop, logger: logger, settings: settings, directory: registry, metrics: metrics, ledger: ledger)
        let health = HealthChecker(loop: loop, logger: logger, settings: settings, directory: registry)
        let queue = GatewayQueue(clock: loop.clock, settings: settings, directory: registry, health: health)
        // A device that comes up again may take what waits for it.
        health.onDeviceUp = { hostname in queue.deviceAvailable(hostname: hostname) }
        self.health = health
        self.queue = queue
        admin = AdminServer(loop: loop, logger: logger, settings: settings,
                            views: AdminServer.Views(directory: registry, health: health, queue: queue, ledger: ledger, metrics: metrics))
        admin.userConnections = { [unowned self] in self.budget.total }
        if config.pkiDir != nil {
            est = ESTService(settings: settings, logger: logger, reserved: reservedNames, now: { Int64(rh_wall_seconds()) })
        }
        crl = CRLKeeper(loop: loop, logger: logger, settings: settings, now: { Int64(rh_wall_seconds()) })
        crl.holdsKey = { [unowned self] in self.est?.ca != nil }
        crl.onRenewed = { [unowned self] in self.reloadTLSContexts() }
        admin.est = { [unowned self] in self.est }
        admin.crlExpirySeconds = { [unowned self] in self.crl.secondsLeft }
    }

    /// The device and public TLS contexts made again from the settings in force (the
    /// CRL the gateway just renewed), for the connections accepted from now on.
    private func reloadTLSContexts() {
        do throws(OpenSSLError) {
            if !config.plaintextDevices { deviceTLS = try config.makeDeviceTLS() }
            if publicTLS != nil { publicTLS = try config.publicTLS().map { c throws(OpenSSLError) in try TLSContext(c) } }
        } catch {
            logger.error("renewed CRL: the TLS contexts cannot be made again (" + error.description + "); keeping the current ones")
        }
    }

    var devicePort: Int { Socket.localPort(deviceListener) }
    var publicPort: Int { Socket.localPort(publicListener) }

    func start() throws(SocketError) {
        // A restart brings the whole fleet back at once: a short accept queue drops
        // their SYNs, which the kernel retries only after 1, 3, 7 s. The kernel caps
        // this at net.core.somaxconn.
        deviceListener = try Socket.listen(config.listenDevices, backlog: 65535)
        publicListener = try Socket.listen(config.listenPublic)
        loop.register(fd: deviceListener) { _ in self.acceptDevices() }
        loop.register(fd: publicListener) { _ in self.acceptUsers() }
        if let a = config.listenAdmin {
            try admin.start(a)
            logger.notice("admin on " + a.host + ":" + String(admin.port))
        }
        health.start()
        crl.start()
        heapTrim.start()
        startAccessControl()
        if let est {
            logger.notice("EST on the device listener: " + (config.pkiDir ?? "") + (est.ca == nil ? " (cacerts only: no CA key)" : "")
                          + ", certificates for " + String(config.deviceCertDays) + " days, approval "
                          + (config.enrollApprovalManual ? "manual" : "auto"))
        }
        if config.plaintextDevices {
            logger.warning("INSECURE: --plaintext-devices: devices are not authenticated; every device connection is '" + config.plaintextDeviceName + "'")
        }
        logger.notice("user connections: at most " + String(budget.limit) + ", " + String(budget.perAddress)
                      + " per address (open-file limit " + String(rh_raise_nofile()) + ")")
        logger.notice("devices on " + config.listenDevices.host + ":" + String(devicePort) + " (" + (deviceTLS == nil ? "plaintext" : "mTLS")
                      + "), users on " + config.listenPublic.host + ":" + String(publicPort) + " (" + (publicTLS == nil ? "http" : "https") + ")")
    }

    /// The JWKS URL (asked at start, and again for an unknown key) and the warnings an
    /// open public listener deserves at every start.
    private func startAccessControl() {
        startJWKSFetcher()
        if let keys = config.jwtJWKS { logKeys(keys, from: config.jwtJWKSFile ?? "jwt_jwks") }
        let where_ = config.listenPublic.host + ":" + String(publicPort)
        if config.accessPolicy == nil {
            if Loopback.isLoopback(config.listenPublic.host) {
                logger.notice("no access_policy: every user who reaches " + where_ + " (loopback) reaches every device")
            } else {
                logger.warning("public_access = open: anyone who reaches " + where_ + " reaches every device, without credentials")
            }
        } else {
            logger.notice("access policy " + (config.accessPolicyFile ?? "") + ": " + String(config.accessPolicy?.ruleCount ?? 0) + " rules")
        }
    }

    /// The JWKS URL's fetcher (made again when a reload changes the URL or its CA), and
    /// a first fetch.
    private func startJWKSFetcher() {
        jwksFetcher?.cancel()
        jwksFetcher = nil
        loop.cancel(jwksRefresh)
        jwksRefresh = nil
        access.fetchKeys = nil
        guard let url = config.jwtJWKSURL else { return }
        let fetcher: JWKSFetcher
        do throws(ConfigError) {
            fetcher = try JWKSFetcher(loop: loop, url: url, caFile: config.jwtJWKSCA, logger: logger)
        } catch {
            // GatewayConfig checked the URL; should the fetcher still refuse it (the CA
            // file, say), JWTs signed with keys not in jwt_jwks are refused, and this says why.
            logger.error("jwt_jwks_url: " + error.description + "; JWTs are checked against jwt_jwks only")
            return
        }
        jwksFetcher = fetcher
        access.fetchKeys = { done in
            fetcher.fetch(force: true) { result in
                switch result {
                case .success(let body): done(body)
                case .failure: done(nil)
                }
            }
        }
        access.onKeys = { keys in self.logKeys(keys, from: url) }
        access.refreshKeys()
        // A key the identity provider withdraws must go even if nobody sends an unknown kid.
        jwksRefresh = loop.schedule(afterMilliseconds: Gateway.jwksRefreshMs) { self.refreshJWKSHourly() }
    }

    static let jwksRefreshMs = 3_600_000

    private func refreshJWKSHourly() {
        jwksRefresh = nil
        guard jwksFetcher != nil else { return }
        access.refreshKeys()
        jwksRefresh = loop.schedule(afterMilliseconds: Gateway.jwksRefreshMs) { self.refreshJWKSHourly() }
    }

    /// How many JWT keys a JWKS gave, and why any were left out.
    func logKeys(_ keys: JWKS, from source: String) {
        logger.notice("JWKS " + source + ": " + String(keys.keyIDs.count) + " keys")
        for why in keys.skipped { logger.warning("JWKS " + source + ": key skipped: " + why) }
    }

    /// Accepts what is pending on `listener` (at most 64 per wake-up, so users and
    /// devices take turns) and wraps each connection in a Transport.
    private func acceptPending(_ listener: Int32, tls: TLSContext?, admit: (SocketAddress) -> Bool = { _ in true },
                               _ accepted: (Transport) -> Void) {
        for _ in 0..<64 {
            let next: (fd: Int32, peer: SocketAddress)?
            do throws(SocketError) { next = try Socket.accept(listener) } catch {
                // Out of file descriptors (or memory): the listener stays readable, so stop
                // watching it for a moment instead of spinning on it.
                logger.warning("accept: " + error.description + "; pausing accepts for 500 ms")
                loop.modify(fd: listener, readable: false, writable: false)
                loop.schedule(afterMilliseconds: 500) {
                    if listener == self.deviceListener || listener == self.publicListener {
                        self.loop.modify(fd: listener, readable: true, writable: false)
                    }
                }
                return
            }
            guard let (fd, peer) = next else { return }
            var conn: TLSConnection?
            if let tls {
                do throws(OpenSSLError) { conn = try TLSConnection(context: tls) } catch {
                    logger.warning(error.description)
                    Socket.close(fd)
                    continue
                }
            }
            // Last, so that a connection admitted (and counted) is always handed over.
            guard admit(peer) else {
                Socket.close(fd)
                continue
            }
            accepted(Transport(loop: loop, fd: fd, peer: peer, tls: conn, connecting: false))
        }
    }

    private func acceptDevices() {
        acceptPending(deviceListener, tls: deviceTLS, admit: { _ in self.makeRoomForDeviceHandshake() }) { t in
            connectionCounter += 1
            heapTrim.connectionChanged()
            let id = connectionCounter
            pendingDevices[id] = (t, loop.now)
            // TLS and the device's SETTINGS within the handshake timeout, or out.
            let deadline = loop.schedule(afterMilliseconds: config.handshakeTimeoutMs) {
                if self.devices[id]?.isReady != true && t.state != .closed {
                    self.logger.warning("device connection from " + t.peer.description + " did not complete its handshake in time",
                                        LogContext(connection: id))
                    t.close(.unresponsive(milliseconds: self.config.handshakeTimeoutMs))
                }
            }
            t.onOpen = {
                self.pendingDevices[id] = nil
                self.deviceOpened(t, id: id)
                if self.devices[id] == nil { self.loop.cancel(deadline) }
            }
            t.onClose = { reason in
                self.pendingDevices[id] = nil
                self.metrics.deviceConnectionRefused()
                self.logger.warning("device connection from " + t.peer.description + " failed: " + reason.description,
                                    LogContext(connection: id))
            }
            t.start()
        }
    }

    /// TLS is up: an EST client (http/1.1 or no ALPN, with `pki_dir`), or a device:
    /// take the identity from the certificate and reverse the connection.
    private func deviceOpened(_ t: Transport, id: Int) {
        if let est, let tls = t.tls, tls.alpnProtocol != "h2" {
            return startEST(t, id: id, service: est)
        }
        let identity: DeviceIdentity
        if let tls = t.tls {
            // With EST a certificate is optional at the TLS layer for non-h2 clients only;
            // a resumed session of one must not make a reversed connection either.
            if est != nil && !tls.peerCertificateVerified {
                logger.warning("device connection from " + t.peer.description + " asked for h2 without a verified client certificate; closing",
                               LogContext(connection: id))
                metrics.deviceConnectionRefused()
                t.onClose = nil
                t.close()
                return
            }
            switch DeviceIdentity.admit(commonName: tls.peerCommonName, isUserCertificate: tls.peerHasOrganizationalUnit(PKI.userMarker),
                                        isClaimCertificate: tls.peerHasOrganizationalUnit(PKI.claimMarker),
                                        config: config, reserved: reservedNames) {
            case .success(let admitted):
                identity = admitted
            case .failure(let refusal):
                logger.warning(refusal.logLine(peer: t.peer.description) + "; closing",
                               LogContext(connection: id))
                metrics.deviceConnectionRefused()
                t.onClose = nil
                t.close()
                return
            }
        } else {
            let name = config.plaintextDeviceName
            guard let hostname = config.hostnameTemplate.hostname(for: name) else {
                logger.warning("device " + name + " from " + t.peer.description
                               + ": hostname_template gives it no valid hostname (label over 63 or name over 253 characters); closing",
                               LogContext(connection: id))
                metrics.deviceConnectionRefused()
                t.onClose = nil
                t.close()
                return
            }
            identity = DeviceIdentity(name: name, hostname: hostname)
        }
        let dc: DeviceConnection
        do throws(HTTP2Error) {
            dc = try DeviceConnection(id: id, identity: identity, transport: t, logger: logger)
        } catch {
            t.close()
            return
        }
        dc.onReady = { c in
            self.metrics.deviceConnectionAccepted()
            c.connection.enableLiveness(intervalMs: self.config.idlePingMs)
            self.registry.add(c)
            self.enforceConnectionLimit(c.identity)
            self.closeAtExpiry(c)
            self.health.deviceConnected(hostname: c.identity.hostname)
            self.queue.deviceAvailable(hostname: c.identity.hostname)
            self.logger.notice("device connected from " + t.peer.description + " as " + identity.hostname, c.ctx)
        }
        dc.onStreamFreed = { c in self.queue.deviceAvailable(hostname: c.identity.hostname) }
        dc.onClose = { c in
            self.loop.cancel(c.expiryTimer)
            c.expiryTimer = nil
            self.metrics.deviceConnectionClosed(bytesIn: c.transport.bytesIn, bytesOut: c.transport.bytesOut)
            self.registry.remove(c)
            if self.registry.connections(hostname: c.identity.hostname).isEmpty {
                self.health.deviceGone(hostname: c.identity.hostname)
                self.queue.deviceGone(hostname: c.identity.hostname)
            }
            self.devices[c.id] = nil
            self.heapTrim.connectionChanged()
            self.checkDrained()
        }
        if let der = t.tls?.peerCertificateDER { dc.certificate = PresentedCertificate(der: der) }
        devices[id] = dc
        dc.start()
    }

    /// An EST client: one ESTConnection (at most `maxESTConnections` at once).
    private func startEST(_ t: Transport, id: Int, service: ESTService) {
        guard estConnections.count < Gateway.maxESTConnections else {
            logger.warning("EST connection from " + t.peer.description + " refused: " + String(Gateway.maxESTConnections)
                           + " EST connections open", LogContext(connection: id))
            t.onClose = nil
            t.close()
            return
        }
        let c = ESTConnection(id: id, transport: t, service: service, timeoutMs: config.requestTimeoutMs)
        estConnections[id] = c
        c.onClose = { self.estConnections[id] = nil }
        c.start()
    }

    /// SIGHUP: new settings, CA, CRL and certificates for the connections accepted
    /// from now on; the tunnels that are up stay up (but a device that the new
    /// allow-list excludes is closed). Listen addresses change only on restart.
    func reload(_ new: GatewayConfig) throws(ConfigError) {
        // The listener stays where it is until a restart: the secure default holds for it,
        // whatever the new file says about listen_public.
        if new.accessPolicy == nil && !new.publicAccessOpen && !Loopback.isLoopback(config.listenPublic.host) {
            throw ConfigError("the public listener stays on " + config.listenPublic.host + ":" + String(publicPort)
                              + " (not loopback) until a restart, and the new configuration has no access_policy;"
                              + " set access_policy = FILE, or public_access = open")
        }
        let newDeviceTLS: TLSContext?
        let newPublicTLS: TLSContext?
        do throws(OpenSSLError) {
            newDeviceTLS = new.plaintextDevices ? nil : try new.makeDeviceTLS()
            newPublicTLS = try new.publicTLS().map { c throws(OpenSSLError) in try TLSContext(c) }
        } catch {
            throw ConfigError(error.description)
        }
        if new.listenDevices != config.listenDevices || new.listenPublic != config.listenPublic
            || new.listenAdmin != config.listenAdmin || new.plaintextDevices != config.plaintextDevices
            || (new.publicTLS() == nil) != (config.publicTLS() == nil) {
            logger.warning("reload: listen addresses and TLS on/off change on restart only; keeping the current ones")
        }
        var applied = new
        applied.listenDevices = config.listenDevices
        applied.listenPublic = config.listenPublic
        applied.listenAdmin = config.listenAdmin
        applied.plaintextDevices = config.plaintextDevices
        deviceTLS = newDeviceTLS ?? (applied.plaintextDevices ? nil : deviceTLS)
        if (newPublicTLS == nil) == (publicTLS == nil) { publicTLS = newPublicTLS }
        let jwksSourceChanged = applied.jwtJWKSURL != config.jwtJWKSURL || applied.jwtJWKSCA != config.jwtJWKSCA
        let templateChanged = applied.hostnameTemplate != config.hostnameTemplate
        settings.value = applied
        if jwksSourceChanged { startJWKSFetcher() }  // before apply, which asks the URL again
        access.apply(applied)
        if let keys = applied.jwtJWKS { logKeys(keys, from: applied.jwtJWKSFile ?? "jwt_jwks") }
        logger.notice(applied.accessPolicy.map { "access policy " + (applied.accessPolicyFile ?? "") + ": " + String($0.ruleCount) + " rules" }
                      ?? "no access_policy")
        metrics.perDevice = applied.metricsPerDevice
        reservedNames = ReservedNames(config: applied)
        logger.level = applied.logLevel
        if applied.pkiDir == nil {
            est = nil
        } else if let est {
            est.reserved = reservedNames
            est.reload()
        } else {
            est = ESTService(settings: settings, logger: logger, reserved: reservedNames, now: { Int64(rh_wall_seconds()) })
        }
        crl.check()
        // Tunnels that are up are checked against the new rules: a device revoked by
        // the new CRL, signed by a CA no longer trusted, or outside the new allow-list
        // is cut now, not at its next dial.
        for device in registry.devices {
            for c in registry.connections(of: device) {
                if templateChanged, applied.hostnameTemplate.hostname(for: c.identity.name) != c.identity.hostname {
                    // Its hostname changed: it dials again and is routed (and named to the policy) by the new one.
                    logger.notice("reload: hostname_template gives " + c.identity.name + " another hostname; closing", c.ctx)
                    c.close()
                } else if let allow = applied.allowDevices, !allow.matches(c.identity.name) {
                    logger.notice("reload: " + c.identity.name + " is no longer in allow_devices; closing", c.ctx)
                    c.close()
                } else if c.transport.tls != nil,
                          let which = reservedNames.match(c.identity.name) ?? reservedNames.match(c.identity.hostname) {
                    logger.notice("reload: " + c.identity.name + " takes the gateway's reserved name " + which + "; closing", c.ctx)
                    c.close()
                } else if let tls = c.transport.tls, let ctx = deviceTLS, let why = tls.peerVerifyError(against: ctx) {
                    logger.notice("reload: " + c.identity.name + "'s certificate no longer verifies (" + why + "); closing", c.ctx)
                    c.close()
                }
            }
        }
        // A user whose certificate the new CRL revokes (or a CA no longer trusts) is cut now too.
        if let ctx = publicTLS {
            for (_, u) in users {
                guard let tls = u.transport.tls, tls.peerCommonName != nil, let why = tls.peerVerifyError(against: ctx) else { continue }
                logger.notice("reload: user certificate of " + (tls.peerCommonName ?? "?") + " from " + u.transport.peer.description
                              + " no longer verifies (" + why + "); closing")
                u.transport.close()
            }
        }
        health.stop()
        health.start()
    }

    /// A device holds at most `max_connections_per_device`: a rebooted device must
    /// never find its name "taken" by its own stale connections, so the oldest goes.
    private func enforceConnectionLimit(_ device: DeviceIdentity) {
        for old in registry.surplus(of: device, max: config.maxConnectionsPerDevice) {
            logger.notice("closing the oldest connection: over max_connections_per_device (" + String(config.maxConnectionsPerDevice) + ")", old.ctx)
            registry.remove(old)
            // ENHANCE_YOUR_CALM tells the agent this was no restart: it backs off
            // before dialing again instead of evicting the next connection at once.
            old.goAway(errorCode: 11)
        }
    }

    /// A connection lives no longer than its device's certificate (checked again at
    /// most every day, so a long validity needs no far-away timer).
    private func closeAtExpiry(_ c: DeviceConnection) {
        guard let left = c.transport.tls?.peerCertificateSecondsLeft else { return }
        if left <= 0 {
            logger.notice("device certificate expired; closing its connection", c.ctx)
            c.close()
            return
        }
        c.expiryTimer = loop.schedule(afterMilliseconds: min(left, 86_400) * 1000) {
            c.expiryTimer = nil
            if c.transport.state != .closed { self.closeAtExpiry(c) }
        }
    }

    /// Graceful stop: no new connections; GOAWAY on every reversed connection so its
    /// agent dials again (elsewhere) at once; `done` once they have all closed.
    func shutdown(done: @escaping () -> Void) {
        health.stop()
        heapTrim.stop()
        admin.stop()
        for fd in [deviceListener, publicListener] where fd >= 0 {
            loop.unregister(fd: fd)
            Socket.close(fd)
        }
        deviceListener = -1
        publicListener = -1
        onDrained = done
        for (_, dc) in devices { dc.goAway() }
        for (_, c) in estConnections { c.transport.close() }
        crl.stop()
        for (_, uc) in users { uc.goAway() }
        checkDrained()
    }

    private func checkDrained() {
        guard devices.isEmpty, users.isEmpty, let done = onDrained else { return }
        onDrained = nil
        done()
    }

    func userConnectionClosed(_ c: UserConnection) {
        guard users.removeValue(forKey: ObjectIdentifier(c)) != nil else { return }
        budget.remove(c.transport.peer.host)
        checkDrained()
    }

    /// The idle timeout for a user connection that becomes idle now: shorter under pressure.
    var userIdleTimeoutMs: Int { budget.idleTimeout(base: config.idleTimeoutMs) }

    /// Whether a new user connection from `peer` may have a descriptor: at the cap
    /// the oldest idle one makes room; else (or over the per-address cap) it is refused.
    private func admitUser(_ peer: SocketAddress) -> Bool {
        let shared = !config.trustedProxies.contains { $0.contains(peer.host) }
        var verdict = budget.verdict(peer.host, shared: shared)
        if verdict == .full, closeOldestIdleUser() { verdict = budget.verdict(peer.host, shared: shared) }
        if verdict == .admit {
            budget.add(peer.host)
            return true
        }
        refusedUsers += 1
        let now = loop.now
        if refusalLoggedAt.map({ now &- $0 >= 10_000_000_000 }) ?? true {
            logger.warning("refusing user connections (" + String(refusedUsers) + " since the last such line; latest from "
                           + peer.host + "): " + (verdict == .full ? "max_user_connections (" + String(budget.limit) + ") reached, none idle"
                                                  : "max_user_connections_per_address (" + String(budget.perAddress) + ") reached"))
            refusalLoggedAt = now
            refusedUsers = 0
        }
        metrics.userConnectionRefused()
        return false
    }

    /// A new connection on the device listener may start its handshake. When fewer than
    /// `ConnectionBudget.adminMargin` descriptors would be left, the connection
    /// handshaking the longest makes room (a real device finishes in milliseconds, and
    /// re-dials with backoff; a stranger that sends nothing is the oldest). Devices that
    /// are up are never closed for it, and there is no per-address share: many devices
    /// dial from one address behind CGNAT.
    private func makeRoomForDeviceHandshake() -> Bool {
        let inUse = ConnectionBudget.baseDescriptors + budget.total + devices.count + pendingDevices.count + estConnections.count
        guard fileLimit - inUse < ConnectionBudget.adminMargin else { return true }
        guard let oldest = pendingDevices.min(by: { $0.value.since < $1.value.since }) else { return true }
        pendingDevices[oldest.key] = nil
        oldest.value.transport.onClose = nil  // counted and logged here, once per burst
        oldest.value.transport.close()
        metrics.deviceConnectionRefused()
        evictedHandshakes += 1
        let now = loop.now
        if evictionLoggedAt.map({ now &- $0 >= 10_000_000_000 }) ?? true {
            logger.warning("device listener: descriptors short, " + String(pendingDevices.count + 1)
                           + " connections in their handshake; closed the oldest ("
                           + String(evictedHandshakes) + " since the last such line; latest from " + oldest.value.transport.peer.description + ")")
            evictionLoggedAt = now
            evictedHandshakes = 0
        }
        return true
    }

    /// Closes the user connection idle the longest (no request in progress, or none
    /// sent yet); false when none is idle.
    private func closeOldestIdleUser() -> Bool {
        var oldest: Transport?
        var since = UInt64.max
        for (_, u) in users {
            if let t = u.idleSince, t < since {
                since = t
                oldest = u.transport
            }
        }
        for (_, p) in pendingUsers where p.since < since {
            since = p.since
            oldest = p.transport
        }
        guard let oldest else { return false }
        oldest.close()
        return true
    }

    private func acceptUsers() {
        acceptPending(publicListener, tls: publicTLS, admit: admitUser) { t in
            let scheme = publicTLS == nil ? "http" : "https"
            // A TLS handshake and the first bytes within request_timeout_ms (cancelled at hand-off).
            let deadline = loop.schedule(afterMilliseconds: config.requestTimeoutMs) { t.close() }
            let key = ObjectIdentifier(t)
            pendingUsers[key] = (t, loop.now)
            t.onClose = { _ in
                self.loop.cancel(deadline)
                self.pendingUsers[key] = nil
                self.budget.remove(t.peer.host)  // closed before hand-off (startUser's objects take it over)
            }
            t.onOpen = {
                t.onOpen = nil
                if t.tls?.alpnProtocol == "h2" {
                    self.loop.cancel(deadline)
                    self.startUser(t, h2: true, scheme: scheme, first: [])
                    return
                }
                // Plain text: HTTP/2 with prior knowledge starts with the client magic.
                var sniffed: [UInt8] = []
                t.onData = { bytes in
                    sniffed += bytes
                    let n = min(sniffed.count, http2ClientMagic.count)
                    let isMagic = Array(sniffed[0..<n]) == Array(http2ClientMagic[0..<n])
                    if isMagic && sniffed.count < http2ClientMagic.count { return }
                    t.onData = nil
                    self.loop.cancel(deadline)
                    self.startUser(t, h2: isMagic && t.tls == nil, scheme: scheme, first: sniffed)
                }
            }
            t.start()
        }
    }

    private func startUser(_ t: Transport, h2: Bool, scheme: String, first: [UInt8]) {
        pendingUsers[ObjectIdentifier(t)] = nil
        if h2 {
            do throws(HTTP2Error) {
                let c = try PublicH2Connection(services: userServices, transport: t, scheme: scheme)
                users[ObjectIdentifier(c)] = c
                c.start(first: first)
            } catch {
                t.close()
            }
            return
        }
        let pc = PublicConnection(services: userServices, transport: t, scheme: scheme)
        users[ObjectIdentifier(pc)] = pc
        pc.start(first: first)
    }
}

/// A user's connection, HTTP/1.1 or HTTP/2, as the gateway's shutdown and its
/// descriptor budget see it.
protocol UserConnection: AnyObject {
    var transport: Transport { get }
    /// Since when (loop clock) it has had nothing to do; nil while a request is in progress.
    var idleSince: UInt64? { get }
    func goAway()
}

extension PublicConnection: UserConnection {}
extension PublicH2Connection: UserConnection {}
