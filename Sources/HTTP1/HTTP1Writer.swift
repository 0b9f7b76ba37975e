// HTTP1Writer: serialises heads and chunked-body pieces to bytes. Output is
// always well-formed framing: CTL bytes (CR, LF, NUL, ...) in any string are
// written as SP so that a value can never start a new line (no response
// splitting), an empty chunk is written as nothing (an accidental "0\r\n\r\n"
// would end the body), and the version is always HTTP/1.0 or HTTP/1.1.
import HTTPCore

public enum HTTP1Writer {
    private static let crlf: [UInt8] = [HTTP1Bytes.cr, HTTP1Bytes.lf]

    /// "METHOD target HTTP/1.x\r\nName: value\r\n...\r\n"
    public static func requestHead(_ head: HTTPRequestHead) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64 + estimate(head.headers))
        HTTP1Bytes.appendSanitized(head.method, to: &out)
        out.append(HTTP1Bytes.sp)
        HTTP1Bytes.appendSanitized(head.target, to: &out)
        out.append(HTTP1Bytes.sp)
        appendVersion(head.versionMinor, to: &out)
        out.append(contentsOf: crlf)
        appendFields(head.headers, to: &out)
        out.append(contentsOf: crlf)
        return out
    }

    /// "HTTP/1.x status reason\r\nName: value\r\n...\r\n"
    public static func responseHead(_ head: HTTPResponseHead) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64 + estimate(head.headers))
        appendVersion(head.versionMinor, to: &out)
        out.append(HTTP1Bytes.sp)
        let status = head.status < 0 ? 0 : (head.status > 999 ? 999 : head.status)
        out.append(UInt8(0x30 + status / 100))
        out.append(UInt8(0x30 + (status / 10) % 10))
        out.append(UInt8(0x30 + status % 10))
        out.append(HTTP1Bytes.sp)
        HTTP1Bytes.appendSanitized(head.reason, to: &out)
        out.append(contentsOf: crlf)
        appendFields(head.headers, to: &out)
        out.append(contentsOf: crlf)
        return out
    }

    /// One chunk: hex size CRLF data CRLF. Empty input gives [] (the last
    /// chunk is only ever written by `lastChunk`).
    public static func chunk(_ data: [UInt8]) -> [UInt8] {
        if data.isEmpty { return [] }
        var out: [UInt8] = []
        out.reserveCapacity(data.count + 20)
        HTTP1Bytes.appendHex(data.count, to: &out)
        out.append(contentsOf: crlf)
        out.append(contentsOf: data)
        out.append(contentsOf: crlf)
        return out
    }

    /// "0\r\n" + trailer fields + "\r\n": ends a chunked body.
    public static func lastChunk(trailers: HTTPHeaders = HTTPHeaders()) -> [UInt8] {
        var out: [UInt8] = [0x30, HTTP1Bytes.cr, HTTP1Bytes.lf]
        appendFields(trailers, to: &out)
        out.append(contentsOf: crlf)
        return out
    }

    /// Standard reason phrase for common status codes, "Unknown" otherwise.
    public static func reasonPhrase(_ status: Int) -> String { HTTPResponseHead.reasonPhrase(status) }

    // MARK: helpers

    private static func appendVersion(_ minor: Int, to out: inout [UInt8]) {
        let prefix: StaticString = "HTTP/1."
        out.append(contentsOf: UnsafeBufferPointer(start: prefix.utf8Start,
                                                   count: prefix.utf8CodeUnitCount))
        out.append(minor == 0 ? 0x30 : 0x31)
    }

    private static func appendFields(_ headers: HTTPHeaders, to out: inout [UInt8]) {
        for field in headers {
            HTTP1Bytes.appendSanitized(field.name, to: &out)
            out.append(HTTP1Bytes.colon)
            out.append(HTTP1Bytes.sp)
            HTTP1Bytes.appendSanitized(field.value, to: &out)
            out.append(contentsOf: crlf)
        }
    }

    private static func estimate(_ headers: HTTPHeaders) -> Int {
        var n = 0
        for field in headers { n += field.name.utf8.count + field.value.utf8.count + 4 }
        return n
    }
}
