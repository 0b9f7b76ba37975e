// TLS in memory: the agent's client context against the gateway's device
// listener context, ciphertext moved by hand in every split.
import HTTP1
import HTTP2
@testable import TLS
import XCTest

final class TLSTests: XCTestCase {
    static let pki = try! TestPKI.make(leaves: ["gw.example", "dev1.example"])
    static let foreign = try! TestPKI.make(leaves: ["dev1.example"])

    func gatewayContext() throws -> TLSContext {
        var c = TLSConfiguration(role: .server)
        c.certificateFile = Self.pki.cert("gw.example")
        c.keyFile = Self.pki.key("gw.example")
        c.trustFile = Self.pki.caCert
        c.alpn = ["h2"]
        return try TLSContext(c)
    }

    func deviceContext(_ pki: TestPKI, min: TLSVersion = .tls13) throws -> TLSContext {
        var c = TLSConfiguration(role: .client)
        c.certificateFile = pki.cert("dev1.example")
        c.keyFile = pki.key("dev1.example")
        c.trustFile = Self.pki.caCert
        c.alpn = ["h2"]
        c.minimumVersion = min
        return try TLSContext(c)
    }

    /// Runs both handshakes, moving `chunk` bytes at a time. Returns the errors, if any.
    func handshake(_ client: TLSConnection, _ server: TLSConnection, chunk: Int) -> (TLSError?, TLSError?) {
        var cErr: TLSError?
        var sErr: TLSError?
        for _ in 0..<10_000 {
            var cs: TLSConnection.Progress = .wantMore
            var ss: TLSConnection.Progress = .wantMore
            do { cs = try client.handshake() } catch { cErr = error }
            do { ss = try server.handshake() } catch { sErr = error }
            var a: [UInt8] = []
            client.takeOutput(into: &a)
            var b: [UInt8] = []
            server.takeOutput(into: &b)
            var i = 0
            while i < a.count { server.feed(Array(a[i..<min(a.count, i + chunk)])); i += chunk }
            i = 0
            while i < b.count { client.feed(Array(b[i..<min(b.count, i + chunk)])); i += chunk }
            if cErr != nil || sErr != nil { return (cErr, sErr) }
            if cs == .established && ss == .established && a.isEmpty && b.isEmpty { return (nil, nil) }
        }
        XCTFail("handshake did not settle")
        return (cErr, sErr)
    }

    func testMutualTLSGivesTheDeviceIdentityAndH2() throws {
        for chunk in [1, 13, 4096] {
            let server = try TLSConnection(context: gatewayContext())
            let client = try TLSConnection(context: deviceContext(Self.pki), serverName: "gw.example")
            let (ce, se) = handshake(client, server, chunk: chunk)
            XCTAssertNil(ce)
            XCTAssertNil(se)
            XCTAssertEqual(server.peerCommonName, "dev1.example")
            XCTAssertEqual(server.alpnProtocol, "h2")
            XCTAssertEqual(client.alpnProtocol, "h2")
            XCTAssertEqual(client.protocolVersion, "TLSv1.3")

            // Application data both ways.
            let msg = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
            try msg.withUnsafeBytes { try client.write($0) }
            var wire: [UInt8] = []
            client.takeOutput(into: &wire)
            server.feed(wire)
            var buf = [UInt8](repeating: 0, count: 256)
            let r = try buf.withUnsafeMutableBytes { try server.read(into: $0) }
            guard case .data(let n) = r else { return XCTFail("no data") }
            XCTAssertEqual(Array(buf[0..<n]), msg)
        }
    }

    func testDeviceFromAnotherCAIsRefused() throws {
        let server = try TLSConnection(context: gatewayContext())
        let client = try TLSConnection(context: deviceContext(Self.foreign), serverName: "gw.example")
        let (ce, se) = handshake(client, server, chunk: 4096)
        XCTAssertNotNil(se, "the gateway must refuse a certificate from another CA")
        _ = ce
        XCTAssertNil(server.peerCommonName)
    }

    func testWrongGatewayNameIsRefusedByTheDevice() throws {
        let server = try TLSConnection(context: gatewayContext())
        let client = try TLSConnection(context: deviceContext(Self.pki), serverName: "other.example")
        let (ce, _) = handshake(client, server, chunk: 4096)
        guard case .handshake(_, let verify)? = ce else { return XCTFail("device accepted a wrong gateway name") }
        XCTAssertNotNil(verify)
    }

    func testClientWithoutTrustFileIsRejectedAtConfiguration() {
        var c = TLSConfiguration(role: .client)
        c.alpn = ["h2"]
        XCTAssertThrowsError(try TLSContext(c))
    }

    func testMissingCertificateFileNamesTheFile() {
        var c = TLSConfiguration(role: .server)
        c.certificateFile = "/nonexistent/gw.crt"
        XCTAssertThrowsError(try TLSContext(c)) { e in
            XCTAssertTrue("\(e)".contains("/nonexistent/gw.crt"), "\(e)")
        }
    }

    /// The device listener with EST (issue 17): a certificate is required of clients
    /// that get h2 (reversed connections) and optional for the others (EST).
    func testCertificateRequiredOnlyForH2WithEST() throws {
        var c = TLSConfiguration(role: .server)
        c.certificateFile = Self.pki.cert("gw.example")
        c.keyFile = Self.pki.key("gw.example")
        c.trustFile = Self.pki.caCert
        c.alpn = ["http/1.1", "h2"]
        let gateway = try TLSContext(c)
        gateway.requireClientCertificate(onlyForALPN: "h2")
        func client(alpn: [String], certificate: Bool) throws -> TLSConnection {
            var cc = TLSConfiguration(role: .client)
            if certificate {
                cc.certificateFile = Self.pki.cert("dev1.example")
                cc.keyFile = Self.pki.key("dev1.example")
            }
            cc.trustFile = Self.pki.caCert
            cc.alpn = alpn
            return try TLSConnection(context: TLSContext(cc), serverName: "gw.example")
        }
        // h2 without a certificate: refused at the handshake.
        var server = try TLSConnection(context: gateway)
        var (_, se) = handshake(try client(alpn: ["h2"], certificate: false), server, chunk: 4096)
        XCTAssertNotNil(se)
        // h2 with one: the device.
        server = try TLSConnection(context: gateway)
        (_, se) = handshake(try client(alpn: ["h2"], certificate: true), server, chunk: 4096)
        XCTAssertNil(se)
        XCTAssertEqual(server.alpnProtocol, "h2")
        XCTAssertEqual(server.peerCommonName, "dev1.example")
        XCTAssertNotNil(server.peerCertificateDER)
        // http/1.1 (also when h2 is offered too), or no ALPN: no certificate needed.
        for alpn in [["http/1.1"], ["h2", "http/1.1"], []] {
            server = try TLSConnection(context: gateway)
            (_, se) = handshake(try client(alpn: alpn, certificate: false), server, chunk: 4096)
            XCTAssertNil(se, "\(alpn)")
            XCTAssertEqual(server.alpnProtocol, alpn.isEmpty ? nil : "http/1.1")
            XCTAssertNil(server.peerCertificateDER)
        }
        // A foreign certificate is refused there too.
        var fc = TLSConfiguration(role: .client)
        fc.certificateFile = Self.foreign.cert("dev1.example")
        fc.keyFile = Self.foreign.key("dev1.example")
        fc.trustFile = Self.pki.caCert
        fc.alpn = ["http/1.1"]
        server = try TLSConnection(context: gateway)
        (_, se) = handshake(try TLSConnection(context: TLSContext(fc), serverName: "gw.example"), server, chunk: 4096)
        XCTAssertNotNil(se)
    }
}
