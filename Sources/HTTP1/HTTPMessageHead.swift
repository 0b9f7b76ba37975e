// HTTPRequestHead / HTTPResponseHead: the parsed (or to-be-written) start line
// plus fields of a message. Plain values: the parsers fill them, HTTP1Writer
// serialises them, proxies edit `headers` in between.

public struct HTTPRequestHead: Equatable, Sendable {
    /// Method token as received (case-sensitive, e.g. "GET").
    public var method: String
    /// Request target as received (origin-form, absolute-form, authority-form or "*").
    public var target: String
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var versionMinor: Int
    public var headers: HTTPHeaders

    public init(method: String, target: String, versionMinor: Int = 1,
                headers: HTTPHeaders = HTTPHeaders()) {
        self.method = method
        self.target = target
        self.versionMinor = versionMinor
        self.headers = headers
    }
}

public struct HTTPResponseHead: Equatable, Sendable {
    /// Three-digit status code (100...999).
    public var status: Int
    /// Reason phrase as received (may be empty).
    public var reason: String
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var versionMinor: Int
    public var headers: HTTPHeaders

    /// `reason` defaults to the standard phrase for `status`.
    public init(status: Int, reason: String? = nil, versionMinor: Int = 1,
                headers: HTTPHeaders = HTTPHeaders()) {
        self.status = status
        self.reason = reason ?? HTTP1Writer.reasonPhrase(status)
        self.versionMinor = versionMinor
        self.headers = headers
    }
}
