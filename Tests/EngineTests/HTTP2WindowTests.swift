// A receiver that acknowledges DATA only as its reader takes it (no automatic
// WINDOW_UPDATE), and grows a stream's window when the reader keeps up: the
// gateway's users' uploads work this way (FleetGateway/UploadWindow.swift).
import HTTP1
@testable import HTTP2
import XCTest

final class HTTP2WindowTests: XCTestCase {
    /// Moves bytes both ways until both are quiet; returns the DATA bytes the server received.
    func pump(_ client: HTTP2Session, _ server: HTTP2Session) throws -> Int {
        var received = 0
        for _ in 0..<1000 {
            var a: [UInt8] = []
            try client.takeOutput(into: &a)
            var b: [UInt8] = []
            try server.takeOutput(into: &b)
            if a.isEmpty && b.isEmpty { return received }
            if !a.isEmpty { try server.receive(a) }
            if !b.isEmpty { try client.receive(b) }
            for case .data(_, let bytes) in server.takeEvents() { received += bytes.count }
            _ = client.takeEvents()
        }
        XCTFail("pump did not settle")
        return received
    }

    func testStreamWindowBoundsUnacknowledgedDataAndGrows() throws {
        var settings = HTTP2Settings()
        settings.initialWindowSize = 64 << 10
        let server = try HTTP2Session(role: .server, preface: .standard, settings: settings)
        let client = try HTTP2Session(role: .client, preface: .standard)
        _ = try pump(client, server)
        let s = try client.submitRequest(HTTPHeaders([(":method", "POST"), (":scheme", "http"),
                                                      (":authority", "dev1.example"), (":path", "/up")]), endStream: false)
        client.sendData(stream: s, [UInt8](repeating: 1, count: 1 << 20), endStream: true)

        // Nothing acknowledged: the client stops at the stream's window.
        XCTAssertEqual(try pump(client, server), 64 << 10)
        XCTAssertEqual(try pump(client, server), 0)

        // The reader took it all, and the window doubles: the next round is 128 KiB.
        server.consume(stream: s, count: 64 << 10)
        server.setReceiveWindow(stream: s, size: 128 << 10)
        XCTAssertEqual(try pump(client, server), 128 << 10)

        // Half acknowledged: only that half comes again.
        server.consume(stream: s, count: 64 << 10)
        XCTAssertEqual(try pump(client, server), 64 << 10)
    }
}
