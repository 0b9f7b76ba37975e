// HTTP2Session owns one nghttp2_session in client or server role. It does no I/O:
// `receive` takes the bytes read from the peer and queues HTTP2Events; `takeOutput`
// returns the bytes to send. C callbacks are thunks (HTTP2Callbacks.swift) that
// unwrap the session from nghttp2's user data and call one method here.
//
// Reverse HTTP ("rhttp", as HAProxy does it) turns the roles around after the TCP
// or TLS connect: the dialer (device) sends the client preface but then acts as
// the HTTP server; the gateway receives that preface but acts as the HTTP client.
// `Preface.reversed` handles both ends here, once:
//   - server role: we write the 24-byte client magic ourselves, then run a server
//     session told not to expect a client magic from the peer;
//   - client role: we check the peer's 24-byte magic ourselves, and drop the magic
//     our client session emits, so it never reaches the wire.
import Bytes
import CNghttp2
import HTTPCore

public enum HTTP2Role { case client, server }

public enum Preface {
    /// Plain HTTP/2 (RFC 9113): the client sends the magic.
    case standard
    /// Reverse HTTP: the server role sends the magic and the client role receives it.
    case reversed
}

public struct HTTP2Settings {
    public var maxConcurrentStreams: UInt32 = 100
    /// Per-stream receive window we advertise.
    public var initialWindowSize: Int32 = 1 << 20
    /// Connection receive window we open right after the SETTINGS.
    public var connectionWindowSize: Int32 = 16 << 20
    /// SETTINGS_MAX_HEADER_LIST_SIZE we advertise, and the limit we enforce on each
    /// header block we receive (nghttp2 enforces nothing): the sum over its fields
    /// of name + value + 32 bytes, as RFC 9113 §6.5.2 counts it. A block over it, or
    /// over `maxHeaderFields`, is dropped as it is decoded and reported as
    /// `HTTP2Event.headersTooLarge`.
    public var maxHeaderListSize: UInt32 = 65536
    /// Most fields (pseudo-headers included) in one header block we receive.
    /// `cookie` fields after the first are not counted: browsers send each
    /// cookie as its own field (RFC 9113 §8.2.3); their bytes still count
    /// towards `maxHeaderListSize`.
    public var maxHeaderFields = 128
    /// Decoded header bytes that may wait in the events of one `receive` before
    /// decoding pauses (at least twice `maxHeaderListSize`).
    public var maxHeldHeaderBytes = 1 << 20
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): extended CONNECT, for WebSockets.
    public var enableConnectProtocol = true
    public init() {}
}

public enum HTTP2Error: Error, CustomStringConvertible {
    case badPreface
    case nghttp2(operation: String, code: Int32, message: String)

    static func from(_ operation: String, _ code: Int) -> HTTP2Error {
        .nghttp2(operation: operation, code: Int32(code), message: String(cString: nghttp2_strerror(Int32(code))))
    }

    /// The GOAWAY error code for a connection this error ends: ENHANCE_YOUR_CALM for
    /// a flood (nghttp2's outbound ACK limit, too many CONTINUATION frames), else PROTOCOL_ERROR.
    public var goawayCode: UInt32 {
        if case .nghttp2(_, let code, _) = self,
           code == NGHTTP2_ERR_FLOODED.rawValue || code == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS.rawValue {
            return UInt32(NGHTTP2_ENHANCE_YOUR_CALM.rawValue)
        }
        return UInt32(NGHTTP2_PROTOCOL_ERROR.rawValue)
    }

    public var description: String {
        switch self {
        case .badPreface: return "peer did not send the HTTP/2 connection preface"
        case .nghttp2(let op, _, let message): return "HTTP/2 " + op + ": " + message
        }
    }
}

public enum HTTP2Event {
    /// A complete header block (request, response or trailers). `headers` includes pseudo-headers.
    case headers(stream: Int32, headers: HTTPHeaders, endStream: Bool)
    /// A header block over `maxHeaderListSize` or `maxHeaderFields`, or one block too
    /// many on a stream (client role: more than 8, interim responses included); its
    /// fields were dropped. The application answers a request head (server role) with 431; the
    /// session has already reset (PROTOCOL_ERROR) the stream of any other block
    /// (responses, trailers) and of a request head past twice the limits, where that
    /// answer is dropped, and a `streamClosed` follows.
    case headersTooLarge(stream: Int32, endStream: Bool)
    case data(stream: Int32, bytes: [UInt8])
    /// The peer finished sending on this stream after DATA.
    case endStream(stream: Int32)
    /// The stream is gone; error code 0 is a clean close.
    case streamClosed(stream: Int32, errorCode: UInt32)
    case settings(maxConcurrentStreams: UInt32)
    case pingAck
    case goaway(lastStreamID: Int32, errorCode: UInt32)
}

/// The client connection preface (RFC 9113 §3.4).
public let http2ClientMagic: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

public final class HTTP2Session {
    public let role: HTTP2Role
    public let preface: Preface
    var session: OpaquePointer!
    var events: [HTTP2Event] = []
    /// Why we ended the connection, when nghttp2 sent a GOAWAY with an error
    /// ("PROTOCOL_ERROR: ..."): a peer that broke the protocol.
    public internal(set) var goawaySentReason: String?
    /// The header block being received. HTTP/2 never interleaves header blocks
    /// (CONTINUATION frames follow their HEADERS at once): there is one at a time.
    var block = IncomingBlock()
    /// Client role: header blocks received so far, per open stream.
    private var headerBlocks: [Int32: Int] = [:]
    /// The limits enforced on each header block received (see HTTP2Settings).
    public let maxHeaderListSize: Int
    public let maxHeaderFields: Int
    /// Decoded header bytes (RFC 9113 counting) in `events` not taken yet. HPACK can
    /// decode one wire byte into thousands (a dynamic-table entry referenced again
    /// and again), so one read could queue many blocks just under the limit: past
    /// `heldHeaderBudget`, decoding pauses and the rest of the input waits in
    /// `backlog` until the events were taken (`receiveBacklog`).
    var heldHeaderBytes = 0
    public let heldHeaderBudget: Int
    /// Header fields nghttp2 handed us, for the tests: an abandoned block costs none.
    var fieldsSeen = 0
    /// Input not processed yet, after a pause.
    private var backlog: [UInt8] = []
    /// The error `receive` threw: it is final, every later call throws it again.
    public private(set) var receiveError: HTTP2Error?
    /// Bodies queued for sending, per stream.
    var outgoing: [Int32: OutgoingBody] = [:]
    /// Where DATA frames go while `takeOutput` runs.
    var output: ByteQueue?
    var outputLimit = Int.max
    /// Reversed client: bytes of the peer's magic still to check. Reversed server: our magic to send.
    private var prefaceBytesToCheck: Int
    private var prefaceToSend: [UInt8]
    /// Reversed client: bytes of our own client magic still to drop from nghttp2's output.
    private var ownMagicToDrop: Int
    public private(set) var remoteMaxConcurrentStreams: UInt32 = 100
    /// The peer accepts extended CONNECT (RFC 8441), so WebSockets can cross.
    public private(set) var remoteEnablesConnectProtocol = false
    public private(set) var receivedGoaway = false
    public private(set) var sentGoaway = false

    public init(role: HTTP2Role, preface: Preface, settings: HTTP2Settings = HTTP2Settings()) throws(HTTP2Error) {
        self.role = role
        self.preface = preface
        maxHeaderListSize = Int(settings.maxHeaderListSize)
        maxHeaderFields = max(1, settings.maxHeaderFields)
        heldHeaderBudget = max(settings.maxHeldHeaderBytes, 2 * Int(settings.maxHeaderListSize))
        prefaceBytesToCheck = (role == .client && preface == .reversed) ? http2ClientMagic.count : 0
        prefaceToSend = (role == .server && preface == .reversed) ? http2ClientMagic : []
        ownMagicToDrop = (role == .client && preface == .reversed) ? http2ClientMagic.count : 0

        var cbs: OpaquePointer?
        nghttp2_session_callbacks_new(&cbs)
        defer { nghttp2_session_callbacks_del(cbs) }
        HTTP2Callbacks.install(cbs)
        var opt: OpaquePointer?
        nghttp2_option_new(&opt)
        defer { nghttp2_option_del(opt) }
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_max_send_header_block_length(opt, 65536)
        if role == .server && preface == .reversed { nghttp2_option_set_no_recv_client_magic(opt, 1) }

        var s: OpaquePointer?
        let me = Unmanaged.passUnretained(self).toOpaque()
        let rc = role == .client
            ? nghttp2_session_client_new3(&s, cbs, me, opt, rh_nghttp2_mem())
            : nghttp2_session_server_new3(&s, cbs, me, opt, rh_nghttp2_mem())
        guard rc == 0, let s else { throw HTTP2Error.from("session_new", Int(rc)) }
        session = s

        var iv: [nghttp2_settings_entry] = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: settings.maxConcurrentStreams),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(settings.initialWindowSize)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: settings.maxHeaderListSize),
        ]
        if settings.enableConnectProtocol {
            iv.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL.rawValue), value: 1))
        }
        // No server push either way: a device that sends PUSH_PROMISE is a protocol error.
        iv.insert(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0), at: 0)
        let src = iv.withUnsafeBufferPointer { nghttp2_submit_settings(s, UInt8(NGHTTP2_FLAG_NONE.rawValue), $0.baseAddress, $0.count) }
        guard src == 0 else { throw HTTP2Error.from("submit_settings", Int(src)) }
        // The connection window must not be what stalls a connection: a few streams
        // whose readers stopped would otherwise block all the others (HAProxy opens it
        // to about 2^31 for the same reason). Each stream stays bounded by its own window.
        let perStreams = Int64(settings.maxConcurrentStreams) * Int64(settings.initialWindowSize)
        let window = Int32(clamping: max(Int64(settings.connectionWindowSize), perStreams))
        if window > 65535 {
            _ = nghttp2_session_set_local_window_size(s, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, window)
        }
    }

    deinit { nghttp2_session_del(session) }

    // MARK: Bytes in, bytes and events out

    /// Processes bytes from the peer; the events they produce are queued for `takeEvents`.
    /// When decoded headers pile up past a budget, processing pauses: take the events,
    /// then call `receiveBacklog` while `hasBacklog` (HTTP2Connection does).
    public func receive(_ bytes: UnsafeRawBufferPointer) throws(HTTP2Error) {
        if let receiveError { throw receiveError }
        var input = bytes
        if prefaceBytesToCheck > 0 {
            let offset = http2ClientMagic.count - prefaceBytesToCheck
            let n = min(prefaceBytesToCheck, input.count)
            for i in 0..<n where input[i] != http2ClientMagic[offset + i] {
                receiveError = .badPreface
                throw HTTP2Error.badPreface
            }
            prefaceBytesToCheck -= n
            input = UnsafeRawBufferPointer(rebasing: input[n...])
        }
        guard input.count > 0 else { return }
        if !backlog.isEmpty {
            backlog.append(contentsOf: input)
            try receiveBacklog()
            return
        }
        let done = try feed(input)
        if done < input.count { backlog.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[done...])) }
    }

    /// Input left over by a pause (see `receive`).
    public var hasBacklog: Bool { !backlog.isEmpty }

    /// Goes on with the input left over by a pause; it may pause again.
    public func receiveBacklog() throws(HTTP2Error) {
        if let receiveError { throw receiveError }
        guard !backlog.isEmpty else { return }
        var pending: [UInt8] = []
        swap(&pending, &backlog)
        var result: Result<Int, HTTP2Error> = .success(0)
        pending.withUnsafeBytes { p in
            do throws(HTTP2Error) { result = .success(try feed(p)) } catch { result = .failure(error) }
        }
        switch result {
        case .failure(let e): throw e
        case .success(let done):
            if done < pending.count {
                pending.removeFirst(done)
                backlog = pending
            }
        }
    }

    /// Hands `input` to nghttp2; returns how much it took (less after a pause).
    private func feed(_ input: UnsafeRawBufferPointer) throws(HTTP2Error) -> Int {
        guard input.count > 0 else { return 0 }
        let rc = nghttp2_session_mem_recv(session, input.baseAddress!.assumingMemoryBound(to: UInt8.self), input.count)
        if rc < 0 {
            backlog = []
            let error = HTTP2Error.from("receive", rc)
            receiveError = error
            throw error
        }
        return rc
    }

    public func receive(_ bytes: [UInt8]) throws(HTTP2Error) {
        var result: HTTP2Error?
        bytes.withUnsafeBytes { p in
            do throws(HTTP2Error) { try receive(p) } catch { result = error }
        }
        if let result { throw result }
    }

    public var hasEvents: Bool { !events.isEmpty }

    /// Events produced since the last call, in order.
    public func takeEvents() -> [HTTP2Event] {
        let e = events
        events.removeAll(keepingCapacity: true)
        heldHeaderBytes = 0
        return e
    }

    /// Appends the bytes to send to the peer to `out`.
    /// Stops once `out` holds at least `limit` bytes: what is left stays queued in
    /// nghttp2 (and DATA in the streams' bodies), so memory follows the socket's pace.
    public func takeOutput(into out: inout [UInt8], limit: Int = Int.max) throws(HTTP2Error) {
        let q = ByteQueue()
        try takeOutput(into: q, limit: limit)
        q.take(into: &out)
    }

    /// Appends the frames to send to `out` (memcpy) until it holds `limit` bytes or
    /// nghttp2 has nothing more.
    public func takeOutput(into out: ByteQueue, limit: Int = Int.max) throws(HTTP2Error) {
        if !prefaceToSend.isEmpty {
            out.append(prefaceToSend)
            prefaceToSend = []
        }
        // DATA frames are written by HTTP2Callbacks.sendData, straight from the
        // streams' queues into `out` (NGHTTP2_DATA_FLAG_NO_COPY), in order with
        // the frames mem_send returns.
        output = out
        outputLimit = limit
        defer { output = nil }
        var guardCount = 0
        while guardCount < 100_000 && out.count < limit {
            guardCount += 1
            var p: UnsafePointer<UInt8>?
            let n = nghttp2_session_mem_send(session, &p)
            if n < 0 { throw HTTP2Error.from("send", n) }
            if n == 0 { break }
            var chunk = UnsafeRawBufferPointer(start: p, count: n)
            if ownMagicToDrop > 0 {
                let drop = min(ownMagicToDrop, chunk.count)
                ownMagicToDrop -= drop
                chunk = UnsafeRawBufferPointer(rebasing: chunk[drop...])
            }
            out.append(chunk)
        }
    }

    /// False once both sides are done (GOAWAY exchanged and no streams left, or a fatal error).
    public var isAlive: Bool {
        nghttp2_session_want_read(session) != 0 || nghttp2_session_want_write(session) != 0
    }

    // MARK: Streams

    /// Client role: opens a stream with `headers` (pseudo-headers first). Returns its id.
    public func submitRequest(_ headers: HTTPHeaders, endStream: Bool) throws(HTTP2Error) -> Int32 {
        let body: OutgoingBody? = endStream ? nil : OutgoingBody()
        let id = try submitHeaders(stream: -1, headers, body: body, isRequest: true)
        if let body { outgoing[id] = body }
        return id
    }

    /// Server role: answers `stream`.
    public func submitResponse(stream: Int32, _ headers: HTTPHeaders, endStream: Bool) throws(HTTP2Error) {
        let body: OutgoingBody? = endStream ? nil : OutgoingBody()
        if let body { outgoing[stream] = body }
        _ = try submitHeaders(stream: stream, headers, body: body, isRequest: false)
    }

    /// Queues body bytes for `stream`; with `endStream` the body ends after them.
    /// `resetAfter`: once the last DATA frame is out, RST_STREAM(NO_ERROR) tells the
    /// peer to stop sending its side (a response complete before its request, RFC 9113 §8.1).
    public func sendData(stream: Int32, _ bytes: [UInt8], endStream: Bool, resetAfter: Bool = false) {
        guard let body = outgoing[stream] else { return }
        body.append(bytes)
        if endStream { body.ended = true }
        if resetAfter { body.resetAfter = true }
        if body.deferred {
            body.deferred = false
            _ = nghttp2_session_resume_data(session, stream)
        }
    }

    /// Ends the body of `stream` with trailers.
    public func sendTrailers(stream: Int32, _ trailers: HTTPHeaders, resetAfter: Bool = false) {
        guard let body = outgoing[stream] else { return }
        body.trailers = trailers
        body.ended = true
        if resetAfter { body.resetAfter = true }
        if body.deferred {
            body.deferred = false
            _ = nghttp2_session_resume_data(session, stream)
        }
    }

    /// Bytes queued for `stream` that nghttp2 has not taken yet (flow control).
    public func pendingBody(stream: Int32) -> Int { outgoing[stream]?.count ?? 0 }

    /// Streams with a body being sent.
    public var sendingStreamCount: Int { outgoing.count }

    public func resetStream(_ stream: Int32, errorCode: UInt32 = UInt32(NGHTTP2_CANCEL.rawValue)) {
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, errorCode)
    }

    /// Tells nghttp2 the application consumed `count` bytes of `stream`'s DATA, so the
    /// flow-control windows reopen.
    public func consume(stream: Int32, count: Int) {
        guard count > 0 else { return }
        _ = nghttp2_session_consume(session, stream, count)
    }

    /// Sets `stream`'s receive window to `size` bytes; a larger window goes to the
    /// peer as a WINDOW_UPDATE (a receiver that grows a window as its reader keeps up).
    public func setReceiveWindow(stream: Int32, size: Int32) {
        _ = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, size)
    }

    public func ping() {
        let payload: [UInt8] = [0, 1, 2, 3, 4, 5, 6, 7]  // HAProxy's payload
        _ = nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), payload)
    }

    public func goaway(lastStreamID: Int32? = nil, errorCode: UInt32 = 0) {
        let last = lastStreamID ?? nghttp2_session_get_last_proc_stream_id(session)
        _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), last, errorCode, nil, 0)
        sentGoaway = true
    }

    // MARK: Internals used by the callbacks

    private func submitHeaders(stream: Int32, _ headers: HTTPHeaders, body: OutgoingBody?, isRequest: Bool) throws(HTTP2Error) -> Int32 {
        let rc = submit(isRequest ? .request : .response, stream: stream, headers, withBody: body != nil)
        if rc < 0 {
            if !isRequest { outgoing[stream] = nil }
            throw HTTP2Error.from(isRequest ? "submit_request" : "submit_response", Int(rc))
        }
        return isRequest ? rc : stream
    }

    /// Most header blocks on one stream we opened (client role): interim (1xx)
    /// responses, the response, trailers. nghttp2 takes any number of 1xx; each can
    /// decode to `maxHeaderListSize` from a few bytes, so without a cap one stream
    /// would cost unbounded work. (A server stream has at most two: nghttp2's rule.)
    static let maxHeaderBlocksPerStream = 8

    /// Returns what the callback returns to nghttp2: a stream past
    /// `maxHeaderBlocksPerStream` is reset and the block abandoned.
    func beginHeaderBlock(frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let stream = frame.pointee.hd.stream_id
        block = IncomingBlock()
        if role == .client {
            let n = headerBlocks[stream, default: 0] + 1
            headerBlocks[stream] = n
            if n > HTTP2Session.maxHeaderBlocksPerStream {
                _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream,
                                              UInt32(NGHTTP2_PROTOCOL_ERROR.rawValue))
                let endStream = (frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue)) != 0
                events.append(.headersTooLarge(stream: stream, endStream: endStream))
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue
            }
        }
        block.stream = stream
        return 0
    }

    /// One decoded field; returns what the callback returns to nghttp2. Past a limit
    /// the block's fields are dropped. A request head (server role) is then still
    /// decoded to its end, so that the application can answer 431, but only up to
    /// twice the limits; any other block, or one past twice the limits, has its
    /// stream reset at once: nghttp2 then only decodes the rest of the block (it
    /// must, to keep the HPACK state) and no longer checks each field or calls us.
    /// This matters: each one-byte reference to a 4,000-byte table entry would cost
    /// a 4,000-byte check (measured with nghttp2 1.52: 230 ms for one 128 KiB block,
    /// 3 ms once the block is abandoned). Returns PAUSE when too many decoded bytes
    /// wait in `events` (see `receive`).
    func headerField(frame: UnsafePointer<nghttp2_frame>, name: UnsafeBufferPointer<UInt8>,
                     value: UnsafeBufferPointer<UInt8>) -> Int32 {
        fieldsSeen &+= 1
        let stream = frame.pointee.hd.stream_id
        guard stream == block.stream else { return 0 }
        block.bytes += name.count + value.count + 32
        // Cookie crumbs (RFC 9113 §8.2.3) count as one field; bytes bound them.
        if HTTP2Session.isCookie(name) {
            if !block.sawCookie { block.fields += 1 }
            block.sawCookie = true
        } else {
            block.fields += 1
        }
        let over = block.bytes > maxHeaderListSize || block.fields > maxHeaderFields
        guard over else {
            block.headers.add(String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
            return heldHeaderBytes + block.bytes <= heldHeaderBudget ? 0 : NGHTTP2_ERR_PAUSE.rawValue
        }
        if !block.tooLarge {
            block.tooLarge = true
            block.headers = HTTPHeaders()
        }
        let answerable = role == .server && frame.pointee.headers.cat.rawValue == NGHTTP2_HCAT_REQUEST.rawValue
        if answerable && block.bytes <= 2 * maxHeaderListSize && block.fields <= 2 * maxHeaderFields { return 0 }
        // Abandon the block: our RST_STREAM first (nghttp2 then adds none of its own).
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream,
                                      UInt32(NGHTTP2_PROTOCOL_ERROR.rawValue))
        let endStream = (frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue)) != 0
        events.append(.headersTooLarge(stream: stream, endStream: endStream))
        block = IncomingBlock()
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue
    }

    /// The field name is `cookie` (HTTP/2 field names are lower case: RFC 9113 §8.2.1).
    static func isCookie(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        name.count == 6 && name[0] == 0x63 && name[1] == 0x6F && name[2] == 0x6F
            && name[3] == 0x6B && name[4] == 0x69 && name[5] == 0x65
    }

    /// The block of `stream` is complete (not called for an abandoned block).
    func endHeaderBlock(stream: Int32, endStream: Bool) {
        guard stream == block.stream else { return }
        let b = block
        block = IncomingBlock()
        if b.tooLarge {
            events.append(.headersTooLarge(stream: stream, endStream: endStream))  // a request head: 431
        } else {
            heldHeaderBytes += b.bytes
            events.append(.headers(stream: stream, headers: b.headers, endStream: endStream))
        }
    }

    func streamDidClose(_ stream: Int32, errorCode: UInt32) {
        outgoing[stream] = nil
        headerBlocks[stream] = nil
        if block.stream == stream { block = IncomingBlock() }
        events.append(.streamClosed(stream: stream, errorCode: errorCode))
    }

    func didReceiveRemoteSettings() {
        remoteMaxConcurrentStreams = nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
        remoteEnablesConnectProtocol = nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) == 1
        events.append(.settings(maxConcurrentStreams: remoteMaxConcurrentStreams))
    }

    func didReceiveGoaway(lastStreamID: Int32, errorCode: UInt32) {
        receivedGoaway = true
        events.append(.goaway(lastStreamID: lastStreamID, errorCode: errorCode))
    }

    func submitTrailersNow(stream: Int32, _ trailers: HTTPHeaders) -> Int32 {
        submit(.trailer, stream: stream, trailers, withBody: false)
    }

    private enum Submission { case request, response, trailer }

    /// The one caller of `withNameValues`: one copy of it in the binary, not one per
    /// kind of header block (1.5 KB in the Embedded agent).
    private func submit(_ kind: Submission, stream: Int32, _ headers: HTTPHeaders, withBody: Bool) -> Int32 {
        var dataPrd = nghttp2_data_provider()
        dataPrd.read_callback = HTTP2Callbacks.readBody
        return withNameValues(headers) { nv, count in
            switch kind {
            case .request:
                return withBody ? nghttp2_submit_request(session, nil, nv, count, &dataPrd, nil)
                    : nghttp2_submit_request(session, nil, nv, count, nil, nil)
            case .response:
                return withBody ? nghttp2_submit_response(session, stream, nv, count, &dataPrd)
                    : nghttp2_submit_response(session, stream, nv, count, nil)
            case .trailer:
                return nghttp2_submit_trailer(session, stream, nv, count)
            }
        }
    }
}

/// Calls `body` with `headers` as nghttp2 name/value pairs, names lower-cased. The
/// pointers are valid only during the call; nghttp2 copies them when submitting.
func withNameValues<R>(_ headers: HTTPHeaders, _ body: (UnsafePointer<nghttp2_nv>?, Int) -> R) -> R {
    var total = 0
    for (name, value) in headers { total += name.utf8.count + value.utf8.count }
    // One buffer for every name and value (names lowered), one array of pairs: no
    // growth, no allocation on the heap for a usual block.
    return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: total + 1) { buf in
        withUnsafeTemporaryAllocation(of: nghttp2_nv.self, capacity: headers.count + 1) { nva in
            let base = buf.baseAddress!
            var at = 0, i = 0
            for (name, value) in headers {
                let n0 = at
                at = copyField(name, to: buf, at: at, lowering: true)
                let v0 = at
                at = copyField(value, to: buf, at: at, lowering: false)
                (nva.baseAddress! + i).initialize(to: nghttp2_nv(
                    name: base + n0, value: base + v0, namelen: v0 - n0, valuelen: at - v0,
                    flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
                i += 1
            }
            return body(UnsafePointer(nva.baseAddress), i)
        }
    }
}

/// Copies the UTF-8 of `s` into `buf` at `at` (A-Z lowered when asked); the new end.
private func copyField(_ s: String, to buf: UnsafeMutableBufferPointer<UInt8>, at: Int, lowering: Bool) -> Int {
    var s = s  // withUTF8: in place for a native string, no iterator fallback
    return s.withUTF8 { src in
        if !lowering {
            if let from = src.baseAddress { (buf.baseAddress! + at).initialize(from: from, count: src.count) }
            return at + src.count
        }
        var i = at
        for b in src {
            buf[i] = b >= 65 && b <= 90 ? b + 32 : b
            i += 1
        }
        return i
    }
}

/// The header block being received and what it has cost so far.
struct IncomingBlock {
    var stream: Int32 = 0
    var headers = HTTPHeaders()
    /// RFC 9113 §6.5.2: name + value + 32, summed over the fields.
    var bytes = 0
    /// Fields counted towards `maxHeaderFields` (cookie crumbs as one).
    var fields = 0
    var sawCookie = false
    /// Over a limit: the fields are dropped.
    var tooLarge = false
}

/// A stream's outgoing body: bytes waiting for nghttp2 to pull them.
final class OutgoingBody {
    /// Body bytes not yet sent (appended and taken with memcpy).
    let buffer = ByteQueue(retainLimit: 1 << 20)
    /// Bytes at the head of `buffer` that nghttp2 has put in a DATA frame it is
    /// about to send (NO_COPY): taken by the send-data callback.
    var framed = 0
    var ended = false
    var deferred = false
    var resetAfter = false
    var trailers: HTTPHeaders?

    var count: Int { buffer.count }

    func append(_ bytes: [UInt8]) { buffer.append(bytes) }
}
