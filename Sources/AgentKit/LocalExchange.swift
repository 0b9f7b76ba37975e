// LocalExchange carries one HTTP/2 stream from the gateway to the local HTTP API
// as an HTTP/1.1 request, and the HTTP/1.1 response back as HEADERS and DATA.
// Failures before the response started become 502 (cannot reach or parse the
// local API) or 504 (no answer in time); after that, RST_STREAM.
//
// The local connection goes back to the pool only when the parser says the
// response ended cleanly with nothing beyond it (`isReusable`), the whole
// request was written, and no upgrade was asked; the pool checks the socket
// again when it lends it out. Anything else closes it: the next request on it
// may be another user's.
//
// What happens when is decided by LocalExchangeState (events in, actions out,
// tested without sockets); this class only carries the actions out.
//
// WebSockets: an extended CONNECT (RFC 8441, `:protocol websocket`) becomes an
// HTTP/1.1 `Upgrade: websocket` request; when the local API answers 101, the
// gateway gets 200 and from then on the stream's DATA and the local socket's
// bytes are passed through unchanged, both ways, until either side ends.
//
// TCP: a CONNECT without `:protocol` (RFC 9113 §8.5) to `127.0.0.1:PORT` or
// `localhost:PORT`, PORT in tcp_ports, opens a connection to that port (no pool
// place, connect_timeout_ms) and passes bytes through the same tunnel state,
// with a half-close carried each way; 400 for another authority, 403 for a port
// not listed, 502 when the port does not accept.
import EventLoop
import TLS
import HTTP1
import HTTP2
import Wire

final class LocalExchange {
    let stream: Int32
    let server: ReversedServer
    let pool: LocalPool
    let timeoutMs: Int
    /// A CONNECT to a local TCP port: its port once allowed (0 before, or refused).
    private var tcpPort = 0
    private var isTCP = false
    private var machine = LocalExchangeState()
    private var conn: Transport?
    /// A new connection being made for this request (resolving, connecting).
    private var dial: LocalDial?
    private var parser = HTTP1ResponseParser()
    private var timer: TimerID?
    /// Request bytes received but not yet acknowledged to the gateway.
    private var credit = FlowCredit()
    /// The event being handled and those that arrived while its actions were
    /// carried out, handled in order (never one inside another).
    private var inbox: [LocalExchangeState.Event] = []

    init(stream: Int32, server: ReversedServer, pool: LocalPool, timeoutMs: Int) {
        self.stream = stream
        self.server = server
        self.pool = pool
        self.timeoutMs = timeoutMs
    }

    var ctx: LogContext { LogContext(device: server.device, connection: server.id, stream: stream) }
    private var isHEAD: Bool { machine.request.kind == .head }
    private var upgrade: Bool { machine.request.kind == .webSocket }

    func start(headers: HTTPHeaders, endStream: Bool) {
        if headers.first(":method") == "CONNECT" && headers.first(":protocol") == nil {
            startTCP(headers, endStream: endStream)
            return
        }
        guard let request = try? HTTPTranslation.http1Request(fromHTTP2: headers) else {
            handle(.requestMalformed)
            return
        }
        let method = request.method, path = request.target
        let proto = headers.first(":protocol")
        if method == "CONNECT" && !(proto.map(WebSocketUpgrade.isWebSocketProtocol) ?? false) {
            handle(.requestRefused(status: 501, why: proto == nil ? "CONNECT is not supported" : "only the websocket protocol is supported"))
            return
        }
        let upgrade = proto != nil
        var out = request.headers
        var chunked = false
        if upgrade {
            // The HTTP/1.1 handshake: a fresh key per hop; version, subprotocols and
            // extensions from the gateway's request.
            out.remove("sec-websocket-key")
            if !out.contains("sec-websocket-version") { out.add("Sec-WebSocket-Version", "13") }
            out.add("Upgrade", "websocket")
            out.add("Connection", "Upgrade")
            out.add("Sec-WebSocket-Key", base64Encode(randomBytes(16)))
        } else if !endStream && !out.contains("content-length") {
            chunked = true
            out.add("Transfer-Encoding", "chunked")
        }
        let isHEAD = method == "HEAD"
        let idempotent = !upgrade && HTTPMethod.isIdempotent(method)
        let head = HTTP1Writer.requestHead(HTTPRequestHead(method: upgrade ? "GET" : method, target: path, versionMinor: 1, headers: out))
        let kind: LocalExchangeState.Kind = upgrade ? .webSocket : isHEAD ? .head : idempotent ? .idempotent : .nonIdempotent
        handle(.requestHead(LocalExchangeState.Request(kind: kind, chunked: chunked, head: head), endStream: endStream))
    }

    /// A CONNECT to `127.0.0.1:PORT` or `localhost:PORT` (localhost is 127.0.0.1),
    /// PORT in `tcp_ports`; nothing else is ever connected to.
    private func startTCP(_ headers: HTTPHeaders, endStream: Bool) {
        isTCP = true
        let authority = headers.first(":authority") ?? ""
        guard let target = HostPort(parsing: authority), target.host == "127.0.0.1" || target.host == "localhost" else {
            handle(.requestRefused(status: 400, why: "CONNECT must name 127.0.0.1:PORT or localhost:PORT, not '" + authority + "'"))
            return
        }
        guard server.tcpPorts.contains(target.port) else {
            handle(.requestRefused(status: 403, why: "CONNECT to port " + String(target.port) + ": not in tcp_ports"))
            return
        }
        tcpPort = target.port
        handle(.requestHead(LocalExchangeState.Request(kind: .tcp, chunked: false, head: []), endStream: endStream))
    }

    // MARK: Events in, actions out

    /// Feeds `event` to the machine and carries out its actions; events that
    /// arrive meanwhile (from the pool, the parser, a callback) wait their turn.
    private func handle(_ event: LocalExchangeState.Event) {
        inbox.append(event)
        guard inbox.count == 1 else { return }  // handled by the loop below, further up the stack
        var index = 0
        while index < inbox.count {
            let next = inbox[index]
            index += 1
            for action in machine.receive(next) { perform(action) }
        }
        inbox.removeAll(keepingCapacity: true)
        settleCredit()
    }

    @inline(never)  // see LocalExchangeState.receive
    private func perform(_ action: LocalExchangeState.Action) {
        switch action {
        case .armTimeout:
            timer = server.transport.loop.schedule(afterMilliseconds: isTCP ? server.connectTimeoutMs : timeoutMs) {
                self.timer = nil
                self.handle(.timedOut)
            }
        case .cancelTimeout:
            server.transport.loop.cancel(timer)
            timer = nil
        case .acquireLease:
            pool.acquire { self.handle(.leaseGranted) }
        case .releaseLease:
            pool.release()
        case .openLocal(let reuse):
            open(allowReuse: reuse)
        case .connectTCP:
            dial = pool.connect(localPort: tcpPort) { result in
                self.dial = nil
                switch result {
                case .failure(let e):
                    self.handle(.localFailed(e.description))
                case .success(let t):
                    self.attach(t)
                    t.onPeerFinished = { self.handle(.localFinished) }  // a half-close, not the end
                    self.server.logger.debug("CONNECT: tunnel to " + t.peer.description + " open", self.ctx)
                    self.handle(.localConnected(reused: false))
                }
            }
        case .writeLocal(let bytes):
            conn?.write(bytes)
        case .finishWritingLocal:
            conn?.finishWriting()
        case .parse(let bytes):
            do throws(HTTP1Error) {
                deliver(try parser.feed(bytes))
            } catch {
                handle(.responseBroken(error.description))
            }
        case .parseEOF(let why):
            do throws(HTTP1Error) {
                deliver(try parser.feedEOF())
                handle(.responseBroken("local API closed the connection: " + why))
            } catch {
                handle(.responseBroken(error.description + " (" + why + ")"))
            }
        case .pauseLocal(let why):
            conn?.pauseReading(why)
        case .resumeLocal(let why):
            conn?.resumeReading(why)
        case .releaseLocal:
            if let t = conn {
                conn = nil
                pool.release(t)
            }
        case .closeLocalAfterFlush:
            if let t = conn {
                conn = nil
                t.closeAfterFlush()
            }
        case .closeLocal:
            dial?.cancel()
            dial = nil
            if let t = conn {
                conn = nil
                t.close()
            }
        case .respond(let h, let endStream):
            respond(h, endStream: endStream)
        case .openTunnel(let h):
            startTunnel(h)
        case .forward(let bytes):
            forward(bytes)
        case .endResponse(let resetAfter):
            server.sendBody(stream: stream, [], endStream: true, resetAfter: resetAfter)
        case .sendTrailers(let trailers, let resetAfter):
            server.sendTrailers(stream: stream, trailers, resetAfter: resetAfter)
        case .resetStream(let code):
            server.reset(stream: stream, errorCode: code)
        case .fail(let status, let why):
            fail(status: status, why)
        case .warn(let why):
            server.logger.warning(why, ctx)
        }
    }

    // MARK: The local connection

    /// A kept-alive connection, or a new one; each with a parser of its own.
    private func open(allowReuse: Bool) {
        parser = HTTP1ResponseParser()
        parser.expectResponse(toHEAD: isHEAD, upgrade: upgrade)
        if allowReuse, let t = pool.takeIdle() {
            attach(t)
            handle(.localConnected(reused: true))
            return
        }
        dial = pool.connect { result in
            self.dial = nil
            switch result {
            case .failure(let e):
                self.handle(.localFailed(e.description))
            case .success(let t):
                self.attach(t)
                self.handle(.localConnected(reused: false))
            }
        }
    }

    private func attach(_ t: Transport) {
        conn = t
        t.onData = { bytes in self.handle(.localData(Array(bytes))) }
        t.onClose = { reason in
            guard self.conn === t else { return }
            self.conn = nil
            self.handle(.localClosed(reason.description))
        }
        t.onDrained = { self.settleCredit() }
    }

    // MARK: Request body from the gateway

    func requestBody(_ bytes: [UInt8]) {
        credit.received(bytes.count)
        handle(.requestBody(bytes))
    }

    /// Reopens the gateway's window for request bytes the local socket has taken.
    private func settleCredit() {
        let queued = machine.isConnected ? (conn?.bufferedOutput ?? 0) : Int.max
        let n = credit.release(queued: queued, finished: machine.isFinished)
        if n > 0 { server.consume(stream: stream, count: n) }
    }

    /// The gateway's side of the request ended, with its trailers (often none).
    func requestEnd(trailers: HTTPHeaders) {
        handle(.requestEnd(trailers: trailers))
    }

    // MARK: Response from the local API

    private func deliver(_ events: [HTTP1Event<HTTPResponseHead>]) {
        for ev in events {
            switch ev {
            case .head(let h):
                handle(.responseHead(h))
            case .body(let b):
                handle(.responseBody(b))
            case .end(let trailers):
                // Connection-specific fields are not allowed in HTTP/2 (RFC 9113 §8.2.2),
                // and framing fields mean nothing in a trailer section (RFC 9110 §6.5.1).
                var trailers = trailers
                trailers.removeHopByHop()
                trailers.remove("content-length")
                // Reusable by the parser's verdict, with the request all written.
                handle(.responseEnd(trailers: trailers, reusable: parser.isReusable && (conn?.bufferedOutput ?? 1) == 0))
            }
        }
    }

    /// The local API's head as the gateway's HEADERS.
    private func respond(_ h: HTTPResponseHead, endStream: Bool) {
        server.respond(stream: stream, HTTPTranslation.http2Response(from: h), endStream: endStream)
    }

    /// Response body bytes (or WebSocket bytes) to the gateway, pausing the local
    /// socket while the stream's queue is full.
    private func forward(_ bytes: [UInt8]) {
        server.sendBody(stream: stream, bytes, endStream: false)
        if conn != nil, server.connection.pauseIfBacklogged(stream: stream, resume: { self.handle(.gatewayCaughtUp) }) {
            handle(.gatewayBacklogged)
        }
    }

    /// The local API accepted the WebSocket: answer 200 (RFC 8441) and pass bytes through.
    private func startTunnel(_ h: HTTPResponseHead) {
        var out = HTTPHeaders()
        out.add(":status", "200")
        for name in WebSocketUpgrade.endToEndFields {
            if let v = h.headers.first(name) { out.add(name, v) }
        }
        server.respond(stream: stream, out, endStream: false)
        let early = parser.takeUnparsed()
        if !early.isEmpty { handle(.localData(early)) }
    }

    /// Answers the gateway with an error status (the machine resets a stream whose answer started).
    private func fail(status: Int, _ why: String) {
        server.logger.warning(why, ctx)
        if isTCP {
            // A refused CONNECT: the status alone (the gateway words its own answer) and
            // END_STREAM, then RST_STREAM(NO_ERROR): nothing more is wanted (RFC 9113
            // §8.1). The END_STREAM rides an empty DATA frame: nghttp2 drops HEADERS
            // that a reset overtakes, and queues `resetAfter` behind the last DATA.
            server.respond(stream: stream, HTTPHeaders([(":status", String(status))]), endStream: false)
            server.sendBody(stream: stream, [], endStream: true, resetAfter: true)
            return
        }
        let r = ShortResponse.error(status, why)
        server.respond(stream: stream, HTTPTranslation.http2Response(from: r.head), endStream: isHEAD)
        if !isHEAD { server.sendBody(stream: stream, r.body, endStream: true) }
    }

    /// The stream ended on the gateway's side (done, or reset).
    func streamClosed(errorCode: UInt32) {
        handle(.streamClosed)
    }
}
