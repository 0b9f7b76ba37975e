// The device (HTTP/2 server role, writes the client preface) and the gateway
// (HTTP/2 client role, receives it) against each other in memory, with the bytes
// delivered in every split, down to one byte at a time.
import HTTP1
@testable import HTTP2
import XCTest

final class ReversedHTTP2Tests: XCTestCase {
    /// Moves bytes both ways, `chunk` bytes per receive call, until both are quiet.
    @discardableResult
    func pump(_ device: HTTP2Session, _ gateway: HTTP2Session, chunk: Int,
              deviceEvents: inout [HTTP2Event], gatewayEvents: inout [HTTP2Event]) throws -> Int {
        var moved = 0
        for _ in 0..<1000 {
            var a: [UInt8] = []
            try device.takeOutput(into: &a)
            var b: [UInt8] = []
            try gateway.takeOutput(into: &b)
            if a.isEmpty && b.isEmpty { return moved }
            moved += a.count + b.count
            var i = 0
            while i < a.count {
                try gateway.receive(Array(a[i..<min(a.count, i + chunk)]))
                i += chunk
            }
            i = 0
            while i < b.count {
                try device.receive(Array(b[i..<min(b.count, i + chunk)]))
                i += chunk
            }
            deviceEvents += device.takeEvents()
            gatewayEvents += gateway.takeEvents()
        }
        XCTFail("pump did not settle")
        return moved
    }

    func testDeviceSendsClientMagicThenSettingsAndGatewayDoesNot() throws {
        let device = try HTTP2Session(role: .server, preface: .reversed)
        let gateway = try HTTP2Session(role: .client, preface: .reversed)
        var d: [UInt8] = []
        try device.takeOutput(into: &d)
        XCTAssertEqual(Array(d.prefix(24)), http2ClientMagic)
        XCTAssertEqual(d[24 + 3], 0x4, "first frame after the magic is SETTINGS")
        var g: [UInt8] = []
        try gateway.takeOutput(into: &g)
        XCTAssertNotEqual(Array(g.prefix(24)), http2ClientMagic, "the gateway's own client magic never reaches the wire")
        XCTAssertEqual(g[3], 0x4, "the gateway starts with SETTINGS")
    }

    func testGatewayRejectsAPeerWithoutThePreface() throws {
        let gateway = try HTTP2Session(role: .client, preface: .reversed)
        XCTAssertThrowsError(try gateway.receive(Array("GET / HTTP/1.1\r\n\r\n".utf8))) { error in
            guard case HTTP2Error.badPreface = error else { return XCTFail("wrong error \(error)") }
        }
    }

    func testRequestAndResponseInEverySplit() throws {
        for chunk in [1, 2, 3, 7, 9, 24, 25, 100, 1 << 20] {
            let device = try HTTP2Session(role: .server, preface: .reversed)
            let gateway = try HTTP2Session(role: .client, preface: .reversed)
            var de: [HTTP2Event] = []
            var ge: [HTTP2Event] = []
            try pump(device, gateway, chunk: chunk, deviceEvents: &de, gatewayEvents: &ge)
            XCTAssertTrue(ge.contains { if case .settings(let m) = $0 { return m == 100 }; return false },
                          "gateway sees the device's MAX_CONCURRENT_STREAMS (chunk \(chunk))")
            XCTAssertTrue(de.contains { if case .settings = $0 { return true }; return false })

            // Two requests: the gateway opens odd streams 1 and 3.
            let body = Array(repeating: UInt8(ascii: "x"), count: 70_000)
            let s1 = try gateway.submitRequest(HTTPHeaders([(":method", "GET"), (":scheme", "https"),
                                                            (":authority", "dev1.example"), (":path", "/a")]),
                                               endStream: true)
            let s3 = try gateway.submitRequest(HTTPHeaders([(":method", "POST"), (":scheme", "https"),
                                                            (":authority", "dev1.example"), (":path", "/b")]),
                                               endStream: false)
            XCTAssertEqual(s1, 1)
            XCTAssertEqual(s3, 3)
            gateway.sendData(stream: s3, body, endStream: true)
            de = []
            ge = []
            try pump(device, gateway, chunk: chunk, deviceEvents: &de, gatewayEvents: &ge)

            var paths: [Int32: String] = [:]
            var received: [Int32: Int] = [:]
            var ended: Set<Int32> = []
            for e in de {
                switch e {
                case .headers(let s, let h, let end):
                    paths[s] = h.first(":path")
                    if end { ended.insert(s) }
                case .data(let s, let bytes):
                    received[s, default: 0] += bytes.count
                    device.consume(stream: s, count: bytes.count)
                case .endStream(let s):
                    ended.insert(s)
                default: break
                }
            }
            XCTAssertEqual(paths, [1: "/a", 3: "/b"], "chunk \(chunk)")
            XCTAssertEqual(received[3], body.count)
            XCTAssertEqual(ended, [1, 3])

            // Responses: stream 1 a small body, stream 3 a body larger than one frame.
            try device.submitResponse(stream: 1, HTTPHeaders([(":status", "200"), ("x-device", "dev1")]), endStream: false)
            device.sendData(stream: 1, Array("hello".utf8), endStream: true)
            try device.submitResponse(stream: 3, HTTPHeaders([(":status", "201")]), endStream: false)
            device.sendData(stream: 3, body, endStream: false)
            device.sendTrailers(stream: 3, HTTPHeaders([("x-sum", "ok")]))
            de = []
            ge = []
            try pump(device, gateway, chunk: chunk, deviceEvents: &de, gatewayEvents: &ge)

            var status: [Int32: String] = [:]
            var got: [Int32: [UInt8]] = [:]
            var trailers: [Int32: String] = [:]
            var closed: [Int32: UInt32] = [:]
            for e in ge {
                switch e {
                case .headers(let s, let h, _):
                    if let st = h.first(":status") { status[s] = st } else { trailers[s] = h.first("x-sum") }
                case .data(let s, let bytes):
                    got[s, default: []] += bytes
                    gateway.consume(stream: s, count: bytes.count)
                case .streamClosed(let s, let code):
                    closed[s] = code
                default: break
                }
            }
            XCTAssertEqual(status, [1: "200", 3: "201"], "chunk \(chunk)")
            XCTAssertEqual(got[1], Array("hello".utf8))
            XCTAssertEqual(got[3]?.count, body.count)
            XCTAssertEqual(trailers[3], "ok")
            XCTAssertEqual(closed, [1: 0, 3: 0])
        }
    }

    func testDeviceGoawayIsSeenByGateway() throws {
        let device = try HTTP2Session(role: .server, preface: .reversed)
        let gateway = try HTTP2Session(role: .client, preface: .reversed)
        var de: [HTTP2Event] = []
        var ge: [HTTP2Event] = []
        try pump(device, gateway, chunk: 5, deviceEvents: &de, gatewayEvents: &ge)
        device.goaway(lastStreamID: Int32.max, errorCode: 0)
        ge = []
        try pump(device, gateway, chunk: 5, deviceEvents: &de, gatewayEvents: &ge)
        XCTAssertTrue(gateway.receivedGoaway)
        XCTAssertTrue(ge.contains { if case .goaway(let last, 0) = $0 { return last == Int32.max }; return false })
    }

    func testAStreamOpenedByTheDeviceIsAProtocolError() throws {
        let device = try HTTP2Session(role: .server, preface: .reversed)
        let gateway = try HTTP2Session(role: .client, preface: .reversed)
        var de: [HTTP2Event] = []
        var ge: [HTTP2Event] = []
        try pump(device, gateway, chunk: 64, deviceEvents: &de, gatewayEvents: &ge)
        // HEADERS on stream 2 (even: server-initiated), END_HEADERS|END_STREAM, one literal field.
        let block: [UInt8] = [0x82]  // :method GET (indexed)
        var frame: [UInt8] = [0, 0, UInt8(block.count), 0x1, 0x5, 0, 0, 0, 2]
        frame += block
        do {
            try gateway.receive(frame)
            var out: [UInt8] = []
            try gateway.takeOutput(into: &out)
            // nghttp2 answers with GOAWAY(PROTOCOL_ERROR): frame type 7 somewhere in the output.
            XCTAssertTrue(containsFrame(out, type: 0x7), "gateway must answer a device-opened stream with GOAWAY")
        } catch {
            // Rejecting the bytes outright is just as good.
        }
    }

    private func containsFrame(_ bytes: [UInt8], type: UInt8) -> Bool {
        var i = 0
        while i + 9 <= bytes.count {
            let len = Int(bytes[i]) << 16 | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2])
            if bytes[i + 3] == type { return true }
            i += 9 + len
        }
        return false
    }
}
