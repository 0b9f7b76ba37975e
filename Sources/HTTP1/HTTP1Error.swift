// HTTP1Error: the one error type of the HTTP1 module (typed throws only, so it
// works in Embedded Swift). Each case maps to the status a server or proxy
// answers with: malformed request 400, oversized head 431, unsupported
// transfer coding 501, malformed upstream response 502. After any error the
// parser is poisoned (it rethrows the same error) and the connection must close.

public enum HTTP1Error: Error, Equatable, CustomStringConvertible {
    /// Malformed request (answer 400 and close).
    case badRequest(String)
    /// Head larger than `maxHeadBytes` or more than `maxHeaders` fields (431).
    case headersTooLarge
    /// Malformed response from upstream (answer 502 to the client).
    case badResponse(String)
    /// A transfer coding other than a sole final `chunked` in a request (501).
    case unsupportedTransferEncoding

    /// HTTP status code to answer with.
    public var status: Int {
        switch self {
        case .badRequest: return 400
        case .headersTooLarge: return 431
        case .badResponse: return 502
        case .unsupportedTransferEncoding: return 501
        }
    }

    public var description: String {
        switch self {
        case .badRequest(let why): return "bad request: " + why
        case .headersTooLarge: return "request header fields too large"
        case .badResponse(let why): return "bad response: " + why
        case .unsupportedTransferEncoding: return "unsupported transfer encoding"
        }
    }
}
