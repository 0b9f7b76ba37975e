// Header blocks past the limits (issue 12): an HPACK bomb -- one field added to the
// dynamic table, then referenced thousands of times, one byte each -- decodes to
// ~4,000 times its size. HTTP2Session must drop such a block as it is decoded,
// report it, and go on serving other streams, in both roles.
import HTTP1
@testable import HTTP2
import XCTest

/// Raw HTTP/2 frames and HPACK, by hand.
enum RawH2 {
    static func frame(_ type: UInt8, _ flags: UInt8, _ stream: Int32, _ payload: [UInt8]) -> [UInt8] {
        let n = payload.count
        let s = UInt32(stream)
        return [UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), type, flags,
                UInt8(s >> 24 & 0x7f), UInt8(s >> 16 & 0xff), UInt8(s >> 8 & 0xff), UInt8(s & 0xff)] + payload
    }

    /// HPACK integer (RFC 7541 §5.1) with `prefix` bits, `high` the bits above them.
    static func int(_ value: Int, prefix: Int, high: UInt8) -> [UInt8] {
        let max = (1 << prefix) - 1
        if value < max { return [high | UInt8(value)] }
        var out: [UInt8] = [high | UInt8(max)]
        var v = value - max
        while v >= 128 {
            out.append(UInt8(v & 0x7f) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
        return out
    }

    static func string(_ s: [UInt8]) -> [UInt8] { int(s.count, prefix: 7, high: 0) + s }

    /// Literal field, new name, added to the dynamic table (§6.2.1).
    static func indexed(_ name: String, _ value: [UInt8]) -> [UInt8] {
        [0x40] + string(Array(name.utf8)) + string(value)
    }

    /// Literal field, new name, not indexed (§6.2.2).
    static func literal(_ name: String, _ value: String) -> [UInt8] {
        [0x00] + string(Array(name.utf8)) + string(Array(value.utf8))
    }

    /// `block` as HEADERS plus CONTINUATION frames of at most `frameSize` bytes.
    static func headers(_ stream: Int32, _ block: [UInt8], endStream: Bool, frameSize: Int = 16384) -> [UInt8] {
        var out: [UInt8] = []
        var i = 0
        repeat {
            let end = min(block.count, i + frameSize)
            let flags: UInt8 = (end == block.count ? 0x4 : 0) | (i == 0 && endStream ? 0x1 : 0)
            out += frame(i == 0 ? 0x1 : 0x9, flags, stream, Array(block[i..<end]))
            i = end
        } while i < block.count
        return out
    }

    /// GET / for dev1.example, static table and literals only.
    static let getRequest: [UInt8] = [0x82, 0x86, 0x84] + literal(":authority", "dev1.example")

    /// The bomb: a 4,000-byte field into the dynamic table, then `refs` references to it.
    static func bomb(prefix: [UInt8], refs: Int) -> [UInt8] {
        prefix + indexed("x-big", Array(repeating: UInt8(ascii: "a"), count: 4000))
            + Array(repeating: 0xbe, count: refs)  // indexed field 62: the newest entry
    }

    static let clientMagic = http2ClientMagic
    static let emptySettings = frame(0x4, 0, 0, [])
}

final class HTTP2HeaderLimitTests: XCTestCase {
    func publicSettings() -> HTTP2Settings {
        var s = HTTP2Settings()
        s.maxHeaderListSize = 16384
        s.maxHeaderFields = 100
        s.maxConcurrentStreams = 1000
        return s
    }

    func headerBytes(_ events: [HTTP2Event]) -> Int {
        var n = 0
        for case .headers(_, let h, _) in events {
            for (name, value) in h { n += name.utf8.count + value.utf8.count + 32 }
        }
        return n
    }

    /// Server role (a user's request): the bomb on stream 1 is reported too large and,
    /// far past the limit, its stream reset at once; stream 3 right after it is a
    /// normal request (the HPACK state survived).
    func testRequestBombIsDroppedAndTheNextStreamWorks() throws {
        let server = try HTTP2Session(role: .server, preface: .standard, settings: publicSettings())
        var input = RawH2.clientMagic + RawH2.emptySettings
        // One block of about 100 KB on the wire (HEADERS and 6 CONTINUATION), about 400 MB decoded.
        input += RawH2.headers(1, RawH2.bomb(prefix: RawH2.getRequest, refs: 100_000), endStream: true)
        input += RawH2.headers(3, RawH2.getRequest, endStream: true)
        try server.receive(input)
        XCTAssertLessThan(server.fieldsSeen, 40, "the rest of the bomb is only decoded, not checked field by field")
        XCTAssertFalse(server.hasBacklog)
        var events = server.takeEvents()
        XCTAssertLessThanOrEqual(headerBytes(events), 16384)
        XCTAssertTrue(events.contains { if case .headersTooLarge(1, true) = $0 { return true }; return false }, "\(events)")
        XCTAssertFalse(events.contains { if case .headers(1, _, _) = $0 { return true }; return false })
        XCTAssertTrue(events.contains { if case .headers(3, let h, true) = $0 { return h.first(":path") == "/" }; return false })
        var out: [UInt8] = []
        try server.takeOutput(into: &out)
        XCTAssertTrue(containsRstStream(out, stream: 1, code: 1), "RST_STREAM(PROTOCOL_ERROR) on stream 1")
        events = server.takeEvents()
        XCTAssertTrue(events.contains { if case .streamClosed(1, 1) = $0 { return true }; return false }, "\(events)")
        XCTAssertNoThrow(try server.submitResponse(stream: 3, HTTPHeaders([(":status", "200")]), endStream: true))
    }

    /// A request head a little over the limit (one 20 KB field) is dropped but read to
    /// its end: the application can answer it with 431.
    func testRequestSlightlyOverTheLimitCanBeAnswered() throws {
        let server = try HTTP2Session(role: .server, preface: .standard, settings: publicSettings())
        let block = RawH2.getRequest + RawH2.literal("cookie", String(repeating: "c", count: 20_000))
        try server.receive(RawH2.clientMagic + RawH2.emptySettings + RawH2.headers(1, block, endStream: true))
        XCTAssertTrue(server.takeEvents().contains { if case .headersTooLarge(1, true) = $0 { return true }; return false })
        try server.submitResponse(stream: 1, HTTPHeaders([(":status", "431")]), endStream: true)
        var out: [UInt8] = []
        try server.takeOutput(into: &out)
        XCTAssertFalse(containsRstStream(out, stream: 1, code: 1))
        XCTAssertTrue(server.takeEvents().contains { if case .streamClosed(1, 0) = $0 { return true }; return false },
                      "the 431 went out and closed the stream")
    }

    /// More fields than `maxHeaderFields`, each small: too large as well.
    func testTooManyFields() throws {
        let server = try HTTP2Session(role: .server, preface: .standard, settings: publicSettings())
        var block = RawH2.getRequest
        for i in 0..<97 { block += RawH2.literal("x-f", String(i)) }
        try server.receive(RawH2.clientMagic + RawH2.emptySettings + RawH2.headers(1, block, endStream: true))
        XCTAssertTrue(server.takeEvents().contains { if case .headersTooLarge(1, _) = $0 { return true }; return false })
        // 100 fields exactly pass.
        block = RawH2.getRequest
        for i in 0..<96 { block += RawH2.literal("x-f", String(i)) }
        try server.receive(RawH2.headers(3, block, endStream: true))
        XCTAssertTrue(server.takeEvents().contains { if case .headers(3, let h, _) = $0 { return h.count == 100 }; return false })
    }

    /// Review of issue 12: browsers send each cookie as its own field over HTTP/2
    /// (RFC 9113 §8.2.3); cookie crumbs after the first do not count towards
    /// `maxHeaderFields` (their bytes count towards `maxHeaderListSize`).
    func testCookieCrumbsCountAsOneField() throws {
        let server = try HTTP2Session(role: .server, preface: .standard, settings: publicSettings())
        var block = RawH2.getRequest
        for i in 0..<150 { block += RawH2.literal("cookie", "c" + String(i) + "=v") }
        try server.receive(RawH2.clientMagic + RawH2.emptySettings + RawH2.headers(1, block, endStream: true))
        XCTAssertTrue(server.takeEvents().contains { if case .headers(1, let h, _) = $0 { return h.values("cookie").count == 150 }; return false },
                      "150 cookies within the byte limit pass")
        // 150 other fields do not.
        block = RawH2.getRequest
        for i in 0..<150 { block += RawH2.literal("x-f", String(i)) }
        try server.receive(RawH2.headers(3, block, endStream: true))
        XCTAssertTrue(server.takeEvents().contains { if case .headersTooLarge(3, _) = $0 { return true }; return false })
        // Cookies still count in bytes: 20 KiB crumbs over the 16 KiB limit.
        block = RawH2.getRequest
        for i in 0..<20 { block += RawH2.literal("cookie", "c" + String(i) + "=" + String(repeating: "v", count: 1000)) }
        try server.receive(RawH2.headers(5, block, endStream: true))
        XCTAssertTrue(server.takeEvents().contains { if case .headersTooLarge(5, _) = $0 { return true }; return false })
    }

    /// Client role (a device's response head): the stream is reset, stream 3 still answers.
    func testResponseBombResetsTheStreamAndTheNextStreamWorks() throws {
        let client = try HTTP2Session(role: .client, preface: .standard)  // 65,536 bytes, 128 fields
        let get = HTTPHeaders([(":method", "GET"), (":scheme", "https"), (":authority", "dev1.example"), (":path", "/")])
        XCTAssertEqual(try client.submitRequest(get, endStream: true), 1)
        XCTAssertEqual(try client.submitRequest(get, endStream: true), 3)
        var out: [UInt8] = []
        try client.takeOutput(into: &out)
        var input = RawH2.emptySettings
        input += RawH2.headers(1, RawH2.bomb(prefix: [0x88], refs: 100_000), endStream: false)  // :status 200
        input += RawH2.headers(3, [0x88], endStream: true)
        try client.receive(input)
        XCTAssertLessThan(client.fieldsSeen, 40, "the rest of the bomb is only decoded, not checked field by field")
        var events = client.takeEvents()
        XCTAssertLessThanOrEqual(headerBytes(events), 65536)
        XCTAssertTrue(events.contains { if case .headersTooLarge(1, false) = $0 { return true }; return false }, "\(events)")
        XCTAssertTrue(events.contains { if case .headers(3, let h, true) = $0 { return h.first(":status") == "200" }; return false })
        out = []
        try client.takeOutput(into: &out)
        XCTAssertTrue(containsRstStream(out, stream: 1, code: 1), "RST_STREAM(PROTOCOL_ERROR) on stream 1")
        events = client.takeEvents()
        XCTAssertTrue(events.contains { if case .streamClosed(1, 1) = $0 { return true }; return false }, "\(events)")
        XCTAssertTrue(client.isAlive)
    }

    /// Client role: interim (1xx) responses are header blocks too, each up to the
    /// limit; past 8 blocks on one stream it is reset. Stream 3 still answers.
    func testEndlessInterimResponsesResetTheStream() throws {
        let client = try HTTP2Session(role: .client, preface: .standard)
        let get = HTTPHeaders([(":method", "GET"), (":scheme", "https"), (":authority", "dev1.example"), (":path", "/")])
        XCTAssertEqual(try client.submitRequest(get, endStream: true), 1)
        XCTAssertEqual(try client.submitRequest(get, endStream: true), 3)
        var out: [UInt8] = []
        try client.takeOutput(into: &out)
        // Each 103 carries 15 references to a 4,000-byte entry: ~60 KB decoded from 20 bytes.
        var input = RawH2.emptySettings + RawH2.headers(1, [0x48, 0x03] + Array("103".utf8)
                                                        + RawH2.indexed("link", Array(repeating: 0x61, count: 4000)), endStream: false)
        for _ in 0..<1000 { input += RawH2.headers(1, [0xbf] + Array(repeating: 0xbe, count: 15), endStream: false) }  // 103, link x15
        input += RawH2.headers(3, [0x88], endStream: true)
        try client.receive(input)
        var events = client.takeEvents()
        while client.hasBacklog {
            try client.receiveBacklog()
            events += client.takeEvents()
        }
        var interim = 0
        for case .headers(1, _, _) in events { interim += 1 }
        XCTAssertEqual(interim, 8)
        XCTAssertTrue(events.contains { if case .headersTooLarge(1, false) = $0 { return true }; return false })
        XCTAssertLessThan(client.fieldsSeen, 200, "the blocks after the reset are only decoded")
        XCTAssertTrue(events.contains { if case .headers(3, let h, true) = $0 { return h.first(":status") == "200" }; return false })
        out = []
        try client.takeOutput(into: &out)
        XCTAssertTrue(containsRstStream(out, stream: 1, code: 1))
    }

    /// Many blocks, each under the limit, in one read: decoding pauses once the
    /// events hold about 1 MiB of headers, and goes on after they were taken.
    func testManyBlocksInOneReadArePaced() throws {
        let server = try HTTP2Session(role: .server, preface: .standard, settings: publicSettings())
        var input = RawH2.clientMagic + RawH2.emptySettings
        // Stream 1 puts x-big into the table; each next one references it three times (~12 KB each).
        input += RawH2.headers(1, RawH2.bomb(prefix: RawH2.getRequest, refs: 2), endStream: true)
        for i in 1...300 { input += RawH2.headers(Int32(1 + 2 * i), RawH2.getRequest + [0xbe, 0xbe, 0xbe], endStream: true) }
        XCTAssertLessThan(input.count, 16 * 1024, "one read's worth")
        try server.receive(input)
        var events = server.takeEvents()
        XCTAssertLessThanOrEqual(headerBytes(events), (1 << 20) + 16384)
        XCTAssertTrue(server.hasBacklog)
        var rounds = 1
        while server.hasBacklog && rounds < 100 {
            try server.receiveBacklog()
            let e = server.takeEvents()
            XCTAssertLessThanOrEqual(headerBytes(e), (1 << 20) + 16384)
            events += e
            rounds += 1
        }
        XCTAssertGreaterThanOrEqual(rounds, 3)
        var streams: [Int32] = []
        for case .headers(let s, let h, true) in events where h.count == 7 || h.count == 6 { streams.append(s) }
        XCTAssertEqual(streams, (0...300).map { Int32(1 + 2 * $0) }, "every request, in order")
    }

    /// The SETTINGS_MAX_HEADER_LIST_SIZE we advertise is the limit we enforce.
    func testAdvertisedMaxHeaderListSizeIsTheEnforcedOne() throws {
        for settings in [HTTP2Settings(), publicSettings()] {
            let server = try HTTP2Session(role: .server, preface: .standard, settings: settings)
            var out: [UInt8] = []
            try server.takeOutput(into: &out)
            XCTAssertEqual(out[3], 0x4, "SETTINGS first")
            let len = Int(out[0]) << 16 | Int(out[1]) << 8 | Int(out[2])
            var advertised: UInt32?
            for i in stride(from: 9, to: 9 + len, by: 6) where out[i] == 0 && out[i + 1] == 6 {
                advertised = UInt32(out[i + 2]) << 24 | UInt32(out[i + 3]) << 16 | UInt32(out[i + 4]) << 8 | UInt32(out[i + 5])
            }
            XCTAssertEqual(advertised, settings.maxHeaderListSize)
            XCTAssertEqual(server.maxHeaderListSize, Int(settings.maxHeaderListSize))
            XCTAssertEqual(server.maxHeaderFields, settings.maxHeaderFields)
        }
    }

    func containsRstStream(_ bytes: [UInt8], stream: Int32, code: UInt32) -> Bool {
        var i = 0
        while i + 9 <= bytes.count {
            let len = Int(bytes[i]) << 16 | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2])
            let id = Int32(bytes[i + 5] & 0x7f) << 24 | Int32(bytes[i + 6]) << 16 | Int32(bytes[i + 7]) << 8 | Int32(bytes[i + 8])
            if bytes[i + 3] == 0x3 && id == stream && len == 4 && i + 13 <= bytes.count {
                let c = UInt32(bytes[i + 9]) << 24 | UInt32(bytes[i + 10]) << 16 | UInt32(bytes[i + 11]) << 8 | UInt32(bytes[i + 12])
                if c == code { return true }
            }
            i += 9 + len
        }
        return false
    }
}
