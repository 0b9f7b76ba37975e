// HTTP1RequestParser: incremental, strict HTTP/1.x request parser for the
// server side of a connection. Feed it bytes as they arrive; it returns the
// events those bytes complete (.head, streamed .body pieces, .end) and keeps
// going across pipelined requests. Line scanning, limits, field validation and
// body decoding live in HTTP1MessageDecoder; this file parses the request line
// (RFC 9112 §3) and applies the request framing rules (HTTP1Framing).
// Any error poisons the parser: answer `error.status` and close.
import HTTPCore

public struct HTTP1RequestParser: Sendable {
    private var decoder: HTTP1MessageDecoder
    private var pendingLine: (method: String, target: String, minor: Int)? = nil
    private var failure: HTTP1Error? = nil

    /// Body framing of the request whose head was last returned.
    public private(set) var framing: BodyFraming = .none
    /// True between a .head and its .end.
    public private(set) var inMessage = false
    /// A CONNECT request ended: what follows is not HTTP (a tunnel's bytes, taken
    /// with `takeUnparsed`, or nothing), so it is kept, never parsed.
    public private(set) var holdsTunnelBytes = false
    private var inCONNECT = false

    public init(limits: HTTP1Limits = HTTP1Limits()) {
        decoder = HTTP1MessageDecoder(isRequest: true, limits: limits)
    }

    /// Feeds bytes; returns the events they complete, in order. After the .end
    /// of one request, following bytes are parsed as the next request.
    public mutating func feed(_ bytes: [UInt8]) throws(HTTP1Error) -> [HTTP1Event<HTTPRequestHead>] {
        if let failure { throw failure }
        decoder.append(bytes)
        if holdsTunnelBytes { return [] }
        do throws(HTTP1Error) {
            return try drain()
        } catch {
            failure = error
            throw error
        }
    }

    /// The peer closed its sending side. Returns [] if no request is in
    /// progress; throws .badRequest("truncated") if one is incomplete.
    public mutating func feedEOF() throws(HTTP1Error) -> [HTTP1Event<HTTPRequestHead>] {
        if let failure { throw failure }
        if holdsTunnelBytes { return [] }
        if inMessage || decoder.headInProgress {
            failure = .badRequest("truncated")
            throw .badRequest("truncated")
        }
        return []
    }

    /// The framing rules applied to `head` (also validates Host). Useful when
    /// events are queued: `framing` describes only the last head returned.
    public static func framing(of head: HTTPRequestHead) throws(HTTP1Error) -> BodyFraming {
        try HTTP1Framing.request(head)
    }

    /// Bytes buffered but not yet consumed (e.g. after an upgrade request):
    /// returns and clears them. A partially received head is included (and
    /// forgotten by the parser).
    public mutating func takeUnparsed() -> [UInt8] {
        pendingLine = nil
        return decoder.takeUnparsed()
    }

    private mutating func drain() throws(HTTP1Error) -> [HTTP1Event<HTTPRequestHead>] {
        var events: [HTTP1Event<HTTPRequestHead>] = []
        while true {
            switch try decoder.step() {
            case .needMore:
                return events
            case .startLine(let line):
                pendingLine = try HTTP1RequestParser.parseRequestLine(line)
            case .head(let headers):
                guard let line = pendingLine else { throw .badRequest("missing request line") }
                pendingLine = nil
                let head = HTTPRequestHead(method: line.method, target: line.target,
                                           versionMinor: line.minor, headers: headers)
                let f = try HTTP1Framing.request(head)
                framing = f
                inMessage = true
                decoder.beginBody(f)
                inCONNECT = line.method == "CONNECT"
                events.append(.head(head))
            case .body(let bytes):
                events.append(.body(bytes))
            case .end(let trailers):
                inMessage = false
                events.append(.end(trailers: trailers))
                if inCONNECT {
                    holdsTunnelBytes = true
                    return events
                }
            }
        }
    }

    /// request-line = method SP request-target SP HTTP-version (single spaces).
    static func parseRequestLine(_ line: ArraySlice<UInt8>) throws(HTTP1Error)
        -> (method: String, target: String, minor: Int)
    {
        let s = line.startIndex, e = line.endIndex
        var i = s
        while i < e && HTTP1Bytes.isTchar(line[i]) { i += 1 }
        if i == s { throw .badRequest("invalid method") }
        guard i < e && line[i] == HTTP1Bytes.sp else {
            throw .badRequest(i == e ? "incomplete request line" : "invalid method")
        }
        let method = String(decoding: line[s..<i], as: UTF8.self)
        i += 1
        let targetStart = i
        while i < e && line[i] != HTTP1Bytes.sp {
            let b = line[i]
            if b < 0x20 || b == 0x7F { throw .badRequest("invalid character in request target") }
            i += 1
        }
        if i == targetStart { throw .badRequest("empty request target") }
        if i == e { throw .badRequest("missing HTTP version") }
        let target = String(decoding: line[targetStart..<i], as: UTF8.self)
        guard let minor = parseVersion(line[(i + 1)...]) else {
            throw .badRequest("unsupported HTTP version")
        }
        return (method, target, minor)
    }

    /// Exactly "HTTP/1.0" or "HTTP/1.1" -> 0 or 1.
    static func parseVersion(_ v: ArraySlice<UInt8>) -> Int? {
        guard v.count == 8 else { return nil }
        let s = v.startIndex
        // "HTTP/1." is case-sensitive (RFC 9112 §2.3).
        let prefix: StaticString = "HTTP/1."
        let p = prefix.utf8Start
        for k in 0..<7 where v[s + k] != p[k] { return nil }
        switch v[s + 7] {
        case 0x30: return 0
        case 0x31: return 1
        default: return nil
        }
    }
}
