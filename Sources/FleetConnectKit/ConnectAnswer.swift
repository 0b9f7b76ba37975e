// ConnectAnswer: the head of the gateway's answer to fleet-connect's CONNECT,
// parsed from the bytes received so far (no I/O). The head ends at the first
// empty line and must fit in 8 KiB; what follows it is the tunnel's first bytes
// (after 200) or the error answer's body (otherwise). Interim 1xx heads are
// skipped. Only what the client needs is kept: status, reason, Content-Length
// and Retry-After.

public struct ConnectAnswer: Equatable, Sendable {
    public var status: Int
    public var reason: String
    public var contentLength: Int?
    public var retryAfter: String?
    /// Bytes from the start of the input to the end of this head (interim heads included).
    public var headLength: Int

    /// The largest head accepted (interim heads included).
    public static let maxHeadBytes = 8 * 1024

    public enum Parse: Equatable {
        case needMore
        case head(ConnectAnswer)
        case invalid(String)
    }

    /// Parses `bytes`, the answer as received so far.
    public static func parse(_ bytes: [UInt8]) -> Parse {
        var start = 0
        var guardCount = 0
        while guardCount < 64 {
            guardCount += 1
            guard let end = headEnd(bytes, from: start) else {
                return bytes.count > maxHeadBytes ? .invalid("answer head larger than 8 KiB") : .needMore
            }
            if end > maxHeadBytes { return .invalid("answer head larger than 8 KiB") }
            switch parseHead(bytes[start..<end]) {
            case .failure(let e):
                return .invalid(e.message)
            case .success(var answer):
                if answer.status >= 100 && answer.status < 200 {
                    start = end
                    continue
                }
                answer.headLength = end
                return .head(answer)
            }
        }
        return .invalid("too many interim answers")
    }

    /// The offset just past the empty line ending the head that starts at `from`.
    static func headEnd(_ b: [UInt8], from: Int) -> Int? {
        var i = from
        let limit = min(b.count, from + maxHeadBytes + 4)
        while i < limit {
            if b[i] == 10 {
                // "\n\n" or "\n\r\n": the line that just ended was empty.
                if i + 1 < b.count && b[i + 1] == 10 { return i + 2 }
                if i + 2 < b.count && b[i + 1] == 13 && b[i + 2] == 10 { return i + 3 }
            }
            i += 1
        }
        return nil
    }

    static func parseHead(_ head: ArraySlice<UInt8>) -> Result<ConnectAnswer, OptionError> {
        var lines: [ArraySlice<UInt8>] = []
        var lineStart = head.startIndex
        for i in head.indices where head[i] == 10 {
            var line = head[lineStart..<i]
            if line.last == 13 { line = line.dropLast() }
            lines.append(line)
            lineStart = i + 1
        }
        guard let statusLine = lines.first else { return .failure(OptionError("empty answer")) }
        // "HTTP/1.1 200 Connection established"
        let prefix = Array("HTTP/1.".utf8)
        guard statusLine.count >= 12, Array(statusLine.prefix(7)) == prefix,
              let minor = statusLine.dropFirst(7).first, minor == UInt8(ascii: "0") || minor == UInt8(ascii: "1"),
              statusLine[statusLine.startIndex + 8] == 32 else {
            return .failure(OptionError("not an HTTP/1.1 answer: '" + printable(statusLine.prefix(40)) + "'"))
        }
        let code = statusLine[(statusLine.startIndex + 9)..<(statusLine.startIndex + 12)]
        var status = 0
        for d in code {
            guard d >= 48 && d <= 57 else { return .failure(OptionError("bad status in '" + printable(statusLine.prefix(40)) + "'")) }
            status = status * 10 + Int(d - 48)
        }
        guard status >= 100 else { return .failure(OptionError("bad status " + String(status))) }
        var reason = statusLine.dropFirst(12)
        if reason.first == 32 { reason = reason.dropFirst() } else if !reason.isEmpty {
            return .failure(OptionError("bad status line '" + printable(statusLine.prefix(40)) + "'"))
        }
        var answer = ConnectAnswer(status: status, reason: printable(reason.prefix(200)), contentLength: nil,
                                   retryAfter: nil, headLength: 0)
        for line in lines.dropFirst() where !line.isEmpty {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex else {
                return .failure(OptionError("bad header line in the answer"))
            }
            let name = String(decoding: line[line.startIndex..<colon].map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 }, as: UTF8.self)
            var value = line[(colon + 1)...]
            while value.first == 32 || value.first == 9 { value = value.dropFirst() }
            while value.last == 32 || value.last == 9 { value = value.dropLast() }
            if name == "content-length" {
                guard let n = ConnectAnswer.decimal(value) else { return .failure(OptionError("bad Content-Length in the answer")) }
                if let old = answer.contentLength, old != n { return .failure(OptionError("two Content-Lengths in the answer")) }
                answer.contentLength = n
            } else if name == "retry-after" {
                answer.retryAfter = printable(value.prefix(40))
            }
        }
        return .success(answer)
    }

    static func decimal(_ s: ArraySlice<UInt8>) -> Int? {
        guard !s.isEmpty, s.count <= 12 else { return nil }
        var v = 0
        for b in s {
            guard b >= 48 && b <= 57 else { return nil }
            v = v * 10 + Int(b - 48)
        }
        return v
    }

    /// Bytes as text for a one-line message: controls and non-ASCII become '?'.
    public static func printable(_ s: ArraySlice<UInt8>) -> String {
        String(decoding: s.map { $0 >= 32 && $0 < 127 ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
    }
}

func printable(_ s: ArraySlice<UInt8>) -> String { ConnectAnswer.printable(s) }
