// HTTP1ResponseParser: incremental, strict HTTP/1.x response parser for the
// client side of a connection (the upstream a proxy talks to). Like the
// request parser it streams .head / .body / .end events, but response framing
// depends on the request: `expectResponse(toHEAD:upgrade:)` queues, per
// request sent, whether it was a HEAD and whether it asked for an upgrade.
// Interim 1xx responses are validated and dropped silently; 101 Switching
// Protocols, only to a request that asked for it, ends HTTP parsing (the raw
// rest is left for `takeUnparsed`). A close-delimited body ends with `feedEOF`.
// Any error poisons the parser (answer 502 downstream and close).
//
// `isReusable` says whether the connection may carry the next request: only
// after a response that ended as its own framing says, with nothing received
// beyond it. A connection is shared by requests of different users, so a byte
// too many -- a body to HEAD, 204 or 304, bytes after a complete response --
// would become the start of someone else's response. Never after a response
// to HEAD, nor after a 204/304 that declared a body (Content-Length > 0 or
// Transfer-Encoding) either: such a server may write that body a moment later,
// after every look at the socket found nothing.
//
// Once a solicited final response has ended and no other is expected, the
// rest is not parsed at all: bytes beyond it (e.g. a body to HEAD) are dropped,
// the parser answers [] from then on and the connection is not reusable (the
// owner closes it). The user gets the response as it was framed, never a 502
// for what came after it.
import HTTPCore

public struct HTTP1ResponseParser: Sendable {
    private var decoder: HTTP1MessageDecoder
    private var pendingLine: (status: Int, reason: String, minor: Int)? = nil
    private var failure: HTTP1Error? = nil
    /// What each request sent expects of its response, in order.
    private struct Expectation {
        var toHEAD = false
        var upgrade = false
    }
    /// FIFO of expectations for responses not yet received.
    private var expectations: [Expectation] = []
    private var expectationIndex = 0
    /// The head being read answers an expected request (not one nobody sent).
    private var solicited = false
    /// The head being read answers HEAD, or is a 204/304 that declares a body
    /// anyway: the server may still write that body, so no reuse after it.
    private var bodyMayFollow = false
    /// A solicited final response has ended (cleared by the next expected head).
    private var answered = false
    /// Bytes came beyond an answered response with no other expected: the
    /// parser drops all input from then on.
    private var done = false

    /// Body framing of the response whose head was last returned.
    public private(set) var framing: BodyFraming = .none
    /// True between a .head and its .end.
    public private(set) var inMessage = false
    /// The connection may carry another request now: the last response was
    /// expected (`expectResponse`), ended as its framing says (Content-Length,
    /// chunked, or no body; not close-delimited, not 101), allowed keep-alive
    /// (HTTP/1.1 without `Connection: close`), and not one byte has been
    /// received beyond it. False before any response, after an error and after EOF.
    public private(set) var isReusable = false
    /// Keep-alive allowed by the head being read (set at its .head).
    private var persistent = false

    public init(limits: HTTP1Limits = HTTP1Limits()) {
        decoder = HTTP1MessageDecoder(isRequest: false, limits: limits)
    }

    /// Call once per request sent, in order, before its response is fed:
    /// responses to HEAD carry no body; 101 is accepted only when the request
    /// asked for an upgrade (RFC 9110 §15.2.2), else it is an error. Without a
    /// queued expectation a response is parsed as a response to a non-HEAD
    /// request without upgrade, and leaves the connection not reusable.
    public mutating func expectResponse(toHEAD: Bool, upgrade: Bool = false) {
        if expectationIndex > 0 && expectationIndex == expectations.count {
            expectations.removeAll(keepingCapacity: true)
            expectationIndex = 0
        }
        expectations.append(Expectation(toHEAD: toHEAD, upgrade: upgrade))
    }

    public mutating func feed(_ bytes: [UInt8]) throws(HTTP1Error) -> [HTTP1Event<HTTPResponseHead>] {
        if let failure { throw failure }
        if bytes.isEmpty { return [] }
        isReusable = false  // a byte beyond the last response, or the next one's
        if answered && expectationIndex == expectations.count { done = true }
        if done { return [] }
        decoder.append(bytes)
        do throws(HTTP1Error) {
            return try drain()
        } catch {
            failure = error
            throw error
        }
    }

    /// The peer closed: ends a close-delimited body with .end; throws
    /// .badResponse("truncated") if any other message is incomplete;
    /// returns [] when no message is in progress.
    public mutating func feedEOF() throws(HTTP1Error) -> [HTTP1Event<HTTPResponseHead>] {
        isReusable = false
        if let failure { throw failure }
        if done { return [] }
        if decoder.phase == .untilClose {
            // Drain first: bytes fed before EOF are normally already emitted.
            var events: [HTTP1Event<HTTPResponseHead>] = []
            do throws(HTTP1Error) {
                events = try drain()
            } catch {
                failure = error
                throw error
            }
            inMessage = false
            decoder.stop()
            events.append(.end(trailers: HTTPHeaders()))
            return events
        }
        if inMessage || decoder.headInProgress {
            failure = .badResponse("truncated")
            throw .badResponse("truncated")
        }
        return []
    }

    /// The framing rules applied to `head` (`toHEAD`: answer to a HEAD
    /// request). Useful when events are queued: `framing` describes only the
    /// last head returned.
    public static func framing(of head: HTTPResponseHead, toHEAD: Bool) throws(HTTP1Error) -> BodyFraming {
        try HTTP1Framing.response(head, toHEAD: toHEAD)
    }

    /// Bytes buffered but not yet consumed (after a 101, the first bytes of
    /// the new protocol): returns and clears them.
    public mutating func takeUnparsed() -> [UInt8] {
        pendingLine = nil
        return decoder.takeUnparsed()
    }

    /// The next queued expectation, or nil for a response no request asked for.
    private mutating func nextExpectation() -> Expectation? {
        guard expectationIndex < expectations.count else { return nil }
        let e = expectations[expectationIndex]
        expectationIndex += 1
        return e
    }

    private mutating func drain() throws(HTTP1Error) -> [HTTP1Event<HTTPResponseHead>] {
        var events: [HTTP1Event<HTTPResponseHead>] = []
        while true {
            switch try decoder.step() {
            case .needMore:
                return events
            case .startLine(let line):
                pendingLine = try HTTP1ResponseParser.parseStatusLine(line)
            case .head(let headers):
                guard let line = pendingLine else { throw .badResponse("missing status line") }
                pendingLine = nil
                let head = HTTPResponseHead(status: line.status, reason: line.reason,
                                            versionMinor: line.minor, headers: headers)
                if line.status < 200 && line.status != 101 {
                    decoder.skipMessage()  // interim response: not surfaced
                    continue
                }
                let expected = nextExpectation()
                solicited = expected != nil
                answered = false
                bodyMayFollow = expected?.toHEAD ?? false
                if line.status == 204 || line.status == 304 {
                    bodyMayFollow = bodyMayFollow || headers.contains("Transfer-Encoding")
                        || headers.values("Content-Length").contains { $0 != "0" }
                }
                let f = try HTTP1Framing.response(head, toHEAD: expected?.toHEAD ?? false)
                if line.status == 101 && !(expected?.upgrade ?? false) {
                    // A protocol switch nobody asked for: what follows is not HTTP.
                    throw .badResponse("101 Switching Protocols to a request without Upgrade")
                }
                framing = f
                events.append(.head(head))
                if line.status == 101 {
                    decoder.stop()
                    events.append(.end(trailers: HTTPHeaders()))
                    return events
                }
                persistent = line.minor == 1 && !headers.containsToken("Connection", "close")
                inMessage = true
                decoder.beginBody(f)
            case .body(let bytes):
                events.append(.body(bytes))
            case .end(let trailers):
                inMessage = false
                // Reusable if nothing follows in what was fed (a later feed clears it).
                isReusable = solicited && persistent && framing != .untilClose && !bodyMayFollow
                    && !decoder.hasInput
                events.append(.end(trailers: trailers))
                if solicited {
                    answered = true
                    if expectationIndex == expectations.count {
                        // Nothing else is expected: what follows is not parsed (see top).
                        if decoder.hasInput {
                            done = true
                            _ = decoder.takeUnparsed()
                        }
                        return events
                    }
                }
            }
        }
    }

    /// status-line = HTTP-version SP 3DIGIT SP [ reason-phrase ]
    /// (the SP before an empty reason may be missing).
    static func parseStatusLine(_ line: ArraySlice<UInt8>) throws(HTTP1Error)
        -> (status: Int, reason: String, minor: Int)
    {
        let s = line.startIndex, e = line.endIndex
        guard line.count >= 12,
              let minor = HTTP1RequestParser.parseVersion(line[s..<(s + 8)]) else {
            throw .badResponse("invalid status line")
        }
        guard line[s + 8] == HTTP1Bytes.sp,
              HTTP1Bytes.isDigit(line[s + 9]), HTTP1Bytes.isDigit(line[s + 10]),
              HTTP1Bytes.isDigit(line[s + 11]) else {
            throw .badResponse("invalid status line")
        }
        let status = Int(line[s + 9] - 0x30) * 100 + Int(line[s + 10] - 0x30) * 10
            + Int(line[s + 11] - 0x30)
        if status < 100 { throw .badResponse("invalid status code") }
        var reasonStart = s + 12
        if reasonStart < e {
            guard line[reasonStart] == HTTP1Bytes.sp else { throw .badResponse("invalid status line") }
            reasonStart += 1
        }
        var i = reasonStart
        while i < e {
            if !HTTP1Bytes.isFieldValueByte(line[i]) { throw .badResponse("invalid character in reason phrase") }
            i += 1
        }
        return (status, String(decoding: line[reasonStart..<e], as: UTF8.self), minor)
    }
}
