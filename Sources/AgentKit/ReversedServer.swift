// ReversedServer is the device side of one reversed connection: the agent dialed
// the gateway, wrote the HTTP/2 client preface, and now serves the requests the
// gateway sends on odd streams. Each stream becomes one LocalExchange, which
// forwards it to the local HTTP API over HTTP/1.1 -- or, when the agent runs an
// in-process local API (the simulator), one LocalRequest handed to it.
import EventLoop
import HTTP1
import HTTP2
import Wire

public final class ReversedServer {
    public let id: Int
    let connection: HTTP2Connection
    var transport: Transport { connection.transport }
    var session: HTTP2Session { connection.session }
    let local: LocalPool
    let logger: Logger
    let device: String
    let responseTimeoutMs: Int
    let handler: LocalHandler?
    /// Local TCP ports a CONNECT may reach (`tcp_ports`), and how long connecting may take.
    let tcpPorts: [Int]
    let connectTimeoutMs: Int
    private var exchanges: [Int32: StreamHandler] = [:]
    public private(set) var isReversed = false
    /// Called once when the connection ends, with the reason.
    var onClose: ((CloseReason) -> Void)?
    /// Called once when the gateway's SETTINGS arrived: the connection is reversed.
    var onReversed: (() -> Void)?
    /// Called once when the gateway sent GOAWAY: this connection takes no new streams.
    var onGoaway: ((UInt32) -> Void)?

    init(id: Int, transport: Transport, local: LocalPool, handler: LocalHandler? = nil, settings: HTTP2Settings,
         device: String, responseTimeoutMs: Int, tcpPorts: [Int] = [], connectTimeoutMs: Int = 10_000,
         logger: Logger) throws(HTTP2Error) {
        self.id = id
        self.local = local
        self.handler = handler
        self.logger = logger
        self.device = device
        self.responseTimeoutMs = responseTimeoutMs
        self.tcpPorts = tcpPorts
        self.connectTimeoutMs = connectTimeoutMs
        let session = try HTTP2Session(role: .server, preface: .reversed, settings: settings)
        connection = HTTP2Connection(transport: transport, session: session, logger: logger,
                                     context: LogContext(device: device, connection: id))
    }

    var ctx: LogContext { LogContext(device: device, connection: id) }
    public var activeStreams: Int { exchanges.count }

    /// Takes over the transport and sends the preface and SETTINGS.
    func start() {
        connection.onEvent = { event in self.handle(event) }
        connection.onClose = { reason in self.closed(reason) }
        connection.start()
    }

    private func handle(_ event: HTTP2Event) {
        switch event {
        case .settings:
            if !isReversed {
                isReversed = true
                onReversed?()
            }
        case .headers(let stream, let headers, let endStream):
            if let ex = exchanges[stream] {
                ex.requestEnd(trailers: headers)
                return
            }
            if let handler {
                let request = LocalRequest(stream: stream, headers: headers, endStream: endStream, server: self)
                exchanges[stream] = .inProcess(request)
                handler(request)
                return
            }
            let ex = LocalExchange(stream: stream, server: self, pool: local, timeoutMs: responseTimeoutMs)
            exchanges[stream] = .forwarded(ex)
            ex.start(headers: headers, endStream: endStream)
        case .headersTooLarge(let stream, _):
            // A request head over the limit (trailers: the session reset the stream).
            logger.warning("request header block over the limit; answering 431", LogContext(device: device, connection: id, stream: stream))
            if exchanges[stream] == nil {
                respond(stream: stream, HTTPHeaders([(":status", "431"), ("content-length", "0")]), endStream: true)
            }
        case .data(let stream, let bytes):
            // The exchange gives the window back once the local socket took the bytes.
            if let ex = exchanges[stream] {
                ex.requestBody(bytes)
            } else {
                consume(stream: stream, count: bytes.count)
            }
        case .endStream(let stream):
            exchanges[stream]?.requestEnd(trailers: HTTPHeaders())
        case .streamClosed(let stream, let code):
            if let ex = exchanges.removeValue(forKey: stream) { ex.streamClosed(errorCode: code) }
            closeIfDrained()
        case .goaway(let last, let code):
            logger.info("gateway sent GOAWAY (last stream " + String(last) + ", error " + String(code) + ")", ctx)
            // Streams up to `last` finish here; nghttp2 ends the session after them.
            let cb = onGoaway
            onGoaway = nil
            cb?(code)
        case .pingAck:
            break
        }
    }

    // MARK: Called by LocalExchange

    func respond(stream: Int32, _ headers: HTTPHeaders, endStream: Bool) {
        do throws(HTTP2Error) {
            try session.submitResponse(stream: stream, headers, endStream: endStream)
        } catch {
            logger.warning("cannot answer: " + error.description, LogContext(device: device, connection: id, stream: stream))
            session.resetStream(stream, errorCode: 2)
        }
        scheduleFlush()
    }

    func sendBody(stream: Int32, _ bytes: [UInt8], endStream: Bool, resetAfter: Bool = false) {
        session.sendData(stream: stream, bytes, endStream: endStream, resetAfter: resetAfter)
        scheduleFlush()
    }

    func sendTrailers(stream: Int32, _ trailers: HTTPHeaders, resetAfter: Bool = false) {
        session.sendTrailers(stream: stream, trailers, resetAfter: resetAfter)
        scheduleFlush()
    }

    func reset(stream: Int32, errorCode: UInt32) {
        session.resetStream(stream, errorCode: errorCode)
        scheduleFlush()
    }

    func consume(stream: Int32, count: Int) {
        session.consume(stream: stream, count: count)
        scheduleFlush()
    }

    private func scheduleFlush() { connection.scheduleFlush() }

    /// True after `shutdown`: no new streams, close when the last one ends.
    private(set) var draining = false

    /// Graceful stop, as HAProxy's dialer does it: GOAWAY(2^31-1) at once, so the
    /// gateway sends nothing new; the streams in flight finish; then GOAWAY with
    /// the last stream id, and close.
    func shutdown() {
        guard !draining else { return }
        draining = true
        session.goaway(lastStreamID: Int32.max, errorCode: 0)
        connection.flush()
        closeIfDrained()
    }

    private func closeIfDrained() {
        guard draining, exchanges.isEmpty, transport.state != .closed else { return }
        session.goaway(errorCode: 0)
        connection.flush()
        transport.closeAfterFlush()
    }

    private func closed(_ reason: CloseReason) {
        let all = exchanges
        exchanges.removeAll()
        for (_, ex) in all { ex.streamClosed(errorCode: 8) }
        let cb = onClose
        onClose = nil
        onReversed = nil
        onGoaway = nil
        cb?(reason)
    }
}

/// Who serves a stream: the HTTP/1.1 local API through a LocalExchange, or an
/// in-process handler through a LocalRequest.
enum StreamHandler {
    case forwarded(LocalExchange)
    case inProcess(LocalRequest)

    func requestBody(_ bytes: [UInt8]) {
        switch self {
        case .forwarded(let ex): ex.requestBody(bytes)
        case .inProcess(let r): r.body(bytes)
        }
    }

    func requestEnd(trailers: HTTPHeaders) {
        switch self {
        case .forwarded(let ex): ex.requestEnd(trailers: trailers)
        case .inProcess(let r): r.end(trailers)
        }
    }

    func streamClosed(errorCode: UInt32) {
        switch self {
        case .forwarded(let ex): ex.streamClosed(errorCode: errorCode)
        case .inProcess(let r): r.closed(errorCode: errorCode)
        }
    }
}
