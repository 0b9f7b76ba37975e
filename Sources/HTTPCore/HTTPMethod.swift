// HTTPMethod: what the programs need to know about a request method, in one place.
// Methods are case-sensitive tokens (RFC 9110 §9.1): "get" is not GET.

public enum HTTPMethod {
    /// Idempotent (RFC 9110 §9.2.2): sending the request twice has the effect of
    /// sending it once, so a request lost with its connection may go again.
    public static func isIdempotent(_ method: String) -> Bool {
        switch method {
        case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE": return true
        default: return false
        }
    }
}
