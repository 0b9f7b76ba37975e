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
// WebSockets: an extended CONNECT (RFC 8441, `:protocol websocket`) becomes an
// HTTP/1.1 `Upgrade: websocket` request; when the local API answers 101, the
// gateway gets 200 and from then on the stream's DATA and the local socket's
// bytes are passed through unchanged, both ways, until either side ends.
import EventLoop
import TLS
import HTTP1
import HTTP2
import Wire

final class LocalExchange {
    private enum Phase { case connecting, sending, finished }

    let stream: Int32
    let server: ReversedServer
    let pool: LocalPool
    let timeoutMs: Int
    private var phase = Phase.connecting
    private var conn: Transport?
    private var reused = false
    private var parser = HTTP1ResponseParser()
    private var head: [UInt8] = []
    private var pendingBody: [UInt8] = []
    private var chunked = false
    private var requestEnded = false
    private var bodyBytesSent = 0
    private var responseStarted = false
    private var isHEAD = false
    /// The method is safe to send twice (RFC 9110 §9.2.2).
    private var idempotent = false
    private var headEndedStream = false
    private var timer: TimerID?
    /// Request bytes received but not yet acknowledged to the gateway.
    private var credit = FlowCredit()
    /// The chunked request body's last chunk has been written or queued.
    private var lastChunkQueued = false
    /// An extended CONNECT for a WebSocket.
    private var upgrade = false
    /// After the local API's 101: bytes pass through unchanged.
    private var tunneling = false
    /// One of the pool's `maxActive` places at the local API is ours.
    private var holdsLease = false

    init(stream: Int32, server: ReversedServer, pool: LocalPool, timeoutMs: Int) {
        self.stream = stream
        self.server = server
        self.pool = pool
        self.timeoutMs = timeoutMs
    }

    var ctx: LogContext { LogContext(device: server.device, connection: server.id, stream: stream) }

    func start(headers: HTTPHeaders, endStream: Bool) {
        guard let request = try? HTTPTranslation.http1Request(fromHTTP2: headers) else {
            server.reset(stream: stream, errorCode: 1)
            phase = .finished
            return
        }
        let method = request.method, path = request.target
        let proto = headers.first(":protocol")
        if method == "CONNECT" && !(proto.map(WebSocketUpgrade.isWebSocketProtocol) ?? false) {
            fail(status: 501, proto == nil ? "CONNECT is not supported" : "only the websocket protocol is supported")
            return
        }
        upgrade = proto != nil
        var out = request.headers
        requestEnded = endStream
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
        isHEAD = method == "HEAD"
        idempotent = !upgrade && HTTPMethod.isIdempotent(method)
        parser.expectResponse(toHEAD: isHEAD, upgrade: upgrade)
        head = HTTP1Writer.requestHead(HTTPRequestHead(method: upgrade ? "GET" : method, target: path, versionMinor: 1, headers: out))
        timer = server.transport.loop.schedule(afterMilliseconds: timeoutMs) {
            self.timer = nil
            self.fail(status: 504, "local API did not answer in time")
        }
        pool.acquire {
            self.holdsLease = true
            if self.phase == .finished {
                self.releaseLease()
            } else {
                self.open(allowReuse: true)
            }
        }
    }

    private func releaseLease() {
        guard holdsLease else { return }
        holdsLease = false
        pool.release()
    }

    private func open(allowReuse: Bool) {
        if allowReuse, let t = pool.takeIdle() {
            reused = true
            attach(t)
            connected()
            return
        }
        reused = false
        switch pool.connect() {
        case .failure(let e):
            fail(status: 502, "local API unreachable: " + e.description)
        case .success(let t):
            attach(t)
            t.onOpen = { self.connected() }
            t.start()
        }
    }

    private func attach(_ t: Transport) {
        conn = t
        t.onData = { bytes in self.responseBytes(Array(bytes)) }
        t.onClose = { reason in self.localClosed(reason) }
        t.onDrained = { self.settleCredit() }
    }

    private func connected() {
        guard phase == .connecting, let t = conn else { return }
        phase = .sending
        t.write(head)
        if !pendingBody.isEmpty {
            bodyBytesSent += pendingBody.count
            t.write(pendingBody)
            pendingBody = []
        }
        if requestEnded && chunked && !lastChunkQueued {
            lastChunkQueued = true
            t.write(HTTP1Writer.lastChunk())
        }
        settleCredit()
    }

    // MARK: Request body from the gateway

    func requestBody(_ bytes: [UInt8]) {
        credit.received(bytes.count)
        if phase != .finished && !bytes.isEmpty {
            send(chunked ? HTTP1Writer.chunk(bytes) : bytes)
        }
        settleCredit()
    }

    /// Writes request bytes to the local API, or keeps them until it is connected.
    private func send(_ bytes: [UInt8]) {
        if phase == .sending, let t = conn {
            bodyBytesSent += bytes.count
            t.write(bytes)
        } else {
            pendingBody += bytes
        }
    }

    /// Reopens the gateway's window for request bytes the local socket has taken.
    private func settleCredit() {
        let queued = phase == .sending ? (conn?.bufferedOutput ?? 0) : Int.max
        let n = credit.release(queued: queued, finished: phase == .finished)
        if n > 0 { server.consume(stream: stream, count: n) }
    }


    /// The gateway's side of the request ended, with its trailers (often none).
    func requestEnd(trailers: HTTPHeaders) {
        guard phase != .finished, !requestEnded else { return }
        requestEnded = true
        if tunneling {
            conn?.finishWriting()  // the gateway's side of the WebSocket is done
            return
        }
        if chunked && !lastChunkQueued {
            lastChunkQueued = true
            send(HTTP1Writer.lastChunk(trailers: trailers))
        }
    }

    // MARK: Response from the local API

    private func responseBytes(_ bytes: [UInt8]) {
        guard phase != .finished else { return }
        if tunneling {
            forward(bytes)
            return
        }
        do throws(HTTP1Error) {
            let events = try parser.feed(bytes)
            deliver(events)
        } catch {
            badResponse(error.description)
        }
    }

    private func deliver(_ events: [HTTP1Event<HTTPResponseHead>]) {
        for ev in events {
            guard phase != .finished else { return }
            switch ev {
            case .head(let h):
                responseStarted = true
                // local_timeout_ms bounds the time to answer, not a long download.
                server.transport.loop.cancel(timer)
                timer = nil
                if upgrade && h.status == 101 {
                    startTunnel(h)
                    return
                }
                if upgrade && h.status < 300 {
                    // A 2xx to an extended CONNECT means "tunnel open" (RFC 8441); a
                    // local API that ignored the upgrade must not look like that.
                    responseStarted = false
                    fail(status: 502, "the local API did not accept the WebSocket upgrade (answered " + String(h.status) + ")")
                    return
                }
                // The framing of this head, not of whatever the parser has read since.
                let framing = (try? HTTP1ResponseParser.framing(of: h, toHEAD: isHEAD)) ?? .untilClose
                headEndedStream = framing == .none
                server.respond(stream: stream, HTTPTranslation.http2Response(from: h), endStream: headEndedStream)
            case .body(let b):
                forward(b)
            case .end(let trailers):
                // A response complete before its request: the gateway is asked to stop
                // sending the rest, without error, once the response is out (RFC 9113 §8.1).
                let resetAfter = !requestEnded
                // Connection-specific fields are not allowed in HTTP/2 (RFC 9113 §8.2.2),
                // and framing fields mean nothing in a trailer section (RFC 9110 §6.5.1).
                var trailers = trailers
                trailers.removeHopByHop()
                trailers.remove("content-length")
                if headEndedStream {
                    if resetAfter { server.reset(stream: stream, errorCode: 0) }
                } else if trailers.isEmpty {
                    server.sendBody(stream: stream, [], endStream: true, resetAfter: resetAfter)
                } else {
                    server.sendTrailers(stream: stream, trailers, resetAfter: resetAfter)
                }
                // The parser's verdict covers every byte fed so far; the request must
                // also be all written (a server that answered early may take the rest
                // of the body for the next request).
                let written = requestEnded && (conn?.bufferedOutput ?? 1) == 0
                finishLocal(reusable: parser.isReusable && written && !upgrade)
            }
        }
    }

    private func localClosed(_ reason: CloseReason) {
        conn = nil
        guard phase != .finished else { return }
        if tunneling {
            // The local side of the WebSocket is gone: end the stream cleanly.
            server.sendBody(stream: stream, [], endStream: true)
            finishLocal(reusable: false)
            return
        }
        if !responseStarted && reused && bodyBytesSent == 0 && idempotent {
            // A kept-alive connection the local server had closed: try once on a new one.
            // Only a request safe to repeat: the server may have read this one before it
            // closed (it crashed, or restarted), and a POST must not run twice.
            phase = .connecting
            open(allowReuse: false)
            return
        }
        do throws(HTTP1Error) {
            deliver(try parser.feedEOF())
            if phase != .finished { badResponse("local API closed the connection: " + reason.description) }
        } catch {
            badResponse(error.description + " (" + reason.description + ")")
        }
    }

    /// Response body bytes (or WebSocket bytes) to the gateway, pausing the local
    /// socket while the stream's queue is full.
    private func forward(_ bytes: [UInt8]) {
        server.sendBody(stream: stream, bytes, endStream: false)
        if let t = conn, server.connection.pauseIfBacklogged(stream: stream, resume: { t.resumeReading(.backPressure) }) {
            t.pauseReading(.backPressure)
        }
    }

    /// The local API accepted the WebSocket: answer 200 (RFC 8441) and pass bytes through.
    private func startTunnel(_ h: HTTPResponseHead) {
        tunneling = true
        var out = HTTPHeaders()
        out.add(":status", "200")
        for name in WebSocketUpgrade.endToEndFields {
            if let v = h.headers.first(name) { out.add(name, v) }
        }
        server.respond(stream: stream, out, endStream: false)
        let early = parser.takeUnparsed()
        if !early.isEmpty { forward(early) }
    }

    private func badResponse(_ why: String) {
        if responseStarted {
            server.logger.warning("local response broken: " + why, ctx)
            server.reset(stream: stream, errorCode: 2)
            finishLocal(reusable: false)
        } else {
            fail(status: 502, why)
        }
    }

    /// Answers the gateway with an error status, or resets the stream if the answer started.
    private func fail(status: Int, _ why: String) {
        guard phase != .finished else { return }
        server.logger.warning(why, ctx)
        if responseStarted {
            server.reset(stream: stream, errorCode: 2)
        } else {
            let r = ShortResponse.error(status, why)
            server.respond(stream: stream, HTTPTranslation.http2Response(from: r.head), endStream: isHEAD)
            if !isHEAD { server.sendBody(stream: stream, r.body, endStream: true) }
        }
        finishLocal(reusable: false)
    }

    private func finishLocal(reusable: Bool) {
        phase = .finished
        settleCredit()
        defer { releaseLease() }
        server.transport.loop.cancel(timer)
        timer = nil
        guard let t = conn else { return }
        conn = nil
        if reusable { pool.release(t) } else { t.close() }
    }

    /// The stream ended on the gateway's side (done, or reset).
    func streamClosed(errorCode: UInt32) {
        if phase != .finished {
            phase = .finished
            settleCredit()
            server.transport.loop.cancel(timer)
            timer = nil
            conn?.close()
            conn = nil
            releaseLease()
        }
    }
}
