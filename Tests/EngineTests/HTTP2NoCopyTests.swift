// DATA frames are written by the send-data callback straight from the streams'
// queues (NGHTTP2_DATA_FLAG_NO_COPY): bodies of several streams, sent in pieces
// while frames are being taken, arrive byte for byte, in order, with trailers.
import HTTP1
@testable import HTTP2
import XCTest

extension ReversedHTTP2Tests {
    func testInterleavedBodiesArriveByteForByteWithTrailers() throws {
        for chunk in [7, 16_393, 1 << 20] {
            let device = try HTTP2Session(role: .server, preface: .reversed)
            let gateway = try HTTP2Session(role: .client, preface: .reversed)
            var de: [HTTP2Event] = []
            var ge: [HTTP2Event] = []
            try pump(device, gateway, chunk: chunk, deviceEvents: &de, gatewayEvents: &ge)
            var streams: [Int32] = []
            for path in ["/a", "/b", "/c"] {
                streams.append(try gateway.submitRequest(HTTPHeaders([(":method", "GET"), (":scheme", "https"),
                                                                      (":authority", "d"), (":path", path)]),
                                                         endStream: true))
            }
            de = []
            try pump(device, gateway, chunk: chunk, deviceEvents: &de, gatewayEvents: &ge)
            // Each stream's body: a pattern of its own, sent in uneven pieces, with
            // frames taken between the pieces.
            var sent: [Int32: [UInt8]] = [:]
            for (k, s) in streams.enumerated() {
                try device.submitResponse(stream: s, HTTPHeaders([(":status", "200")]), endStream: false)
                sent[s] = (0..<60_000).map { UInt8(truncatingIfNeeded: $0 * (k + 3) + k) }
            }
            var received: [Int32: [UInt8]] = [:]
            var trailers: [Int32: String] = [:]
            var ended: Set<Int32> = []
            func drain() throws {
                ge = []
                try pump(device, gateway, chunk: chunk, deviceEvents: &de, gatewayEvents: &ge)
                for e in ge {
                    switch e {
                    case .data(let s, let bytes):
                        received[s, default: []] += bytes
                        gateway.consume(stream: s, count: bytes.count)
                    case .headers(let s, let h, let end):
                        if let t = h.first("x-checksum") { trailers[s] = t }
                        if end { ended.insert(s) }
                    case .endStream(let s):
                        ended.insert(s)
                    default: break
                    }
                }
            }
            var offset = 0
            for piece in [1, 9, 16_384, 5_000, 30_000, 8_606] {
                for s in streams {
                    device.sendData(stream: s, Array(sent[s]![offset..<offset + piece]), endStream: false)
                }
                offset += piece
                try drain()
            }
            XCTAssertEqual(offset, 60_000)
            for s in streams { device.sendTrailers(stream: s, HTTPHeaders([("x-checksum", String(s))])) }
            try drain()
            for s in streams {
                XCTAssertEqual(received[s], sent[s], "stream \(s), chunk \(chunk)")
                XCTAssertEqual(trailers[s], String(s))
                XCTAssertTrue(ended.contains(s))
                XCTAssertEqual(device.pendingBody(stream: s), 0)
            }
        }
    }

    func testTakeOutputStopsAtItsLimitEvenForDataFrames() throws {
        let device = try HTTP2Session(role: .server, preface: .reversed)
        let gateway = try HTTP2Session(role: .client, preface: .reversed)
        var de: [HTTP2Event] = []
        var ge: [HTTP2Event] = []
        try pump(device, gateway, chunk: 1 << 20, deviceEvents: &de, gatewayEvents: &ge)
        let s = try gateway.submitRequest(HTTPHeaders([(":method", "GET"), (":scheme", "https"),
                                                       (":authority", "d"), (":path", "/")]), endStream: true)
        try pump(device, gateway, chunk: 1 << 20, deviceEvents: &de, gatewayEvents: &ge)
        try device.submitResponse(stream: s, HTTPHeaders([(":status", "200")]), endStream: false)
        device.sendData(stream: s, [UInt8](repeating: 7, count: 60_000), endStream: true)
        var out: [UInt8] = []
        try device.takeOutput(into: &out, limit: 20_000)
        XCTAssertGreaterThanOrEqual(out.count, 20_000)
        XCTAssertLessThan(out.count, 20_000 + 16_384 + 9, "at most one DATA frame past the limit")
        XCTAssertGreaterThan(device.pendingBody(stream: s), 0, "the rest waits in the stream's queue")
    }
}
