// PublicConnection is one user's HTTP/1.1 connection to the public listener. It
// parses requests (strictly: see HTTP1RequestParser), runs them one at a time
// through an Exchange, and writes the responses back in order. Pipelined
// requests wait in the parser's output until the current response is done.
import EventLoop
import HTTP1
import Tunnel

final class PublicConnection {
    let gateway: Gateway
    let transport: Transport
    let scheme: String
    private var parser: HTTP1RequestParser
    private var queued: [HTTP1Event<HTTPRequestHead>] = []
    private var current: Exchange?
    private var requestDone = true
    private var responseDone = true
    private var keepAlive = true
    private var chunkedResponse = false
    private var closeDelimited = false
    private var noResponseBody = false
    private var closing = false
    private var goingAway = false

    init(gateway: Gateway, transport: Transport, scheme: String) {
        self.gateway = gateway
        self.transport = transport
        self.scheme = scheme
        parser = HTTP1RequestParser(limits: HTTP1Limits(maxHeadBytes: gateway.config.maxHeadBytes))
    }

    func start() {
        transport.onData = { bytes in self.receive(Array(bytes)) }
        transport.onDrained = { self.current?.userDrained() }
        transport.onClose = { _ in self.closed() }
    }

    private func receive(_ bytes: [UInt8]) {
        guard !closing else { return }
        do throws(HTTP1Error) {
            queued += try parser.feed(bytes)
        } catch {
            // Anything already queued belongs to requests we will not answer now.
            queued.removeAll()
            if current == nil || responseDone {
                respondError(error.status, error.description, close: true)
            } else {
                abort("malformed request: " + error.description)
            }
            return
        }
        process()
    }

    /// Feeds queued parser events to the current exchange, starting the next one when
    /// the previous response is complete.
    private func process() {
        while !queued.isEmpty && !closing {
            let ev = queued[0]
            switch ev {
            case .head(let head):
                guard current == nil && responseDone else { return }  // wait for the current response
                queued.removeFirst()
                begin(head)
            case .body(let bytes):
                queued.removeFirst()
                current?.userBody(bytes)
            case .end:
                queued.removeFirst()
                requestDone = true
                current?.userEnd()
                if responseDone { current = nil }
            }
        }
    }

    private func begin(_ head: HTTPRequestHead) {
        requestDone = false
        responseDone = false
        keepAlive = !goingAway && (head.versionMinor == 1 ? !head.headers.containsToken("connection", "close")
                                                          : head.headers.containsToken("connection", "keep-alive"))
        let authority = HostRouting.absoluteAuthority(head.target) ?? head.headers.first("host") ?? ""
        guard let host = HostRouting.routingKey(authority) else {
            respondError(400, "the request names no valid device host ('" + authority + "')", close: true)
            return
        }
        let ex = Exchange(client: self, request: head, authority: authority, hostname: host)
        current = ex
        let hasBody = ((try? HTTP1RequestParser.framing(of: head)) ?? .none) != .none
        ex.start(requestHasBody: hasBody)
    }

    // MARK: Response writing (called by Exchange)

    func writeHead(_ head: HTTPResponseHead, noBody: Bool) {
        var h = head
        noResponseBody = noBody
        chunkedResponse = false
        closeDelimited = false
        if !noBody && !h.headers.contains("content-length") {
            if requestVersionIs11 {
                chunkedResponse = true
                h.headers.add("Transfer-Encoding", "chunked")
            } else {
                closeDelimited = true
                keepAlive = false
            }
        }
        if !keepAlive { h.headers.add("Connection", "close") }
        h.reason = HTTP1Writer.reasonPhrase(h.status)
        transport.write(HTTP1Writer.responseHead(h))
    }

    private var requestVersionIs11: Bool { current?.request.versionMinor == 1 }

    func writeBody(_ bytes: [UInt8]) {
        guard !noResponseBody, !bytes.isEmpty else { return }
        transport.write(chunkedResponse ? HTTP1Writer.chunk(bytes) : bytes)
    }

    func writeEnd(trailers: HTTPHeaders) {
        if chunkedResponse { transport.write(HTTP1Writer.lastChunk(trailers: trailers)) }
        completeResponse()
    }

    private func completeResponse() {
        responseDone = true
        transport.resumeReading()  // the request body may have paused it
        if !keepAlive || closeDelimited || !requestDone {
            // A response that ended before its request body was read cannot keep the
            // connection: the rest of that body would be read as a new request.
            closing = true
            current = nil
            transport.closeAfterFlush()
            return
        }
        current = nil
        transport.loop.execute { self.process() }
    }

    /// A complete error response with a short text body.
    func respondError(_ status: Int, _ message: String, close: Bool = false, retryAfter: Bool = false) {
        gateway.logger.info("answered " + String(status) + ": " + message)
        let body = Array((message + "\n").utf8)
        var h = HTTPHeaders()
        h.add("Content-Type", "text/plain; charset=utf-8")
        h.add("Content-Length", String(body.count))
        if retryAfter { h.add("Retry-After", "5") }
        if close { keepAlive = false }
        if !keepAlive { h.add("Connection", "close") }
        transport.write(HTTP1Writer.responseHead(HTTPResponseHead(status: status, versionMinor: 1, headers: h)))
        transport.write(body)
        if close { queued.removeAll() }
        chunkedResponse = false
        completeResponse()
    }

    /// Ends the connection abruptly: the user sees a broken response, never a truncated one as complete.
    func abort(_ why: String) {
        gateway.logger.warning("aborting user connection: " + why)
        closing = true
        current?.userGone()
        current = nil
        transport.close()
    }

    private func closed() {
        closing = true
        current?.userGone()
        current = nil
        queued.removeAll()
        gateway.userConnectionClosed(self)
    }

    /// Graceful stop: close now when idle, else after the response in progress.
    func goAway() {
        goingAway = true
        keepAlive = false
        if current == nil && responseDone && queued.isEmpty { transport.closeAfterFlush() }
    }
}
