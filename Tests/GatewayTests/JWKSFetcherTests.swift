// JWKSFetcher against a tiny HTTP/1.1 server on the same event loop (loopback,
// plain and TLS): the body of a 200, errors for everything else, the size and
// time bounds, the rate limit, and the URLs refused at start.
import EventLoop
@testable import FleetGatewayKit
import FleetPKI
import HTTP1
import TLS
import ConfigFormat
import Wire
import XCTest

final class JWKSFetcherTests: XCTestCase {
    /// Answers every request (once its head is in) with `answer`, or never when nil.
    final class TinyServer {
        let loop: EventLoop
        let listener: Int32
        let tls: TLSContext?
        var answer: [UInt8]?
        private(set) var accepted = 0
        private(set) var requests: [String] = []
        private var transports: [Transport] = []

        init(loop: EventLoop, answer: [UInt8]?, tls: TLSContext? = nil) throws {
            self.loop = loop
            self.answer = answer
            self.tls = tls
            listener = try Socket.listen(HostPort(host: "127.0.0.1", port: 0))
            loop.register(fd: listener) { _ in self.accept() }
        }

        var port: Int { Socket.localPort(listener) }

        private func accept() {
            while let (fd, peer) = (try? Socket.accept(listener)) ?? nil {
                accepted += 1
                let conn = tls.map { try! TLSConnection(context: $0) }
                let t = Transport(loop: loop, fd: fd, peer: peer, tls: conn, connecting: false)
                var got: [UInt8] = []
                t.onData = { bytes in
                    got += Array(bytes)
                    guard String(decoding: got, as: UTF8.self).contains("\r\n\r\n") else { return }
                    t.onData = nil
                    self.requests.append(String(decoding: got, as: UTF8.self))
                    if let a = self.answer {
                        t.write(a)
                        t.closeAfterFlush()
                    }
                }
                transports.append(t)
                t.start()
            }
        }

        func close() {
            for t in transports { t.close() }
            loop.unregister(fd: listener)
            Socket.close(listener)
        }
    }

    var loop: EventLoop!
    let logger = Logger(program: "jwks-test", level: .error)

    override func setUp() { loop = EventLoop() }

    private func response(_ status: Int, _ fields: [(String, String)], _ body: [UInt8]) -> [UInt8] {
        var h = HTTPHeaders(fields)
        h.add("Connection", "close")
        return HTTP1Writer.responseHead(HTTPResponseHead(status: status, versionMinor: 1, headers: h)) + body
    }

    private let jwks = Array(#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#.utf8)

    /// Runs the loop until the fetch answers (at most ~5 s).
    private func result(of fetcher: JWKSFetcher, force: Bool = false) -> Result<[UInt8], FetchError>? {
        var out: Result<[UInt8], FetchError>?
        fetcher.fetch(force: force) { out = $0 }
        for _ in 0..<1000 where out == nil { loop.runOnce(maxWaitMilliseconds: 5) }
        XCTAssertNotNil(out, "the fetch never answered")
        return out
    }

    private func error(_ r: Result<[UInt8], FetchError>?) -> String? {
        if case .failure(let e) = r { return e.description }
        return nil
    }

    private func fetcher(_ port: Int, path: String = "/jwks", timeoutMs: Int = 10_000) throws -> JWKSFetcher {
        try JWKSFetcher(loop: loop, url: "http://127.0.0.1:" + String(port) + path, caFile: nil, logger: logger, timeoutMs: timeoutMs)
    }

    func testBodyOf200() throws {
        let server = try TinyServer(loop: loop, answer: response(200, [("Content-Length", String(jwks.count))], jwks))
        defer { server.close() }
        let f = try fetcher(server.port, path: "/.well-known/jwks.json?x=1#frag")
        guard case .success(let body) = result(of: f) else { return XCTFail("no body") }
        XCTAssertEqual(body, jwks)
        XCTAssertEqual(server.requests.count, 1)
        let req = server.requests[0]
        XCTAssertTrue(req.hasPrefix("GET /.well-known/jwks.json?x=1 HTTP/1.1\r\n"), req)
        XCTAssertTrue(req.contains("Host: 127.0.0.1:" + String(server.port) + "\r\n"), req)
        XCTAssertTrue(req.contains("Connection: close\r\n"), req)
    }

    func testChunkedAndCloseDelimitedBodies() throws {
        let chunked = HTTP1Writer.chunk(Array(jwks[..<10])) + HTTP1Writer.chunk(Array(jwks[10...])) + HTTP1Writer.lastChunk()
        let a = try TinyServer(loop: loop, answer: response(200, [("Transfer-Encoding", "chunked")], chunked))
        defer { a.close() }
        guard case .success(let body) = result(of: try fetcher(a.port)) else { return XCTFail("chunked") }
        XCTAssertEqual(body, jwks)
        let b = try TinyServer(loop: loop, answer: response(200, [], jwks))
        defer { b.close() }
        guard case .success(let body2) = result(of: try fetcher(b.port)) else { return XCTFail("close-delimited") }
        XCTAssertEqual(body2, jwks)
    }

    func testStatusOtherThan200IsAnError() throws {
        let server = try TinyServer(loop: loop, answer: response(404, [("Content-Length", "9")], Array("not found".utf8)))
        defer { server.close() }
        XCTAssertEqual(error(result(of: try fetcher(server.port))), "HTTP status 404")
        let redirect = try TinyServer(loop: loop, answer: response(302, [("Location", "https://idp.example/keys"), ("Content-Length", "0")], []))
        defer { redirect.close() }
        let e = error(result(of: try fetcher(redirect.port))) ?? ""
        XCTAssertTrue(e.contains("302") && e.contains("not followed") && e.contains("https://idp.example/keys"), e)
        XCTAssertEqual(redirect.accepted, 1)
    }

    func testOversizedBodyIsAnError() throws {
        let big = [UInt8](repeating: 0x20, count: JWKSFetcher.maxBodyBytes + 1)
        // Declared too big: refused at the head.
        let declared = try TinyServer(loop: loop, answer: response(200, [("Content-Length", String(big.count))], Array(big[..<100])))
        defer { declared.close() }
        XCTAssertTrue(error(result(of: try fetcher(declared.port)))?.contains("over the limit") == true)
        // Chunked and close-delimited: refused as the bytes come.
        let chunked = try TinyServer(loop: loop, answer: response(200, [("Transfer-Encoding", "chunked")],
                                                                 HTTP1Writer.chunk(big) + HTTP1Writer.lastChunk()))
        defer { chunked.close() }
        XCTAssertTrue(error(result(of: try fetcher(chunked.port)))?.contains("over the limit") == true)
        let untilClose = try TinyServer(loop: loop, answer: response(200, [], big))
        defer { untilClose.close() }
        XCTAssertTrue(error(result(of: try fetcher(untilClose.port)))?.contains("over the limit") == true)
        // Exactly the limit is fine.
        let exact = try TinyServer(loop: loop, answer: response(200, [("Content-Length", String(big.count - 1))], Array(big.dropLast())))
        defer { exact.close() }
        guard case .success(let body) = result(of: try fetcher(exact.port)) else { return XCTFail("1 MiB refused") }
        XCTAssertEqual(body.count, JWKSFetcher.maxBodyBytes)
    }

    func testSilentServerTimesOut() throws {
        let server = try TinyServer(loop: loop, answer: nil)
        defer { server.close() }
        let f = try fetcher(server.port, timeoutMs: 200)
        let start = loop.now
        let e = error(result(of: f)) ?? ""
        XCTAssertTrue(e.contains("within 200 ms"), e)
        XCTAssertLessThan(loop.now - start, 3_000_000_000)
        XCTAssertEqual(server.requests.count, 1)
        XCTAssertFalse(f.isRunning)
    }

    func testTruncatedAnswerAndRefusedConnectionAreErrors() throws {
        let truncated = try TinyServer(loop: loop, answer: response(200, [("Content-Length", "1000")], Array(jwks[..<5])))
        defer { truncated.close() }
        XCTAssertNotNil(error(result(of: try fetcher(truncated.port))))
        let closed = try TinyServer(loop: loop, answer: nil)
        let port = closed.port
        closed.close()
        XCTAssertNotNil(error(result(of: try fetcher(port))))
    }

    func testOneFetchAMinute() throws {
        let server = try TinyServer(loop: loop, answer: response(200, [("Content-Length", String(jwks.count))], jwks))
        defer { server.close() }
        let f = try fetcher(server.port)
        // Two callers at once share one fetch.
        var first: [Result<[UInt8], FetchError>] = []
        f.fetch { first.append($0) }
        f.fetch { first.append($0) }
        for _ in 0..<1000 where first.count < 2 { loop.runOnce(maxWaitMilliseconds: 5) }
        XCTAssertEqual(first.count, 2)
        XCTAssertEqual(server.accepted, 1)
        // Within the minute: no connection, an error that says why.
        let e = error(result(of: f)) ?? ""
        XCTAssertTrue(e.contains("less than 60 s ago"), e)
        XCTAssertEqual(server.accepted, 1)
        XCTAssertEqual(f.connections, 1)
        // force skips the wait.
        guard case .success = result(of: f, force: true) else { return XCTFail("forced fetch failed") }
        XCTAssertEqual(server.accepted, 2)
    }

    func testFailedFetchesAreRateLimitedToo() throws {
        let server = try TinyServer(loop: loop, answer: response(500, [("Content-Length", "0")], []))
        defer { server.close() }
        let f = try fetcher(server.port)
        XCTAssertEqual(error(result(of: f)), "HTTP status 500")
        XCTAssertTrue(f.failing)
        for _ in 0..<5 { XCTAssertTrue(error(result(of: f))?.hasPrefix("not fetched") == true) }
        XCTAssertEqual(server.accepted, 1)
        // A success ends the failure streak.
        server.answer = response(200, [("Content-Length", String(jwks.count))], jwks)
        guard case .success = result(of: f, force: true) else { return XCTFail("forced fetch failed") }
        XCTAssertFalse(f.failing)
    }

    func testHTTPSVerifiesTheServer() throws {
        let dir = try makeTempDir()
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test", extraSANs: ["localhost"])
        var c = TLSConfiguration(role: .server)
        c.certificateFile = dir + "/gateway.crt"
        c.keyFile = dir + "/gateway.key"
        let server = try TinyServer(loop: loop, answer: response(200, [("Content-Length", String(jwks.count))], jwks),
                                    tls: TLSContext(c))
        defer { server.close() }
        let good = try JWKSFetcher(loop: loop, url: "https://localhost:" + String(server.port) + "/jwks",
                                   caFile: dir + "/ca.crt", logger: logger)
        guard case .success(let body) = result(of: good) else { return XCTFail("https fetch failed") }
        XCTAssertEqual(body, jwks)
        // The certificate names localhost and gw.fleet.test, not 127.0.0.1.
        let wrongName = try JWKSFetcher(loop: loop, url: "https://127.0.0.1:" + String(server.port) + "/jwks",
                                        caFile: dir + "/ca.crt", logger: logger)
        XCTAssertTrue(error(result(of: wrongName))?.contains("TLS") == true)
        // Another CA: not trusted.
        let other = try makeTempDir()
        try PKI.initialize(directory: other, gatewayName: "gw.fleet.test", extraSANs: ["localhost"])
        let wrongCA = try JWKSFetcher(loop: loop, url: "https://localhost:" + String(server.port) + "/jwks",
                                      caFile: other + "/ca.crt", logger: logger)
        XCTAssertTrue(error(result(of: wrongCA))?.contains("TLS") == true)
        XCTAssertEqual(server.requests.count, 1)
    }

    func testURLsRefusedAtStart() {
        for bad in ["http://10.0.0.1/jwks", "http://idp.example.com/jwks", "http://[2001:db8::1]/k", "ftp://127.0.0.1/k",
                    "https://user@idp.example.com/k", "https://", "https://idp example.com/k", "https://idp.example.com:0/k",
                    "https://idp.example.com:99999/k", "https://[::1/k", "idp.example.com/jwks", "https://idp_x!.example.com/"] {
            XCTAssertThrowsError(try JWKSFetcher(loop: loop, url: bad, caFile: nil, logger: logger), bad) { e in
                XCTAssertTrue((e as? ConfigError)?.message.hasPrefix("jwt_jwks_url: ") == true, "\(e)")
            }
        }
        XCTAssertThrowsError(try JWKSFetcher(loop: loop, url: "https://idp.example.com/k", caFile: "/nonexistent/ca.pem", logger: logger))
    }

    func testURLParts() throws {
        let a = try JWKSURL("https://IdP.example.com/.well-known/jwks.json")
        XCTAssertTrue(a.https)
        XCTAssertEqual(a.port, 443)
        XCTAssertEqual(a.hostField, "IdP.example.com")
        XCTAssertEqual(a.target, "/.well-known/jwks.json")
        let b = try JWKSURL("http://[::1]:8080?k=1")
        XCTAssertFalse(b.https)
        XCTAssertEqual(b.host, "::1")
        XCTAssertEqual(b.hostField, "[::1]:8080")
        XCTAssertEqual(b.target, "/?k=1")
        XCTAssertEqual(try JWKSURL("HTTP://localhost/k").hostField, "localhost")
        XCTAssertEqual(try JWKSURL("http://127.1.2.3:80/k").hostField, "127.1.2.3")
    }
}
