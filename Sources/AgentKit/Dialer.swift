// Dialer keeps one reversed connection to the gateway alive: it dials (DNS,
// TCP, TLS), hands the open connection to a ReversedServer, and after a close
// dials again -- at once after a clean close by the gateway, otherwise after an
// exponential backoff with full jitter. State changes are logged once, not once
// per retry.
import EventLoop
import HTTP2
import TLS
import Wire

public final class Dialer {
    public enum State { case idle, connecting, connected, waiting, stopped }

    public let slot: Int
    let config: AgentConfig
    let loop: EventLoop
    let tls: TLSContext?
    /// The certificate and key presented, when not the TLS context's own (the simulator).
    let identity: TLSIdentity?
    let pool: LocalPool
    let handler: LocalHandler?
    let logger: Logger
    let nextConnectionID: () -> Int
    public private(set) var state = State.idle
    private var backoff = Backoff()
    private var jitter: Jitter
    private var server: ReversedServer?
    /// Connections the gateway sent GOAWAY on, finishing their streams.
    private var retiring: [ReversedServer] = []
    private var transport: Transport?
    private var connectedAt: UInt64 = 0
    private var timer: TimerID?
    private var connectTimer: TimerID?
    private var resolution: Resolution?
    /// Why the last dial failed ("" once connected).
    public private(set) var lastFailure = ""
    public private(set) var dialCount = 0
    /// Connections that came up (were reversed).
    public private(set) var connectCount = 0
    /// Called on every change of `state`.
    public var onStateChange: ((State) -> Void)?

    init(slot: Int, config: AgentConfig, loop: EventLoop, tls: TLSContext?, identity: TLSIdentity? = nil,
         pool: LocalPool, handler: LocalHandler? = nil, logger: Logger, seed: UInt64, nextConnectionID: @escaping () -> Int) {
        self.slot = slot
        self.config = config
        self.loop = loop
        self.tls = tls
        self.identity = identity
        self.pool = pool
        self.handler = handler
        self.logger = logger
        self.nextConnectionID = nextConnectionID
        jitter = Jitter(seed: seed)
    }

    var ctx: LogContext { LogContext(device: config.name, connection: server?.id) }

    public func start() { dial() }

    private func set(_ s: State) {
        state = s
        onStateChange?(s)
    }

    private func dial() {
        guard state != .stopped else { return }
        dialCount += 1
        set(.connecting)
        // Resolved on every dial (the gateway's address may change), off the loop:
        // a dead DNS server must not stall the other connections.
        resolution = Resolution.start(loop: loop, config.gateway, timeoutMs: config.connectTimeoutMs) { result in
            self.resolution = nil
            switch result {
            case .failure(let e): self.failed(e.description)
            case .success(let addrs): self.connect(addrs, index: 0, previousError: "no address for " + self.config.gateway.host)
            }
        }
    }

    /// Tries `addrs[index...]` in turn (say an unreachable IPv6 address before a
    /// working IPv4 one); the dial fails when none of them connects.
    private func connect(_ addrs: [SocketAddress], index: Int, previousError: String) {
        guard state == .connecting else { return }
        guard index < addrs.count else {
            failed(previousError)
            return
        }
        let addr = addrs[index]
        let fd: Int32
        do throws(SocketError) { fd = try Socket.startConnect(addr) } catch {
            connect(addrs, index: index + 1, previousError: error.description)
            return
        }
        var conn: TLSConnection?
        if let tls {
            do throws(OpenSSLError) {
                conn = try TLSConnection(context: tls, serverName: config.serverName ?? config.gateway.host, identity: identity)
            } catch {
                Socket.close(fd)
                failed(error.description)
                return
            }
        }
        let t = Transport(loop: loop, fd: fd, peer: addr, tls: conn, connecting: true)
        transport = t
        // A black-holed SYN or a gateway that never finishes the handshake must not
        // hold this slot for the kernel's two minutes.
        connectTimer = loop.schedule(afterMilliseconds: config.connectTimeoutMs) {
            self.connectTimer = nil
            t.close(.unresponsive(milliseconds: self.config.connectTimeoutMs))
        }
        t.onOpen = { self.opened(t) }
        t.onClose = { reason in
            self.loop.cancel(self.connectTimer)
            self.connectTimer = nil
            self.transport = nil
            self.connect(addrs, index: index + 1, previousError: reason.description)
        }
        t.start()
    }

    private func opened(_ t: Transport) {
        if let tls = t.tls, tls.alpnProtocol != "h2" {
            // Without ALPN h2 the gateway is not speaking reverse HTTP/2 with us.
            t.onClose = nil
            t.close()
            loop.cancel(connectTimer)
            connectTimer = nil
            transport = nil
            failed("the gateway did not select ALPN h2")
            return
        }
        var settings = HTTP2Settings()
        settings.maxConcurrentStreams = UInt32(config.maxConcurrentStreams)
        let id = nextConnectionID()
        let s: ReversedServer
        do throws(HTTP2Error) {
            s = try ReversedServer(id: id, transport: t, local: pool, handler: handler, settings: settings, device: config.name,
                                   responseTimeoutMs: config.localTimeoutMs, tcpPorts: config.tcpPorts,
                                   connectTimeoutMs: config.connectTimeoutMs, logger: logger)
        } catch {
            t.close()
            return
        }
        server = s
        s.onReversed = {
            self.loop.cancel(self.connectTimer)
            self.connectTimer = nil
            self.connectedAt = self.loop.now
            self.lastFailure = ""
            self.connectCount += 1
            self.set(.connected)
            self.logger.notice("connected to " + self.config.gateway.description + " (" + (t.tls?.protocolVersion ?? "plaintext") + ")", self.ctx)
        }
        s.onGoaway = { code in
            // The gateway is going away (restart, rebalancing): the streams it still
            // covers finish on this connection while a replacement is dialed now. A
            // GOAWAY with an error (ENHANCE_YOUR_CALM: over the gateway's connection
            // limit) gets the backoff instead, so two sides never evict each other
            // in a loop.
            guard self.server === s, self.state != .stopped else { return }
            let delay = code == 0 ? 0 : self.backoff.nextDelayMs { self.jitter.next(upTo: $0) }
            self.logger.notice("gateway is going away (error " + String(code) + "); its streams finish on this connection, dialing again in "
                               + String(delay) + " ms", self.ctx)
            self.server = nil
            self.transport = nil
            self.retiring.append(s)
            self.set(.waiting)
            self.timer = self.loop.schedule(afterMilliseconds: delay) { self.dial() }
        }
        s.onClose = { reason in
            if self.server !== s {
                self.retiring.removeAll { $0 === s }
                if self.state == .stopped && self.server == nil && self.retiring.isEmpty { self.stopped() }
                return
            }
            self.loop.cancel(self.connectTimer)
            self.connectTimer = nil
            self.server = nil
            self.transport = nil
            self.closed(reason, wasReversed: s.isReversed)
        }
        s.start()
        s.connection.enableLiveness(intervalMs: config.idlePingMs)
    }

    private func closed(_ reason: CloseReason, wasReversed: Bool) {
        guard state != .stopped else {
            if retiring.isEmpty { stopped() }
            return
        }
        guard wasReversed else {
            failed(reason.description)
            return
        }
        let upMs = Int((loop.now - connectedAt) / 1_000_000)
        backoff.connectionEnded(upMs: upMs)
        var clean = false
        if case .peerClosed = reason { clean = true }
        // A gateway that closed a working connection cleanly (restart, GOAWAY) gets a
        // new dial at once; one that closes right after the reversal gets the backoff,
        // so a refusing gateway is never hammered.
        let delay = clean && upMs >= 1000 ? 0 : backoff.nextDelayMs { self.jitter.next(upTo: $0) }
        logger.notice("connection closed (" + reason.description + ") after " + String(upMs / 1000) + " s; dialing again in "
                      + String(delay) + " ms", ctx)
        set(.waiting)
        timer = loop.schedule(afterMilliseconds: delay) { self.dial() }
    }

    private func failed(_ reason: String) {
        guard state != .stopped else { return }
        server = nil
        let delay = backoff.nextDelayMs { self.jitter.next(upTo: $0) }
        if reason != lastFailure {
            logger.warning("dial " + config.gateway.description + " failed: " + reason + " (retrying with backoff)", ctx)
            lastFailure = reason
        } else {
            logger.debug("dial failed again: " + reason + "; next in " + String(delay) + " ms", ctx)
        }
        set(.waiting)
        timer = loop.schedule(afterMilliseconds: delay) { self.dial() }
    }

    /// Called once after `stop` when this dialer's connection is gone.
    public var onStopped: (() -> Void)?

    /// Runs `onStopped` once and drops it (the closure may hold this dialer).
    private func stopped() {
        let cb = onStopped
        onStopped = nil
        onStateChange = nil
        cb?()
    }

    /// GOAWAY, let the streams in flight finish, then close; no more dials.
    public func stop() {
        set(.stopped)
        loop.cancel(timer)
        timer = nil
        loop.cancel(connectTimer)
        connectTimer = nil
        resolution?.cancel()
        resolution = nil
        for r in retiring { r.shutdown() }
        if let s = server {
            s.shutdown()
        } else {
            transport?.close()
            transport = nil
            if retiring.isEmpty { stopped() }
        }
    }

    public var activeStreams: Int { server?.activeStreams ?? 0 }

    /// The simulator's hooks into the current connection (SimulatedFaults.swift);
    /// nil while there is none.
    public var faults: SimulatedFaults? { server.map { SimulatedFaults($0.connection) } }
}
