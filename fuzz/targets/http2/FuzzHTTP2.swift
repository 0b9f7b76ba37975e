// fuzz-http2: HTTP2Session (nghttp2 and our callbacks) on arbitrary frames from
// the peer, HPACK included, in the three roles the programs use: the gateway's
// public side (server, standard preface), the agent (server, reversed) and the
// gateway's device side (client, reversed, three requests in flight).
//
// The first byte picks the role and the limits (default, or small ones so that
// the limit paths are reached with small inputs); the rest is what the peer
// sends after its preface (which the harness adds). Each input is fed three
// ways: in one piece, one byte at a time, and in pieces cut at points derived
// from the input, each piece followed by what HTTP2Connection does: take the
// events, then go on with the backlog while decoding paused. Invariants:
//   * no crash, no hang (libFuzzer's -timeout);
//   * the split does not matter: the same events and the same error, whatever
//     the cuts; DATA the same on each stream that ended, else one a prefix of the
//     other (how much of a frame passes before a reset depends on the split);
//   * every header block delivered is within the limits (fields, cookie crumbs
//     counting as one, and bytes as RFC 9113 counts them); one that is not
//     arrives as headersTooLarge;
//   * the decoded header bytes handed over at once stay under the session's
//     budget plus one block; DATA handed over never exceeds the bytes fed;
//   * an error is final: receive and receiveBacklog throw it again.
import HTTP1
import HTTP2

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP2(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let mode = Int(data![0])
    let input = Array(UnsafeBufferPointer(start: data! + 1, count: size - 1))
    let config = Config(mode: mode)
    let whole = run(config, input, pieces: [input.count])
    let bytewise = run(config, input, pieces: Array(1...max(1, input.count)).map { min($0, input.count) })
    let split = run(config, input, pieces: cuts(input))
    for r in [whole, split] {
        // libnghttp2 1.52 (Debian's backport of the CONTINUATION limit) counts a
        // CONTINUATION frame once per receive call its 9-byte header is spread over,
        // so that error alone may depend on the split; stop comparing at it.
        if r.tooManyContinuations || bytewise.tooManyContinuations { continue }
        // Once the peer's GOAWAY came and no stream is open, nghttp2 ignores every later
        // receive call (it wants no more reads) but not the rest of the call the GOAWAY
        // came in: what follows depends on the split. The connection is over there.
        if r.sawGoaway || bytewise.sawGoaway {
            if !r.untilGoaway.matches(bytewise.untilGoaway) {
                fail("events up to GOAWAY depend on the split: " + String(describing: r.untilGoaway.events) + " vs "
                     + String(describing: bytewise.untilGoaway.events), input)
            }
            continue
        }
        if r.error != bytewise.error {
            fail("error depends on the split: " + (r.error ?? "none") + " vs " + (bytewise.error ?? "none"), input)
        }
        if !r.matches(bytewise) {
            fail("events depend on the split: " + String(describing: r.events) + " vs "
                 + String(describing: bytewise.events), input)
        }
    }
    return 0
}

func fail(_ what: String, _ input: [UInt8]) -> Never {
    fatalError("fuzz-http2 invariant broken: " + what + " (input " + String(input.count) + " bytes)")
}

struct Config {
    var role: HTTP2Role
    var preface: Preface
    var settings = HTTP2Settings()

    init(mode: Int) {
        switch mode % 3 {
        case 0: (role, preface) = (.server, .standard)
        case 1: (role, preface) = (.server, .reversed)
        default: (role, preface) = (.client, .reversed)
        }
        if (mode / 3) % 2 == 1 {
            settings.maxHeaderListSize = 300
            settings.maxHeaderFields = 8
            settings.maxHeldHeaderBytes = 1000
        }
        settings.maxConcurrentStreams = 20
    }

    /// What the peer sends before the input: the client magic, unless the peer is the reversed server.
    var peerPreface: [UInt8] { role == .server && preface == .reversed ? [] : http2ClientMagic }
}

enum Norm: Equatable {
    case headers(Int32, [String], Bool)
    case tooLarge(Int32, Bool)
    case data(Int32, [UInt8])
    case end(Int32)
    case closed(Int32, UInt32)
    case settings(UInt32)
    case pingAck
    case goaway(Int32, UInt32)
}

struct Run {
    var events: [Norm] = []
    var error: String?
    var tooManyContinuations = false

    var sawGoaway: Bool { events.contains { if case .goaway = $0 { return true }; return false } }

    /// The events up to and with the peer's GOAWAY (see fuzzHTTP2).
    var untilGoaway: Run {
        guard let i = events.firstIndex(where: { if case .goaway = $0 { return true }; return false }) else { return self }
        var r = self
        r.events = Array(events[...i])
        return r
    }

    /// Everything but DATA, in order.
    var control: [Norm] { events.filter { if case .data = $0 { return false }; return true } }

    /// DATA per stream, concatenated.
    var data: [Int32: [UInt8]] {
        var d: [Int32: [UInt8]] = [:]
        for case .data(let s, let b) in events { d[s, default: []] += b }
        return d
    }

    /// Same control events; the same DATA on each stream that ended, and on the
    /// others one a prefix of the other: DATA is streamed, so how much of a frame
    /// came through before its stream was reset (a body longer than its
    /// content-length, say) or the connection failed depends on the split.
    func matches(_ other: Run) -> Bool {
        guard control == other.control else { return false }
        let mine = data, theirs = other.data
        var ended: Set<Int32> = []
        for case .end(let s) in events { ended.insert(s) }
        for s in Set(mine.keys).union(theirs.keys) {
            let a = mine[s] ?? [], b = theirs[s] ?? []
            if ended.contains(s) ? a != b : !(a.starts(with: b) || b.starts(with: a)) { return false }
        }
        return true
    }
}

func run(_ config: Config, _ input: [UInt8], pieces: [Int]) -> Run {
    let session: HTTP2Session
    do throws(HTTP2Error) {
        session = try HTTP2Session(role: config.role, preface: config.preface, settings: config.settings)
        if config.role == .client {
            for path in ["/a", "/b", "/c"] {
                let h = HTTPHeaders([(":method", path == "/b" ? "POST" : "GET"), (":scheme", "https"),
                                     (":authority", "dev1.example"), (":path", path)])
                _ = try session.submitRequest(h, endStream: path != "/b")
            }
        }
        var out: [UInt8] = []
        try session.takeOutput(into: &out)
        try session.receive(config.peerPreface)
    } catch {
        fatalError("fuzz-http2: setup failed: " + error.description)
    }
    var r = Run()
    var start = 0
    for end in pieces where end > start || input.isEmpty {
        let piece = Array(input[start..<end])
        start = end
        do throws(HTTP2Error) {
            try session.receive(piece)
            take(session, &r, fed: piece.count, input)
            var rounds = 0
            while session.hasBacklog {
                rounds += 1
                if rounds > 100_000 { fail("the backlog never drains", input) }
                try session.receiveBacklog()
                take(session, &r, fed: piece.count, input)
            }
        } catch {
            take(session, &r, fed: piece.count, input)
            r.error = error.description
            if case .nghttp2(_, let code, _) = error, code == -905 { r.tooManyContinuations = true }  // NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
            checkFinal(session, error, input)
            drain(session, &r, input)
            return r
        }
        if input.isEmpty { break }
    }
    drain(session, &r, input)
    return r
}

/// At the end: what nghttp2 queued goes out, so that the streams it reset close.
func drain(_ session: HTTP2Session, _ r: inout Run, _ input: [UInt8]) {
    var out: [UInt8] = []
    do throws(HTTP2Error) { try session.takeOutput(into: &out) } catch {}
    take(session, &r, fed: 0, input)
}

/// Takes the session's events into `r`, checking the limits.
func take(_ session: HTTP2Session, _ r: inout Run, fed: Int, _ input: [UInt8]) {
    let limits = (bytes: session.maxHeaderListSize, fields: session.maxHeaderFields)
    var headerBytes = 0
    var dataBytes = 0
    for e in session.takeEvents() {
        switch e {
        case .headers(let s, let h, let end):
            var n = 0
            var fields = 0
            var cookies = 0
            var flat: [String] = []
            for (name, value) in h {
                n += name.utf8.count + value.utf8.count + 32
                // Cookie crumbs count as one field (RFC 9113 §8.2.3); bytes bound them.
                if name == "cookie" { cookies += 1 } else { fields += 1 }
                flat.append(name)
                flat.append(value)
            }
            if cookies > 0 { fields += 1 }
            if n > limits.bytes || fields > limits.fields { fail("a header block over the limits was delivered", input) }
            headerBytes += n
            r.events.append(.headers(s, flat, end))
        case .headersTooLarge(let s, let end):
            r.events.append(.tooLarge(s, end))
        case .data(let s, let b):
            dataBytes += b.count
            if b.isEmpty { continue }
            if case .data(let prev, let bytes)? = r.events.last, prev == s {
                r.events[r.events.count - 1] = .data(s, bytes + b)
            } else {
                r.events.append(.data(s, b))
            }
        case .endStream(let s): r.events.append(.end(s))
        case .streamClosed(let s, let code): r.events.append(.closed(s, code))
        case .settings(let m): r.events.append(.settings(m))
        case .pingAck: r.events.append(.pingAck)
        case .goaway(let last, let code): r.events.append(.goaway(last, code))
        }
    }
    if headerBytes > session.heldHeaderBudget + limits.bytes { fail("too many decoded header bytes at once", input) }
    if dataBytes > fed { fail("more DATA than bytes fed", input) }
}

func checkFinal(_ session: HTTP2Session, _ error: HTTP2Error, _ input: [UInt8]) {
    for bytes in [[UInt8](), [0, 0, 0, 4, 0, 0, 0, 0, 0]] {
        do throws(HTTP2Error) {
            try session.receive(bytes)
            fail("receive went on after an error", input)
        } catch let again {
            if again.description != error.description { fail("a different error after an error", input) }
        }
    }
    do throws(HTTP2Error) {
        try session.receiveBacklog()
        fail("receiveBacklog went on after an error", input)
    } catch let again {
        if again.description != error.description { fail("a different error after an error", input) }
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
    return out.isEmpty ? [0] : out
}
