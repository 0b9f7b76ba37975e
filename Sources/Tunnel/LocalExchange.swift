// LocalExchange carries one HTTP/2 stream from the gateway to the local HTTP API
// as an HTTP/1.1 request, and the HTTP/1.1 response back as HEADERS and DATA.
// Failures before the response started become 502 (cannot reach or parse the
// local API) or 504 (no answer in time); after that, RST_STREAM.
import EventLoop
import HTTP1
import HTTP2

final class LocalExchange {
    private enum Phase { case connecting, sending, finished }

    /// Back-pressure marks: a stream's response queue above `highWater` pauses
    /// reading the local API until it is back at `lowWater`; request DATA is
    /// acknowledged (window reopened) only while the local socket's queue is at
    /// or below `lowWater`.
    static let highWater = 256 * 1024
    static let lowWater = 64 * 1024

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
    private var keepAlive = true
    private var isHEAD = false
    private var headEndedStream = false
    private var timer: TimerID?
    /// Request bytes received but not yet acknowledged to the gateway.
    private var owed = 0

    init(stream: Int32, server: ReversedServer, pool: LocalPool, timeoutMs: Int) {
        self.stream = stream
        self.server = server
        self.pool = pool
        self.timeoutMs = timeoutMs
    }

    var ctx: LogContext { LogContext(device: server.device, connection: server.id, stream: stream) }

    func start(headers: HTTPHeaders, endStream: Bool) {
        guard let method = headers.first(":method"), let path = headers.first(":path") else {
            server.reset(stream: stream, errorCode: 1)
            phase = .finished
            return
        }
        if method == "CONNECT" {
            fail(status: 501, "CONNECT is not supported")
            return
        }
        var out = HTTPHeaders()
        var cookies: [String] = []
        let authority = headers.first(":authority") ?? headers.first("host")
        if let authority { out.add("Host", authority) }
        for (name, value) in headers {
            if name.hasPrefix(":") || name == "host" { continue }
            if name == "cookie" { cookies.append(value); continue }
            out.add(name, value)
        }
        if !cookies.isEmpty { out.add("Cookie", cookies.joined(separator: "; ")) }
        out.removeHopByHop()
        requestEnded = endStream
        if !endStream && !out.contains("content-length") {
            chunked = true
            out.add("Transfer-Encoding", "chunked")
        }
        isHEAD = method == "HEAD"
        parser.expectResponse(toHEAD: isHEAD)
        head = HTTP1Writer.requestHead(HTTPRequestHead(method: method, target: path, versionMinor: 1, headers: out))
        timer = server.transport.loop.schedule(afterMilliseconds: timeoutMs) {
            self.timer = nil
            self.fail(status: 504, "local API did not answer in time")
        }
        open(allowReuse: true)
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
        if requestEnded && chunked { t.write(HTTP1Writer.lastChunk()) }
        settleCredit()
    }

    // MARK: Request body from the gateway

    func requestBody(_ bytes: [UInt8]) {
        owed += bytes.count
        guard phase != .finished, !bytes.isEmpty else {
            settleCredit()
            return
        }
        let framed = chunked ? HTTP1Writer.chunk(bytes) : bytes
        if phase == .sending, let t = conn {
            bodyBytesSent += framed.count
            t.write(framed)
        } else {
            pendingBody += framed
        }
        settleCredit()
    }

    /// Reopens the gateway's window for request bytes the local socket has taken.
    private func settleCredit() {
        guard owed > 0 else { return }
        if phase == .finished || (phase == .sending && (conn?.bufferedOutput ?? 0) <= LocalExchange.lowWater) {
            server.consume(stream: stream, count: owed)
            owed = 0
        }
    }

    func resumeLocalReads() { conn?.resumeReading() }

    func requestTrailers(_ trailers: HTTPHeaders) {
        guard phase != .finished else { return }
        requestEnded = true
        guard chunked else { return }
        let last = HTTP1Writer.lastChunk(trailers: trailers)
        if phase == .sending, let t = conn { t.write(last) } else { pendingBody += last }
    }

    func requestEnd() {
        guard phase != .finished, !requestEnded else { return }
        requestEnded = true
        if chunked {
            if phase == .sending, let t = conn { t.write(HTTP1Writer.lastChunk()) } else { pendingBody += HTTP1Writer.lastChunk() }
        }
    }

    // MARK: Response from the local API

    private func responseBytes(_ bytes: [UInt8]) {
        guard phase != .finished else { return }
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
                var headers = h.headers
                if headers.containsToken("connection", "close") || h.versionMinor == 0 { keepAlive = false }
                // The framing of this head, not of whatever the parser has read since.
                let framing = (try? HTTP1ResponseParser.framing(of: h, toHEAD: isHEAD)) ?? .untilClose
                if framing == .untilClose { keepAlive = false }
                headers.removeHopByHop()
                var out = HTTPHeaders()
                out.add(":status", String(h.status))
                for (n, v) in headers { out.add(n, v) }
                headEndedStream = framing == .none
                server.respond(stream: stream, out, endStream: headEndedStream)
            case .body(let b):
                server.sendBody(stream: stream, b, endStream: false)
                if server.session.pendingBody(stream: stream) > LocalExchange.highWater, let t = conn {
                    t.pauseReading()
                    server.pauseUntilDrained(self)
                }
            case .end(let trailers):
                if headEndedStream {
                    // HEADERS already carried END_STREAM.
                } else if trailers.isEmpty {
                    server.sendBody(stream: stream, [], endStream: true)
                } else {
                    server.sendTrailers(stream: stream, trailers)
                }
                finishLocal(reusable: keepAlive && requestEnded)
            }
        }
    }

    private func localClosed(_ reason: CloseReason) {
        conn = nil
        guard phase != .finished else { return }
        if !responseStarted && reused && bodyBytesSent == 0 {
            // A kept-alive connection the local server had closed: try once on a new one.
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
            let body = Array((why + "\n").utf8)
            let h = HTTPHeaders([(":status", String(status)), ("content-type", "text/plain"),
                                 ("content-length", String(body.count))])
            server.respond(stream: stream, h, endStream: false)
            server.sendBody(stream: stream, body, endStream: true)
        }
        finishLocal(reusable: false)
    }

    private func finishLocal(reusable: Bool) {
        phase = .finished
        settleCredit()
        server.transport.loop.cancel(timer)
        timer = nil
        guard let t = conn else { return }
        conn = nil
        if reusable && !parser.inMessage { pool.release(t) } else { t.close() }
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
        }
    }
}
