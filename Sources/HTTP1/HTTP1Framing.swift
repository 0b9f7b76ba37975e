// HTTP1Framing: decides how a message body is delimited (RFC 9112 §6.3),
// strictly, because disagreeing with a peer about where a message ends is
// what request smuggling exploits:
//   requests  - Transfer-Encoding must be exactly "chunked": chunked not
//               final or applied twice is 400 (RFC 9112 §6.3), another coding
//               before a final chunked is 501; never together with
//               Content-Length, never in HTTP/1.0 (400);
//               Content-Length must be one field with one value (400, even
//               when repeated values agree); neither -> no body.
//   responses - HEAD / 1xx / 204 / 304 have no body; Transfer-Encoding must
//               be exactly "chunked": any other coding (`gzip`, close-delimited
//               per RFC 9112 §6.3, or `gzip, chunked`) would reach the user as
//               bytes in a coding nothing names any more (HTTP/2 has no
//               Transfer-Encoding), and TE in HTTP/1.0 is faulty framing
//               (§6.1): all 502; Content-Length must be one valid value (502);
//               CL together with TE is rejected as well (§6.3 ¶3: "ought to be
//               handled as an error"); otherwise until close.
import HTTPCore

enum HTTP1Framing {
    static func request(_ head: HTTPRequestHead) throws(HTTP1Error) -> BodyFraming {
        let headers = head.headers
        let hosts = headers.count("Host")
        if hosts > 1 { throw .badRequest("multiple Host fields") }
        if hosts == 0 && head.versionMinor == 1 { throw .badRequest("missing Host field") }

        let hasTE = headers.contains("Transfer-Encoding")
        let hasCL = headers.contains("Content-Length")
        if hasTE {
            if hasCL { throw .badRequest("both Transfer-Encoding and Content-Length") }
            if head.versionMinor == 0 { throw .badRequest("Transfer-Encoding in HTTP/1.0 request") }
            let codings = transferCodings(headers)
            if codings.isEmpty { throw .badRequest("empty Transfer-Encoding") }
            // RFC 9112 §6.3: chunked not final -> the length cannot be known: 400.
            // Chunked applied twice is malformed (§7): 400. Chunked after a coding
            // we do not decode (gzip, chunked): 501 (§6.1).
            guard let last = codings.last, HTTP1Bytes.equalsIgnoringCase(last, lowercase: "chunked") else {
                throw .badRequest("chunked is not the final transfer coding")
            }
            for c in codings.dropLast() where HTTP1Bytes.equalsIgnoringCase(c, lowercase: "chunked") {
                throw .badRequest("chunked applied twice")
            }
            guard codings.count == 1 else { throw .unsupportedTransferEncoding }
            return .chunked
        }
        if hasCL {
            guard let n = contentLength(headers) else { throw .badRequest("invalid Content-Length") }
            return .contentLength(n)
        }
        return .none
    }

    static func response(_ head: HTTPResponseHead, toHEAD: Bool) throws(HTTP1Error) -> BodyFraming {
        let status = head.status
        if toHEAD || (status >= 100 && status < 200) || status == 204 || status == 304 {
            return .none
        }
        let headers = head.headers
        let hasTE = headers.contains("Transfer-Encoding")
        let hasCL = headers.contains("Content-Length")
        if hasTE {
            if hasCL { throw .badResponse("both Transfer-Encoding and Content-Length") }
            if head.versionMinor == 0 { throw .badResponse("Transfer-Encoding in an HTTP/1.0 response") }
            let codings = transferCodings(headers)
            guard codings.count == 1, HTTP1Bytes.equalsIgnoringCase(codings[0], lowercase: "chunked") else {
                throw .badResponse("Transfer-Encoding other than chunked")
            }
            return .chunked
        }
        if hasCL {
            guard let n = contentLength(headers) else { throw .badResponse("invalid Content-Length") }
            return .contentLength(n)
        }
        return .untilClose
    }

    /// Non-empty transfer codings of every Transfer-Encoding field, in order.
    static func transferCodings(_ headers: HTTPHeaders) -> [ArraySlice<UInt8>] {
        var out: [ArraySlice<UInt8>] = []
        for value in headers.values("Transfer-Encoding") {
            for element in HTTP1Bytes.listElements(value) where !element.isEmpty {
                out.append(element)
            }
        }
        return out
    }

    /// The value of the one Content-Length field, or nil if it is not exactly one
    /// field holding one 1*DIGIT that does not overflow. Repeated values, even equal
    /// ones ("5, 5" or the field twice), are refused rather than folded (RFC 9110
    /// §8.6 allows either): a folded message would be forwarded with both, and a
    /// next hop that refuses them (HTTP/2 does) turns the request into a 502.
    static func contentLength(_ headers: HTTPHeaders) -> Int? {
        let values = headers.values("Content-Length")
        guard values.count == 1 else { return nil }
        let elements = HTTP1Bytes.listElements(values[0])
        guard elements.count == 1 else { return nil }
        return HTTP1Bytes.parseDecimal(elements[0])
    }
}
