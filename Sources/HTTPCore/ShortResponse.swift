// ShortResponse: a complete response with a short body that a program makes up
// itself (an error answer, an admin page), built one way whatever protocol
// writes it. HTTP1Writer writes `head` then `body`; an HTTP/2 side sends
// HTTPTranslation.http2Response(from: head), which drops Connection, then `body`.
// A HEAD request gets the head only: the writer decides, the length stays.

public struct ShortResponse: Sendable {
    public var head: HTTPResponseHead
    public var body: [UInt8]

    /// Fields in this order: `fields` (e.g. WWW-Authenticate), Content-Type,
    /// Content-Length, Retry-After (seconds) when given, `Connection: close` when `close`.
    public init(status: Int, body: String, contentType: String, fields: HTTPHeaders = HTTPHeaders(),
                retryAfter: Int? = nil, close: Bool = false) {
        self.body = Array(body.utf8)
        var h = fields
        h.add("Content-Type", contentType)
        h.add("Content-Length", String(self.body.count))
        if let retryAfter { h.add("Retry-After", String(retryAfter)) }
        if close { h.add("Connection", "close") }
        head = HTTPResponseHead(status: status, versionMinor: 1, headers: h)
    }

    /// An error answer: `message` and a newline as UTF-8 text.
    public static func error(_ status: Int, _ message: String, fields: HTTPHeaders = HTTPHeaders(),
                             retryAfter: Int? = nil, close: Bool = false) -> ShortResponse {
        ShortResponse(status: status, body: message + "\n", contentType: "text/plain; charset=utf-8",
                      fields: fields, retryAfter: retryAfter, close: close)
    }
}
