// LocalRequest is one stream from the gateway handed to a local API that lives in
// the agent's own process (the simulator's virtual devices), instead of being
// forwarded over HTTP/1.1 by a LocalExchange. The handler gets the request head
// at once and the body as it arrives, and answers with HTTP/2 semantics: a head
// with `:status`, body bytes, optional trailers, or a reset.
//
// Body bytes that arrive before the handler sets `onBody` (say while it waits to
// answer) are held, not acknowledged, and delivered when it does; the end of
// the request likewise waits for `onEnd`. A handler that does not want the body
// calls `discardBody`. Flow control: bytes are acknowledged to the gateway once
// delivered (`autoConsume`), or when the handler calls `consume`; whatever is
// unacknowledged when the stream closes is acknowledged then. A handler that
// writes much should wait with `whenQueue` for the stream's queue to drain.
import EventLoop
import HTTP1
import HTTP2
import Wire

/// An in-process local API: called once per request stream.
public typealias LocalHandler = (LocalRequest) -> Void

public final class LocalRequest {
    public let stream: Int32
    /// The request's header fields as received, pseudo-header fields included.
    public let headers: HTTPHeaders
    public let method: String
    public let path: String
    /// `:protocol` of an extended CONNECT (RFC 8441), "websocket".
    public let protocolName: String?
    /// The gateway's side of the request has ended (its body may still be held).
    public private(set) var requestEnded: Bool
    public private(set) var isClosed = false
    /// Acknowledge body bytes to the gateway as soon as they are delivered.
    public var autoConsume = true
    /// Body bytes, in order (held ones at once, when set).
    public var onBody: (([UInt8]) -> Void)? { didSet { deliverHeld() } }
    /// The request ended, with its trailers (often none), after its last body bytes.
    public var onEnd: ((HTTPHeaders) -> Void)? { didSet { deliverHeld() } }
    private var held: [[UInt8]] = []
    private var heldEnd: HTTPHeaders?
    private var discarding = false
    /// Body bytes received and not yet acknowledged to the gateway.
    private var unacknowledged = 0
    /// The stream is gone (answered, or reset by the gateway: `errorCode` != 0).
    public var onClose: ((UInt32) -> Void)?
    private let server: ReversedServer

    init(stream: Int32, headers: HTTPHeaders, endStream: Bool, server: ReversedServer) {
        self.stream = stream
        self.headers = headers
        self.server = server
        method = headers.first(":method") ?? ""
        path = headers.first(":path") ?? ""
        protocolName = headers.first(":protocol")
        requestEnded = endStream
    }

    public var loop: EventLoop { server.transport.loop }
    public var logger: Logger { server.logger }
    public var context: LogContext { LogContext(device: server.device, connection: server.id, stream: stream) }
    /// Response body bytes queued on this stream, not yet sent.
    public var queued: Int { server.session.pendingBody(stream: stream) }

    /// The response head; `headers` carries `:status`.
    public func respond(_ headers: HTTPHeaders, endStream: Bool = false) {
        guard !isClosed else { return }
        server.respond(stream: stream, headers, endStream: endStream)
    }

    public func write(_ bytes: [UInt8], endStream: Bool = false) {
        guard !isClosed else { return }
        server.sendBody(stream: stream, bytes, endStream: endStream)
    }

    public func trailers(_ trailers: HTTPHeaders) {
        guard !isClosed else { return }
        server.sendTrailers(stream: stream, trailers)
    }

    public func reset(errorCode: UInt32) {
        guard !isClosed else { return }
        server.reset(stream: stream, errorCode: errorCode)
    }

    /// True when body bytes wait for `onBody`.
    public var hasHeldBody: Bool { !held.isEmpty }

    /// Reopens the gateway's window for `count` request body bytes.
    public func consume(_ count: Int) {
        let n = min(count, unacknowledged)
        guard !isClosed, n > 0 else { return }
        unacknowledged -= n
        server.consume(stream: stream, count: n)
    }

    /// The handler does not want the body: what is held and what comes is acknowledged and dropped.
    public func discardBody() {
        discarding = true
        held.removeAll()
        consume(unacknowledged)
    }

    /// Runs `callback` once at most `mark` response bytes wait in this stream's
    /// queue (at once if they do; never if the stream closes first).
    public func whenQueue(isAtMost mark: Int, _ callback: @escaping () -> Void) {
        guard !isClosed else { return }
        server.connection.whenQueue(stream: stream, isAtMost: mark, callback)
    }

    // MARK: From the ReversedServer

    func body(_ bytes: [UInt8]) {
        unacknowledged += bytes.count
        if discarding { return consume(bytes.count) }
        guard let deliver = onBody, held.isEmpty else {
            held.append(bytes)
            return
        }
        deliver(bytes)
        if autoConsume { consume(bytes.count) }
    }

    func end(_ trailers: HTTPHeaders) {
        guard !requestEnded else { return }
        requestEnded = true
        heldEnd = trailers
        deliverHeld()
    }

    private func deliverHeld() {
        if let deliver = onBody {
            while !held.isEmpty && !isClosed {
                let bytes = held.removeFirst()
                deliver(bytes)
                if autoConsume { consume(bytes.count) }
            }
        }
        guard held.isEmpty, let trailers = heldEnd, let done = onEnd else { return }
        heldEnd = nil
        done(trailers)
    }

    func closed(errorCode: UInt32) {
        guard !isClosed else { return }
        // The connection's window must not shrink by what the handler never took.
        if unacknowledged > 0 { server.consume(stream: stream, count: unacknowledged) }
        unacknowledged = 0
        held.removeAll()
        heldEnd = nil
        isClosed = true
        let cb = onClose
        onBody = nil
        onEnd = nil
        onClose = nil
        cb?(errorCode)
    }
}
