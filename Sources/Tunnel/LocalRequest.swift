// LocalRequest is one stream from the gateway handed to a local API that lives in
// the agent's own process (the simulator's virtual devices), instead of being
// forwarded over HTTP/1.1 by a LocalExchange. The handler gets the request head
// at once and the body as it arrives, and answers with HTTP/2 semantics: a head
// with `:status`, body bytes, optional trailers, or a reset.
//
// Flow control: request body bytes are acknowledged to the gateway once
// delivered (`autoConsume`), or when the handler calls `consume`. A handler that
// writes much should wait with `whenQueue` for the stream's queue to drain.
import EventLoop
import HTTP1
import HTTP2

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
    /// The request ended with its head (no body).
    public private(set) var requestEnded: Bool
    public private(set) var isClosed = false
    /// Acknowledge body bytes to the gateway as soon as they are delivered.
    public var autoConsume = true
    /// Body bytes, in order.
    public var onBody: (([UInt8]) -> Void)?
    /// The request ended, with its trailers (often none).
    public var onEnd: ((HTTPHeaders) -> Void)?
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

    /// Reopens the gateway's window for `count` request body bytes.
    public func consume(_ count: Int) {
        guard !isClosed, count > 0 else { return }
        server.consume(stream: stream, count: count)
    }

    /// Runs `callback` once at most `mark` response bytes wait in this stream's
    /// queue (at once if they do; never if the stream closes first).
    public func whenQueue(isAtMost mark: Int, _ callback: @escaping () -> Void) {
        guard !isClosed else { return }
        server.connection.whenQueue(stream: stream, isAtMost: mark, callback)
    }

    // MARK: From the ReversedServer

    func body(_ bytes: [UInt8]) {
        let deliver = onBody
        deliver?(bytes)
        if autoConsume || deliver == nil { server.consume(stream: stream, count: bytes.count) }
    }

    func end(_ trailers: HTTPHeaders) {
        guard !requestEnded else { return }
        requestEnded = true
        onEnd?(trailers)
    }

    func closed(errorCode: UInt32) {
        guard !isClosed else { return }
        isClosed = true
        let cb = onClose
        onBody = nil
        onEnd = nil
        onClose = nil
        cb?(errorCode)
    }
}
