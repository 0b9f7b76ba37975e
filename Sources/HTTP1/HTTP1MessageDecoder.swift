// HTTP1MessageDecoder: the byte-level state machine shared by the request and
// response parsers. It owns the input buffer and knows how to
//   * find CRLF-terminated lines (strict: bare CR / bare LF are errors),
//     resuming its scan where it stopped so byte-at-a-time input stays O(n);
//   * enforce the head / trailer / chunk-line size limits the moment they are
//     exceeded (errors depend only on stream position, never on how the input
//     was split);
//   * validate field lines and collect them into HTTPHeaders;
//   * stream a body framed by length, chunked coding or connection close.
// It does not understand start lines or framing rules: it hands the start line
// and the finished field block to its owner (`step()` results), which decides
// the framing and calls `beginBody`.
//
// Buffer discipline: `buf[pos...]` is unconsumed input. While a head or a
// trailer section is being read, `pos` stays at its first byte (so an
// incomplete head is still "unparsed") and `lineStart`/`scan` walk ahead.
// Consumed bytes are dropped at the next `append`.
import HTTPCore

struct HTTP1MessageDecoder {
    enum Step {
        case needMore
        case startLine(ArraySlice<UInt8>)
        case head(HTTPHeaders)
        case body([UInt8])
        case end(HTTPHeaders)
    }

    enum Phase {
        case head           // reading a head (start line + fields)
        case framing        // head delivered; owner must call beginBody/skip/stop
        case length         // `remaining` body bytes left (0: emit .end next)
        case chunkLine      // reading a chunk-size line
        case chunkData      // `remaining` bytes of chunk data left
        case chunkCR        // expecting the CR after chunk data
        case chunkLF        // expecting the LF after chunk data
        case trailers       // reading the trailer section
        case untilClose     // everything up to EOF is body
        case stopped        // upgraded / finished: bytes are only buffered
    }

    let isRequest: Bool
    let limits: HTTP1Limits

    private(set) var buf: [UInt8] = []
    private(set) var pos = 0
    private var lineStart = 0
    private var scan = 0
    private(set) var phase: Phase = .head
    private var sawStartLine = false
    private var fields = HTTPHeaders()
    private var remaining = 0

    init(isRequest: Bool, limits: HTTP1Limits) {
        self.isRequest = isRequest
        self.limits = limits
    }

    func malformed(_ why: String) -> HTTP1Error {
        isRequest ? .badRequest(why) : .badResponse(why)
    }

    /// Bytes received and not yet consumed.
    var hasInput: Bool { pos < buf.count }

    /// True if the current head has started (start line seen or bytes pending).
    var headInProgress: Bool {
        phase == .head && (sawStartLine || pos < buf.count)
    }

    // MARK: input

    mutating func append(_ bytes: [UInt8]) {
        if pos > 0 {
            if pos == buf.count {
                buf = []
            } else {
                buf.removeSubrange(0..<pos)
            }
            lineStart -= pos
            scan -= pos
            pos = 0
        }
        if buf.isEmpty {
            buf = bytes  // shares storage with the caller: no copy
        } else {
            buf.append(contentsOf: bytes)
        }
    }

    /// Returns and drops every unconsumed byte; a partially read head or
    /// trailer section is forgotten.
    mutating func takeUnparsed() -> [UInt8] {
        let out = pos == 0 ? buf : Array(buf[pos...])
        buf = []
        pos = 0
        lineStart = 0
        scan = 0
        if phase == .head {
            sawStartLine = false
            fields = HTTPHeaders()
        }
        return out
    }

    // MARK: control, called by the owner after a .head step

    mutating func beginBody(_ framing: BodyFraming) {
        switch framing {
        case .none:
            phase = .length
            remaining = 0
        case .contentLength(let n):
            phase = .length
            remaining = n
        case .chunked:
            phase = .chunkLine
        case .untilClose:
            phase = .untilClose
        }
    }

    /// Drops the head just delivered (interim 1xx response) and reads the next.
    mutating func skipMessage() {
        phase = .head
    }

    /// Stops interpreting input (after 101 or EOF); bytes are only buffered.
    mutating func stop() {
        phase = .stopped
    }

    // MARK: stepping

    /// Advances by one event. Each call either consumes input or changes phase,
    /// so callers loop until `.needMore`.
    mutating func step() throws(HTTP1Error) -> Step {
        while true {
            switch phase {
            case .head:
                guard let line = try nextLine(sectionStart: pos) else { return .needMore }
                if !sawStartLine {
                    if line.isEmpty {  // RFC 9112 §2.2: ignore empty lines before the start line
                        pos = lineStart
                        continue
                    }
                    sawStartLine = true
                    return .startLine(buf[line])
                }
                if line.isEmpty {
                    pos = lineStart
                    phase = .framing
                    sawStartLine = false
                    let head = fields
                    fields = HTTPHeaders()
                    return .head(head)
                }
                try addField(line)

            case .framing, .stopped:
                return .needMore

            case .length:
                if remaining == 0 {
                    phase = .head
                    return .end(HTTPHeaders())
                }
                guard pos < buf.count else { return .needMore }
                let piece = take(min(remaining, buf.count - pos))
                remaining -= piece.count
                return .body(piece)

            case .chunkLine:
                guard let line = try nextLine(sectionStart: nil) else { return .needMore }
                pos = lineStart
                let size = try parseChunkLine(buf[line])
                if size == 0 {
                    phase = .trailers
                } else {
                    remaining = size
                    phase = .chunkData
                }

            case .chunkData:
                guard pos < buf.count else { return .needMore }
                let piece = take(min(remaining, buf.count - pos))
                remaining -= piece.count
                if remaining == 0 { phase = .chunkCR }
                return .body(piece)

            case .chunkCR, .chunkLF:
                guard pos < buf.count else { return .needMore }
                let want = phase == .chunkCR ? HTTP1Bytes.cr : HTTP1Bytes.lf
                guard buf[pos] == want else { throw malformed("chunk data not followed by CRLF") }
                pos += 1
                lineStart = pos
                scan = pos
                phase = phase == .chunkCR ? .chunkLF : .chunkLine

            case .trailers:
                guard let line = try nextLine(sectionStart: pos) else { return .needMore }
                if line.isEmpty {
                    pos = lineStart
                    phase = .head
                    let trailers = fields
                    fields = HTTPHeaders()
                    return .end(trailers)
                }
                try addField(line)

            case .untilClose:
                guard pos < buf.count else { return .needMore }
                return .body(take(buf.count - pos))
            }
        }
    }

    /// Removes `n` bytes at `pos` and returns them (without copying when they
    /// are the whole buffer).
    private mutating func take(_ n: Int) -> [UInt8] {
        let out: [UInt8]
        if pos == 0 && n == buf.count {
            out = buf
            buf = []
            pos = 0
        } else {
            out = Array(buf[pos..<(pos + n)])
            pos += n
        }
        lineStart = pos
        scan = pos
        return out
    }

    // MARK: lines

    /// Finds the next CRLF-terminated line starting at `lineStart`; returns the
    /// range of its content (without CRLF) and moves `lineStart` past it, or
    /// nil if more input is needed. With `sectionStart` the whole section
    /// (from that index, CRLFs included) is limited to `maxHeadBytes`;
    /// without it the line content is limited to `maxChunkLineBytes`.
    private mutating func nextLine(sectionStart: Int?) throws(HTTP1Error) -> Range<Int>? {
        let end = buf.count
        var sectionLimit = Int.max, lineLimit = Int.max
        if let start = sectionStart {
            sectionLimit = HTTP1MessageDecoder.saturatingAdd(start, limits.maxHeadBytes)
        } else {
            lineLimit = HTTP1MessageDecoder.saturatingAdd(lineStart, limits.maxChunkLineBytes)
        }
        var i = scan
        while i < end {
            if i >= sectionLimit { throw .headersTooLarge }
            let b = buf[i]
            if b == HTTP1Bytes.lf {
                guard i > lineStart && buf[i - 1] == HTTP1Bytes.cr else {
                    throw malformed("bare LF")
                }
                let line = lineStart..<(i - 1)
                lineStart = i + 1
                scan = i + 1
                return line
            }
            if i > lineStart && buf[i - 1] == HTTP1Bytes.cr { throw malformed("bare CR") }
            if i >= lineLimit && b != HTTP1Bytes.cr { throw malformed("chunk line too long") }
            i += 1
        }
        scan = i
        return nil
    }

    private static func saturatingAdd(_ a: Int, _ b: Int) -> Int {
        let (r, overflow) = a.addingReportingOverflow(b)
        return overflow ? Int.max : r
    }

    /// Validates one field line and appends it to `fields`.
    private mutating func addField(_ line: Range<Int>) throws(HTTP1Error) {
        if fields.count >= limits.maxHeaders { throw .headersTooLarge }
        let s = line.lowerBound, e = line.upperBound
        let first = buf[s]
        if HTTP1Bytes.isOWS(first) { throw malformed("obs-fold or leading whitespace in field line") }
        var i = s
        while i < e && HTTP1Bytes.isTchar(buf[i]) { i += 1 }
        guard i < e && buf[i] == HTTP1Bytes.colon else {
            if i < e && HTTP1Bytes.isOWS(buf[i]) { throw malformed("whitespace before colon") }
            throw malformed(i < e ? "invalid character in field name" : "field line without colon")
        }
        if i == s { throw malformed("empty field name") }
        var vs = i + 1, ve = e
        while vs < ve && HTTP1Bytes.isOWS(buf[vs]) { vs += 1 }
        while ve > vs && HTTP1Bytes.isOWS(buf[ve - 1]) { ve -= 1 }
        var j = vs
        while j < ve {
            if !HTTP1Bytes.isFieldValueByte(buf[j]) { throw malformed("invalid character in field value") }
            j += 1
        }
        fields.add(String(decoding: buf[s..<i], as: UTF8.self),
                   String(decoding: buf[vs..<ve], as: UTF8.self))
    }

    /// chunk-size [ chunk-ext ] (RFC 9112 §7.1): 1*HEXDIG, then
    /// *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ).
    /// Extensions are validated and ignored. Returns the size.
    private func parseChunkLine(_ line: ArraySlice<UInt8>) throws(HTTP1Error) -> Int {
        var i = line.startIndex
        let e = line.endIndex
        var size = 0
        while i < e, let d = HTTP1Bytes.hexValue(line[i]) {
            if size > (HTTP1Bytes.maxLength - d) / 16 { throw malformed("chunk size too large") }
            size = size * 16 + d
            i += 1
        }
        if i == line.startIndex { throw malformed("invalid chunk size") }
        while i < e {
            while i < e && HTTP1Bytes.isOWS(line[i]) { i += 1 }
            guard i < e && line[i] == HTTP1Bytes.semicolon else { throw malformed("invalid chunk size") }
            i += 1
            while i < e && HTTP1Bytes.isOWS(line[i]) { i += 1 }
            let nameStart = i
            while i < e && HTTP1Bytes.isTchar(line[i]) { i += 1 }
            if i == nameStart { throw malformed("invalid chunk extension") }
            var k = i
            while k < e && HTTP1Bytes.isOWS(line[k]) { k += 1 }
            guard k < e && line[k] == HTTP1Bytes.equals else { continue }
            i = k + 1
            while i < e && HTTP1Bytes.isOWS(line[i]) { i += 1 }
            if i < e && line[i] == HTTP1Bytes.dquote {
                i = try skipQuotedString(line, from: i)
            } else {
                let valueStart = i
                while i < e && HTTP1Bytes.isTchar(line[i]) { i += 1 }
                if i == valueStart { throw malformed("invalid chunk extension") }
            }
        }
        return size
    }

    /// Returns the index just past the quoted-string starting at `from` (a DQUOTE).
    private func skipQuotedString(_ line: ArraySlice<UInt8>, from: Int) throws(HTTP1Error) -> Int {
        var i = from + 1
        let e = line.endIndex
        while i < e {
            let b = line[i]
            if b == HTTP1Bytes.dquote { return i + 1 }
            if b == HTTP1Bytes.backslash {
                i += 1
                guard i < e && HTTP1Bytes.isFieldValueByte(line[i]) else { break }
            } else if !HTTP1Bytes.isFieldValueByte(b) {
                break
            }
            i += 1
        }
        throw malformed("invalid chunk extension")
    }
}
