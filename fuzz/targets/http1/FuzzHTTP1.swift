// fuzz-http1: the HTTP/1.1 request parser (and, for inputs that start with
// "HTTP/", the response parser), on arbitrary bytes.
//
// Each input is parsed three ways: in one piece, one byte at a time, and in
// pieces cut at points derived from the input. Invariants:
//   * no crash, no hang (libFuzzer's -timeout);
//   * the split does not matter: the same events (body pieces merged) and the
//     same error, whatever the cuts (a split run that fails has seen a prefix
//     of the events of the byte-at-a-time run);
//   * every head returned is well-formed: token method, a target without SP
//     or CTL, HTTP/1.0 or 1.1, token field names, values without CR/LF/NUL
//     and without surrounding whitespace, one Host in HTTP/1.1, never both
//     Transfer-Encoding and Content-Length (the smuggling rules);
//   * `framing` after a head equals `framing(of: head)`; a Content-Length
//     body has exactly that many bytes before its .end; no body without one;
//   * a rejected message stays rejected: after an error, `feed` (with or
//     without bytes) and `feedEOF` throw the same error;
//   * a head written back by HTTP1Writer parses to the same head;
//   * responses: `isReusable` (may the connection carry the next request) is
//     the same whatever the split, never inside a message, never after 101.
import HTTP1

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data!, count: size))
    if bytes.starts(with: Array("HTTP/".utf8)) {
        checkResponses(bytes)
    } else {
        checkRequests(bytes)
    }
    return 0
}

func fail(_ what: String, _ input: [UInt8]) -> Never {
    fatalError("fuzz-http1 invariant broken: " + what + " (input " + String(input.count) + " bytes)")
}

// MARK: normalized events

enum Norm<Head: Equatable>: Equatable {
    case head(Head)
    case body([UInt8])
    case end(HTTPHeaders)
}

struct Run<Head: Equatable> {
    var events: [Norm<Head>] = []
    var error: HTTP1Error? = nil
    /// Responses: the parser's `isReusable` at the end of the input.
    var reusable = false

    mutating func add(_ evs: [HTTP1Event<Head>]) {
        for e in evs {
            switch e {
            case .head(let h): events.append(.head(h))
            case .end(let t): events.append(.end(t))
            case .body(let b):
                if b.isEmpty { continue }
                if case .body(let prev)? = events.last {
                    events[events.count - 1] = .body(prev + b)
                } else {
                    events.append(.body(b))
                }
            }
        }
    }

    /// `self` (a run that may have stopped early) is a prefix of `full`.
    func isPrefix(of full: Run<Head>) -> Bool {
        guard events.count <= full.events.count else { return false }
        for (i, e) in events.enumerated() {
            if e == full.events[i] { continue }
            // The last body piece may be cut short.
            guard i == events.count - 1, case .body(let a) = e, case .body(let b) = full.events[i],
                  b.starts(with: a) else { return false }
        }
        return true
    }
}

/// Cut points derived from the input (deterministic, so a crash reproduces).
func cuts(_ bytes: [UInt8]) -> [Int] {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    var out: [Int] = []
    var at = 0
    while at < bytes.count {
        h ^= h >> 29; h = h &* 0xbf58_476d_1ce4_e5b9; h ^= h >> 32
        at += 1 + Int(h % 64)
        out.append(min(at, bytes.count))
    }
    return out
}

// MARK: requests

func checkRequests(_ input: [UInt8]) {
    // Small limits too, so that the limit paths are reached with small inputs.
    let small = HTTP1Limits(maxHeadBytes: 256, maxHeaders: 8, maxChunkLineBytes: 16)
    for limits in [HTTP1Limits(), small] {
        let whole = requestRun(input, limits: limits, pieces: [input.count])
        let bytewise = requestRun(input, limits: limits, pieces: Array(0...input.count).dropFirst().map { $0 })
        let split = requestRun(input, limits: limits, pieces: cuts(input))
        for r in [whole, split] {
            if r.error != bytewise.error {
                fail("error depends on the split: " + String(describing: r.error) + " vs "
                     + String(describing: bytewise.error), input)
            }
            if bytewise.error == nil {
                if r.events != bytewise.events { fail("events depend on the split", input) }
            } else if !r.isPrefix(of: bytewise) {
                fail("events before the error depend on the split", input)
            }
        }
    }
}

/// Feeds `input` cut at the (increasing) end offsets `pieces`, checking each head.
func requestRun(_ input: [UInt8], limits: HTTP1Limits, pieces: [Int]) -> Run<HTTPRequestHead> {
    var p = HTTP1RequestParser(limits: limits)
    var run = Run<HTTPRequestHead>()
    var start = 0
    var bodyLeft: Int? = nil     // Content-Length bytes still expected, nil: not counted
    var inBody = false
    for end in pieces {
        let piece = Array(input[start..<end])
        start = end
        let evs: [HTTP1Event<HTTPRequestHead>]
        do throws(HTTP1Error) {
            evs = try p.feed(piece)
        } catch {
            checkPoisoned(&p, error, input)
            run.error = error
            return run
        }
        var lastHead: BodyFraming? = nil
        for e in evs {
            switch e {
            case .head(let h):
                if inBody { fail("head inside a message", input) }
                let f = checkRequestHead(h, input, limits: limits)
                lastHead = f
                inBody = true
                switch f {
                case .none: bodyLeft = 0
                case .contentLength(let n): bodyLeft = n
                case .chunked: bodyLeft = nil
                case .untilClose: fail("request framed until close", input)
                }
            case .body(let b):
                if !inBody { fail("body outside a message", input) }
                if let left = bodyLeft {
                    if b.count > left { fail("body longer than its Content-Length", input) }
                    bodyLeft = left - b.count
                }
            case .end(let trailers):
                if !inBody { fail("end outside a message", input) }
                if let left = bodyLeft, left != 0 { fail("end before Content-Length bytes", input) }
                if bodyLeft != nil && !trailers.isEmpty { fail("trailers without chunked", input) }
                checkFields(trailers, input)
                inBody = false
            }
        }
        if p.inMessage != inBody { fail("inMessage disagrees with the events", input) }
        if let f = lastHead, p.framing != f { fail("framing differs from framing(of:)", input) }
        run.add(evs)
    }
    // End of input: a message in progress is truncated, otherwise nothing.
    do throws(HTTP1Error) {
        let evs = try p.feedEOF()
        if !evs.isEmpty { fail("events at EOF", input) }
        if inBody { fail("EOF inside a message accepted", input) }
    } catch {
        if error != .badRequest("truncated") { fail("EOF error is not 'truncated'", input) }
        checkPoisoned(&p, error, input)
    }
    return run
}

func checkPoisoned(_ p: inout HTTP1RequestParser, _ first: HTTP1Error, _ input: [UInt8]) {
    for more in [[], Array("GET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8)] as [[UInt8]] {
        do throws(HTTP1Error) {
            _ = try p.feed(more)
            fail("parser accepted bytes after an error", input)
        } catch {
            if error != first { fail("a different error after an error", input) }
        }
    }
    do throws(HTTP1Error) {
        _ = try p.feedEOF()
        fail("parser accepted EOF after an error", input)
    } catch {
        if error != first { fail("a different error at EOF after an error", input) }
    }
}

/// The head is well-formed, framed consistently, and survives a write and re-parse.
func checkRequestHead(_ h: HTTPRequestHead, _ input: [UInt8], limits: HTTP1Limits) -> BodyFraming {
    if h.method.isEmpty || !h.method.utf8.allSatisfy(isTchar) { fail("method is not a token", input) }
    if h.target.isEmpty || h.target.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) {
        fail("target empty or with SP/CTL", input)
    }
    if h.versionMinor != 0 && h.versionMinor != 1 { fail("version not 1.0/1.1", input) }
    checkFields(h.headers, input)
    let hosts = h.headers.count("Host")
    if hosts > 1 || (h.versionMinor == 1 && hosts != 1) { fail("Host count", input) }
    if h.headers.contains("Transfer-Encoding") && h.headers.contains("Content-Length") {
        fail("both Transfer-Encoding and Content-Length accepted", input)
    }
    if h.headers.count("Content-Length") > 1 || h.headers.values("Content-Length").contains(where: { $0.contains(",") }) {
        fail("Content-Length repeated (field or list) accepted", input)
    }
    checkRequestTarget(h, input)
    let f: BodyFraming
    do throws(HTTP1Error) {
        f = try HTTP1RequestParser.framing(of: h)
    } catch {
        fail("framing(of:) rejects a head the parser returned", input)
    }
    if h.headers.contains("Transfer-Encoding") != (f == .chunked) { fail("TE without chunked framing", input) }
    // Written back and parsed again: the same head (what a proxy forwards is what it parsed).
    var again = HTTP1RequestParser(limits: HTTP1Limits(maxHeadBytes: 1 << 20, maxHeaders: 1000))
    do throws(HTTP1Error) {
        let evs = try again.feed(HTTP1Writer.requestHead(h))
        guard case .head(let h2)? = evs.first else { fail("written head is incomplete", input) }
        if h2 != h { fail("written head parses differently", input) }
    } catch {
        fail("written head does not parse: " + error.description, input)
    }
    return f
}

func checkFields(_ fields: HTTPHeaders, _ input: [UInt8]) {
    for (name, value) in fields {
        if name.isEmpty || !name.utf8.allSatisfy(isTchar) { fail("field name is not a token", input) }
        let v = Array(value.utf8)
        if v.contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }) { fail("CTL in field value", input) }
        if let first = v.first, first == 0x20 || first == 0x09 { fail("leading OWS kept", input) }
        if let last = v.last, last == 0x20 || last == 0x09 { fail("trailing OWS kept", input) }
    }
}

func isTchar(_ b: UInt8) -> Bool {
    switch b {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
    case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E, 0x5F, 0x60, 0x7C, 0x7E: return true
    default: return false
    }
}

// MARK: responses (same decoder, other framing rules)

func checkResponses(_ input: [UInt8]) {
    // The first head answers a HEAD request when the input's length is odd, and
    // a request that asked for an upgrade when its length's bit 1 is set.
    let toHEAD = input.count % 2 == 1
    let upgrade = input.count & 2 != 0
    let whole = responseRun(input, toHEAD: toHEAD, upgrade: upgrade, pieces: [input.count])
    let bytewise = responseRun(input, toHEAD: toHEAD, upgrade: upgrade, pieces: Array(0...input.count).dropFirst().map { $0 })
    let split = responseRun(input, toHEAD: toHEAD, upgrade: upgrade, pieces: cuts(input))
    for r in [whole, split] {
        if r.error != bytewise.error { fail("response error depends on the split", input) }
        if bytewise.error == nil {
            if r.events != bytewise.events { fail("response events depend on the split", input) }
            if r.reusable != bytewise.reusable { fail("response isReusable depends on the split", input) }
        } else if !r.isPrefix(of: bytewise) {
            fail("response events before the error depend on the split", input)
        }
    }
}

func responseRun(_ input: [UInt8], toHEAD: Bool, upgrade: Bool, pieces: [Int]) -> Run<HTTPResponseHead> {
    var p = HTTP1ResponseParser()
    p.expectResponse(toHEAD: toHEAD, upgrade: upgrade)
    var run = Run<HTTPResponseHead>()
    var start = 0
    var bodyLeft: Int? = nil
    var inBody = false
    var heads = 0
    for end in pieces {
        let piece = Array(input[start..<end])
        start = end
        let evs: [HTTP1Event<HTTPResponseHead>]
        do throws(HTTP1Error) {
            evs = try p.feed(piece)
        } catch {
            do throws(HTTP1Error) {
                _ = try p.feed([])
                fail("response parser accepted bytes after an error", input)
            } catch let again {
                if again != error { fail("response parser: a different error after an error", input) }
            }
            run.error = error
            return run
        }
        for e in evs {
            switch e {
            case .head(let h):
                if inBody { fail("response head inside a message", input) }
                if h.status < 100 || h.status > 999 { fail("status out of range", input) }
                if h.status >= 100 && h.status < 200 && h.status != 101 { fail("interim response returned", input) }
                if h.status == 101 && !(heads == 0 && upgrade) { fail("101 to a request without upgrade", input) }
                checkFields(h.headers, input)
                inBody = true
                // `p.framing` is the last head's: several may come in one feed.
                let f: BodyFraming
                do throws(HTTP1Error) {
                    f = try HTTP1ResponseParser.framing(of: h, toHEAD: heads == 0 && toHEAD)
                } catch {
                    fail("framing(of:) rejects a response head the parser returned", input)
                }
                heads += 1
                switch f {
                case .none: bodyLeft = 0
                case .contentLength(let n): bodyLeft = n
                case .chunked, .untilClose: bodyLeft = nil
                }
            case .body(let b):
                if !inBody { fail("response body outside a message", input) }
                if let left = bodyLeft {
                    if b.count > left { fail("response body longer than its Content-Length", input) }
                    bodyLeft = left - b.count
                }
            case .end:
                if !inBody { fail("response end outside a message", input) }
                if let left = bodyLeft, left != 0 { fail("response end before Content-Length bytes", input) }
                inBody = false
            }
        }
        run.add(evs)
        if p.isReusable && (p.inMessage || sawSwitch(run)) { fail("isReusable inside a message or after 101", input) }
    }
    run.reusable = p.isReusable
    return run
}

/// A 101 head among the events so far: the connection is no longer HTTP.
func sawSwitch(_ run: Run<HTTPResponseHead>) -> Bool {
    run.events.contains { if case .head(let h) = $0 { return h.status == 101 }; return false }
}

/// RequestTarget.classify (RFC 9112 §3.2): a form only for the methods that may use
/// it; what goes on as :path is origin-form (or "*"); absolute-form is http(s) only.
func checkRequestTarget(_ h: HTTPRequestHead, _ input: [UInt8]) {
    guard let form = RequestTarget.classify(method: h.method, target: h.target) else { return }
    switch form {
    case .origin(let p):
        if p != h.target || !p.hasPrefix("/") || h.method == "CONNECT" { fail("origin-form", input) }
    case .absolute(let scheme, let authority, let path):
        if scheme != "http" && scheme != "https" { fail("absolute-form scheme", input) }
        if authority.isEmpty || authority.contains("@") || !path.hasPrefix("/") || path.contains("#") { fail("absolute-form parts", input) }
        if RequestTarget.classify(method: h.method, target: path) != .origin(path) { fail("absolute-form path is no origin-form", input) }
    case .authority(let a):
        if h.method != "CONNECT" || !a.contains(":") { fail("authority-form", input) }
    case .asterisk:
        if h.method != "OPTIONS" || h.target != "*" { fail("asterisk-form", input) }
    }
}
