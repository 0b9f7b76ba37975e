// HTTP1Event, BodyFraming, HTTP1Limits: the small value types the parsers
// speak in. A parser turns bytes into a flat stream of events per message:
// one .head, zero or more .body pieces (streamed, never the whole body
// buffered), one .end carrying the chunked trailers (empty otherwise).
// HTTP1's API speaks HTTPCore's types (HTTPHeaders, the message heads): importing HTTP1 imports them.
@_exported import HTTPCore

/// One parsing event. `Head` is `HTTPRequestHead` or `HTTPResponseHead`.
public enum HTTP1Event<Head> {
    case head(Head)
    case body([UInt8])
    case end(trailers: HTTPHeaders)
}

extension HTTP1Event: Equatable where Head: Equatable {}
extension HTTP1Event: Sendable where Head: Sendable {}

/// How the body of the current message is delimited (RFC 9112 §6.3).
public enum BodyFraming: Equatable, Sendable {
    /// No body at all (requests without Content-Length/Transfer-Encoding,
    /// HEAD responses, 1xx, 204, 304).
    case none
    /// Exactly this many bytes.
    case contentLength(Int)
    /// Chunked transfer coding (trailers possible).
    case chunked
    /// Response body ends when the connection closes.
    case untilClose
}

/// Resource limits applied while parsing.
public struct HTTP1Limits: Equatable, Sendable {
    /// Maximum size of a head (start line + fields + CRLFs); also applied to a
    /// trailer section. Exceeding it is `headersTooLarge`.
    public var maxHeadBytes: Int = 16384
    /// Maximum number of fields in a head (and in a trailer section).
    public var maxHeaders: Int = 100
    /// Maximum length of a chunk-size line (size + extensions, without CRLF).
    public var maxChunkLineBytes: Int = 1024

    public init(maxHeadBytes: Int = 16384, maxHeaders: Int = 100, maxChunkLineBytes: Int = 1024) {
        self.maxHeadBytes = maxHeadBytes
        self.maxHeaders = maxHeaders
        self.maxChunkLineBytes = maxChunkLineBytes
    }
}
