// JWKSFetcher gets the JWT signing keys from `jwt_jwks_url`: one HTTPS GET on
// the gateway's loop, built from the engine's own parts (Resolution, Transport,
// TLSConnection in the client role, HTTP1Writer, HTTP1ResponseParser). The
// server's certificate is verified against the system bundle (or `jwt_jwks_ca`)
// and its name checked; plain http:// is allowed to a loopback address only.
//
// Bounded: one request per connection (`Connection: close`), status 200 only
// (a redirect is an error, not followed), body at most 1 MiB whatever its
// framing, the whole exchange (name lookup included) within 10 s, and at most
// one fetch a minute (an unknown `kid` from a stranger must not make the gateway
// hammer the identity provider). Failures are logged once per streak.
import FleetAccess
import EventLoop
import HTTP1
import TLS
import ConfigFormat
import Wire

struct FetchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

final class JWKSFetcher {
    static let systemBundle = "/etc/ssl/certs/ca-certificates.crt"
    static let maxBodyBytes = 1 << 20

    let url: String
    private let loop: EventLoop
    private let logger: Logger
    private let endpoint: HostPort
    private let hostField: String
    private let target: String
    private let tls: TLSContext?
    private let timeoutMs: Int
    private let minIntervalMs: Int

    /// When the last fetch started (monotonic ns); nil before the first.
    private var lastStart: UInt64?
    /// Callers waiting for the fetch in progress; nil when none runs.
    private var waiters: [(Result<[UInt8], FetchError>) -> Void]?
    private var resolution: Resolution?
    private var transport: Transport?
    private var deadline: TimerID?
    private var parser = HTTP1ResponseParser()
    private var body: [UInt8] = []
    /// The last fetch failed (the streak's first failure was logged at warning level,
    /// the others at debug; a success ends the streak with a notice).
    private(set) var failing = false
    /// Connections opened (the tests count them).
    private(set) var connections = 0

    /// `timeoutMs` and `minIntervalMs` are the tests' knobs; the gateway uses the defaults.
    init(loop: EventLoop, url: String, caFile: String?, logger: Logger,
         timeoutMs: Int = 10_000, minIntervalMs: Int = 60_000) throws(ConfigError) {
        let u = try JWKSURL(url)
        self.url = url
        self.loop = loop
        self.logger = logger
        self.timeoutMs = timeoutMs
        self.minIntervalMs = minIntervalMs
        endpoint = HostPort(host: u.host, port: u.port)
        hostField = u.hostField
        target = u.target
        if u.https {
            var c = TLSConfiguration(role: .client)
            c.trustFile = caFile ?? JWKSFetcher.systemBundle
            c.minimumVersion = .tls12
            do throws(OpenSSLError) { tls = try TLSContext(c) } catch {
                throw ConfigError("jwt_jwks_url: cannot use the CA file " + (caFile ?? JWKSFetcher.systemBundle)
                                  + " (set jwt_jwks_ca = FILE): " + error.description)
            }
        } else {
            tls = nil
        }
    }

    var isRunning: Bool { waiters != nil }

    /// Starts a fetch unless one is running (then `done` waits for it) or one started
    /// less than a minute ago (`force` skips that wait); `done` runs once, on the loop,
    /// never inside this call.
    func fetch(force: Bool = false, _ done: @escaping (Result<[UInt8], FetchError>) -> Void) {
        if waiters != nil {
            waiters?.append(done)
            return
        }
        if !force, let last = lastStart, loop.now &- last < Duration.ms(minIntervalMs) {
            let waitS = (Duration.ms(minIntervalMs) - (loop.now &- last)) / 1_000_000_000 + 1
            loop.execute { done(.failure(FetchError("not fetched: the last fetch was less than "
                                                   + String(self.minIntervalMs / 1000) + " s ago (next in " + String(waitS) + " s)"))) }
            return
        }
        lastStart = loop.now
        waiters = [done]
        body = []
        parser = HTTP1ResponseParser(limits: HTTP1Limits(maxHeadBytes: 16384))
        parser.expectResponse(toHEAD: false)
        deadline = loop.schedule(afterMilliseconds: timeoutMs) {
            self.deadline = nil
            self.finish(.failure(FetchError("no complete answer within " + String(self.timeoutMs) + " ms")))
        }
        resolution = Resolution.start(loop: loop, endpoint, timeoutMs: timeoutMs) { result in
            self.resolution = nil
            switch result {
            case .failure(let e): self.finish(.failure(FetchError(e.description)))
            case .success(let addrs): self.connect(addrs, index: 0, previousError: "no address for " + self.endpoint.host)
            }
        }
    }

    /// Tries the addresses in turn until one connects; a failure after that ends the fetch.
    private func connect(_ addrs: [SocketAddress], index: Int, previousError: String) {
        guard waiters != nil else { return }
        guard index < addrs.count else { return finish(.failure(FetchError(previousError))) }
        let addr = addrs[index]
        // http:// only to loopback: a name (say localhost) must resolve there too.
        if tls == nil && !Loopback.isLoopback(addr.host) {
            return connect(addrs, index: index + 1, previousError: endpoint.host + " resolves to " + addr.host
                           + ", not a loopback address (plain http is allowed to loopback only)")
        }
        let fd: Int32
        do throws(SocketError) { fd = try Socket.startConnect(addr) } catch {
            return connect(addrs, index: index + 1, previousError: error.description)
        }
        var conn: TLSConnection?
        if let tls {
            do throws(OpenSSLError) { conn = try TLSConnection(context: tls, serverName: endpoint.host) } catch {
                Socket.close(fd)
                return finish(.failure(FetchError(error.description)))
            }
        }
        connections += 1
        let t = Transport(loop: loop, fd: fd, peer: addr, tls: conn, connecting: true)
        transport = t
        var opened = false
        t.onOpen = {
            opened = true
            self.send(on: t)
        }
        t.onData = { bytes in self.received(Array(bytes)) }
        t.onClose = { reason in
            self.transport = nil
            if !opened { return self.connect(addrs, index: index + 1, previousError: reason.description) }
            self.ended(reason)
        }
        t.start()
    }

    private func send(on t: Transport) {
        var h = HTTPHeaders()
        h.add("Host", hostField)
        h.add("Accept", "application/jwk-set+json, application/json")
        h.add("User-Agent", "fleet-gateway/" + reverseHTTPVersion)
        h.add("Connection", "close")
        t.write(HTTP1Writer.requestHead(HTTPRequestHead(method: "GET", target: target, headers: h)))
    }

    private func received(_ bytes: [UInt8]) {
        do throws(HTTP1Error) {
            handle(try parser.feed(bytes))
        } catch {
            finish(.failure(FetchError("bad answer: " + error.description)))
        }
    }

    /// The server closed: a close-delimited body ends here; anything else is truncated.
    private func ended(_ reason: CloseReason) {
        guard waiters != nil else { return }
        if case .peerClosed = reason {
            do throws(HTTP1Error) { handle(try parser.feedEOF()) } catch {
                return finish(.failure(FetchError("bad answer: " + error.description)))
            }
        }
        finish(.failure(FetchError("connection ended before a complete answer (" + reason.description + ")")))
    }

    private func handle(_ events: [HTTP1Event<HTTPResponseHead>]) {
        for ev in events {
            guard waiters != nil else { return }
            switch ev {
            case .head(let h):
                guard h.status == 200 else {
                    let redirect = (300...399).contains(h.status)
                        ? " (redirects are not followed: set jwt_jwks_url to " + (h.headers.first("location") ?? "the final address") + ")" : ""
                    return finish(.failure(FetchError("HTTP status " + String(h.status) + redirect)))
                }
                if case .contentLength(let n) = parser.framing, n > JWKSFetcher.maxBodyBytes {
                    return finish(.failure(FetchError("body of " + String(n) + " bytes is over the limit of "
                                                      + String(JWKSFetcher.maxBodyBytes))))
                }
            case .body(let bytes):
                guard body.count + bytes.count <= JWKSFetcher.maxBodyBytes else {
                    return finish(.failure(FetchError("body over the limit of " + String(JWKSFetcher.maxBodyBytes) + " bytes")))
                }
                body += bytes
            case .end:
                return finish(.success(body))
            }
        }
    }

    /// Stops a fetch in progress (a reload replaced this fetcher): its callers get an
    /// error, nothing is logged.
    func cancel() {
        finish(.failure(FetchError("cancelled")), quiet: true)
    }

    private func finish(_ result: Result<[UInt8], FetchError>, quiet: Bool = false) {
        guard let callbacks = waiters else { return }
        waiters = nil
        loop.cancel(deadline)
        deadline = nil
        resolution?.cancel()
        resolution = nil
        if let t = transport {
            transport = nil
            t.onClose = nil
            t.close()
        }
        let fetched = body
        body = []
        switch result {
        case _ where quiet: break
        case .success:
            if failing { logger.notice("JWKS fetch from " + url + " works again (" + String(fetched.count) + " bytes)") }
            failing = false
        case .failure(let e):
            if !failing {
                logger.warning("JWKS fetch from " + url + " failed: " + e.description + " (keeping the keys we have; "
                               + "further failures are logged at debug level until one succeeds)")
            } else {
                logger.debug("JWKS fetch from " + url + " failed again: " + e.description)
            }
            failing = true
        }
        for cb in callbacks { loop.execute { cb(result) } }
    }
}
