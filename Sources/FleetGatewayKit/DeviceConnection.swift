// DeviceConnection is the gateway's end of one reversed connection: the device
// dialed in and sent the HTTP/2 client preface; here we check that preface and
// act as the HTTP/2 *client*, opening odd streams to send users' requests. The
// role reversal itself lives in HTTP2Session (Preface.reversed).
import EventLoop
import FleetPKI
import HTTP1
import HTTP2
import Wire

/// What carries one stream's answer: a user's Exchange, or a HealthCheck.
protocol DeviceStreamHandler: AnyObject {
    func deviceHeaders(_ headers: HTTPHeaders, endStream: Bool)
    func deviceBody(_ bytes: [UInt8])
    func deviceEnd()
    /// `connectionLost`: the whole connection went away (closed, or dropped as
    /// unresponsive), not just this stream.
    func deviceStreamClosed(errorCode: UInt32, connectionLost: Bool)
}

final class DeviceConnection {
    let id: Int
    let identity: DeviceIdentity
    let connection: HTTP2Connection
    var transport: Transport { connection.transport }
    var session: HTTP2Session { connection.session }
    let logger: Logger
    private(set) var isReady = false
    private var exchanges: [Int32: DeviceStreamHandler] = [:]
    let connectedAt: UInt64
    /// The verified certificate the device presented (nil on a plaintext listener):
    /// its expiry and last renewal for the admin API and metrics (CertificateExpiry).
    var certificate: PresentedCertificate?
    /// Closes the connection when the device's certificate expires.
    var expiryTimer: TimerID?
    /// A stream ended: the device can take one more request.
    var onStreamFreed: ((DeviceConnection) -> Void)?
    /// Once when SETTINGS arrived (register), once when closed (unregister).
    var onReady: ((DeviceConnection) -> Void)?
    var onClose: ((DeviceConnection) -> Void)?

    init(id: Int, identity: DeviceIdentity, transport: Transport, logger: Logger) throws(HTTP2Error) {
        self.id = id
        self.identity = identity
        self.logger = logger
        connectedAt = transport.loop.now
        let session = try HTTP2Session(role: .client, preface: .reversed)
        connection = HTTP2Connection(transport: transport, session: session, logger: logger,
                                     context: LogContext(device: identity.name, connection: id))
    }

    var ctx: LogContext { LogContext(device: identity.name, connection: id) }
    var inFlight: Int { exchanges.count }

    /// Ready, not going away, and below the device's MAX_CONCURRENT_STREAMS.
    var canTakeRequest: Bool {
        isReady && !session.receivedGoaway && !session.sentGoaway && transport.state == .open
            && inFlight < Int(session.remoteMaxConcurrentStreams)
    }

    func start() {
        connection.onEvent = { event in self.handle(event) }
        connection.onClose = { reason in self.closed(reason) }
        connection.start()
    }

    private func handle(_ event: HTTP2Event) {
        switch event {
        case .settings:
            if !isReady {
                isReady = true
                onReady?(self)
            }
        case .headers(let stream, let headers, let endStream):
            exchanges[stream]?.deviceHeaders(headers, endStream: endStream)
        case .headersTooLarge(let stream, _):
            // The session reset the stream; the exchange fails (502) when it closes.
            logger.warning("device sent a header block over the limit on stream " + String(stream) + "; stream reset", ctx)
        case .data(let stream, let bytes):
            // The exchange gives the window back once the user's socket took the bytes.
            if let ex = exchanges[stream] {
                ex.deviceBody(bytes)
            } else {
                consume(stream: stream, count: bytes.count)
            }
        case .endStream(let stream):
            exchanges[stream]?.deviceEnd()
        case .streamClosed(let stream, let code):
            exchanges.removeValue(forKey: stream)?.deviceStreamClosed(errorCode: code, connectionLost: false)
            onStreamFreed?(self)
        case .goaway(let last, let code):
            logger.info("device sent GOAWAY (last stream " + String(last) + ", error " + String(code) + ")", ctx)
        case .pingAck:
            break
        }
    }

    // MARK: Used by Exchange

    /// Opens a stream for `ex`; nil when the session refuses.
    func submit(_ ex: DeviceStreamHandler, headers: HTTPHeaders, endStream: Bool) -> Int32? {
        do throws(HTTP2Error) {
            let stream = try session.submitRequest(headers, endStream: endStream)
            exchanges[stream] = ex
            scheduleFlush()
            return stream
        } catch {
            // Out of stream ids, or the session is going away: take this connection out.
            logger.warning("cannot open stream: " + error.description + "; retiring this connection", ctx)
            goAway()
            return nil
        }
    }

    func sendBody(stream: Int32, _ bytes: [UInt8], endStream: Bool) {
        session.sendData(stream: stream, bytes, endStream: endStream)
        scheduleFlush()
    }

    func consume(stream: Int32, count: Int) {
        session.consume(stream: stream, count: count)
        scheduleFlush()
    }

    /// After request body bytes were queued: true when the stream's queue is above
    /// the high-water mark; `resume` runs once it has drained.
    func pauseIfBacklogged(stream: Int32, resume: @escaping () -> Void) -> Bool {
        connection.pauseIfBacklogged(stream: stream, resume: resume)
    }

    func cancel(stream: Int32, errorCode: UInt32 = 8) {
        guard exchanges.removeValue(forKey: stream) != nil else { return }
        defer { onStreamFreed?(self) }
        session.resetStream(stream, errorCode: errorCode)
        scheduleFlush()
    }

    private func scheduleFlush() { connection.scheduleFlush() }

    func close() { transport.close() }

    /// No more requests on this connection; it closes once the ones in flight end.
    func goAway(errorCode: UInt32 = 0) {
        session.goaway(lastStreamID: 0, errorCode: errorCode)
        connection.flush()
    }

    private func closed(_ reason: CloseReason) {
        logger.notice("device connection closed: " + reason.description, ctx)
        let all = exchanges
        exchanges.removeAll()
        let cb = onClose
        onClose = nil
        onReady = nil
        onStreamFreed = nil
        // Out of the registry first, so retries of its requests do not pick it again.
        cb?(self)
        for (_, ex) in all { ex.deviceStreamClosed(errorCode: 2, connectionLost: true) }
    }
}

extension DeviceConnection: DeviceStreamTarget {
    var canTakeStream: Bool { canTakeRequest }
    var streamsInFlight: Int { inFlight }
}
