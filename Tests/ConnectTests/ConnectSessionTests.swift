// fleet-connect without sockets: the command line, the answer head, and the
// session's state machine (answers, half-closes in both orders, errors).
@testable import FleetConnectKit
import XCTest

final class ConnectOptionsTests: XCTestCase {
    func parse(_ s: String) throws -> ConnectOptions {
        try ConnectOptions(arguments: s.split(separator: " ").map(String.init))
    }

    func error(_ s: String) -> String? {
        do { _ = try parse(s); return nil } catch let e as OptionError { return e.message } catch { return "\(error)" }
    }

    func testTypicalLines() throws {
        let o = try parse("dev1.devices.example.com 22 --gateway https://gw.example.com --token-file /t")
        XCTAssertEqual(o.host, "dev1.devices.example.com")
        XCTAssertEqual(o.port, 22)
        XCTAssertEqual(o.gateway, GatewayURL(tls: true, host: "gw.example.com", port: 443))
        XCTAssertEqual(o.tokenFile, "/t")
        XCTAssertEqual(o.authority, "dev1.devices.example.com:22")

        let c = try parse("--gateway=https://gw:8443/ --cert c.pem --key k.pem --ca ca.pem dev1 5900")
        XCTAssertEqual(c.gateway, GatewayURL(tls: true, host: "gw", port: 8443))
        XCTAssertEqual(c.certFile, "c.pem")
        XCTAssertEqual(c.keyFile, "k.pem")
        XCTAssertEqual(c.caFile, "ca.pem")
        XCTAssertEqual(c.port, 5900)

        let p = try parse("dev1 22 --gateway http://127.0.0.1:8080")
        XCTAssertEqual(p.gateway, GatewayURL(tls: false, host: "127.0.0.1", port: 8080))
        XCTAssertEqual(try parse("dev1 22 --gateway http://[::1]:81").gateway, GatewayURL(tls: false, host: "::1", port: 81))
        XCTAssertEqual(try parse("dev1 22 --gateway http://localhost").gateway.port, 80)
        XCTAssertTrue(try parse("--help").help)
        XCTAssertTrue(try parse("--version").version)
    }

    func testMistakes() {
        XCTAssertEqual(error("dev1 22"), "--gateway URL is required")
        XCTAssertNotNil(error("dev1 --gateway https://gw")?.range(of: "expected HOST PORT"))
        XCTAssertNotNil(error("dev1 22 extra --gateway https://gw")?.range(of: "expected HOST PORT"))
        XCTAssertNotNil(error("dev1 0 --gateway https://gw")?.range(of: "PORT must be"))
        XCTAssertNotNil(error("dev1 65536 --gateway https://gw")?.range(of: "PORT must be"))
        XCTAssertNotNil(error("dev1 2x --gateway https://gw")?.range(of: "PORT must be"))
        XCTAssertNotNil(error("dev1:22 22 --gateway https://gw")?.range(of: "bad HOST"))
        XCTAssertNotNil(error("-dev 22 --gateway https://gw")?.range(of: "unknown option"))
        XCTAssertNotNil(error("dev1 22 --gateway http://10.0.0.1")?.range(of: "loopback"))
        XCTAssertNotNil(error("dev1 22 --gateway http://127.0.0.1.evil.com")?.range(of: "loopback"))
        XCTAssertNotNil(error("dev1 22 --gateway ftp://gw")?.range(of: "--gateway must be"))
        XCTAssertNotNil(error("dev1 22 --gateway https://gw/path")?.range(of: "no path"))
        XCTAssertNotNil(error("dev1 22 --gateway https://user@gw")?.range(of: "no path"))
        XCTAssertNotNil(error("dev1 22 --gateway https://gw:0")?.range(of: "bad host or port"))
        XCTAssertNotNil(error("dev1 22 --gateway https://gw: ")?.range(of: "bad host or port"))
        XCTAssertNotNil(error("dev1 22 --gateway https://gw --cert c")?.range(of: "go together"))
        XCTAssertNotNil(error("dev1 22 --gateway https://gw --cert c --key k --token-file t")?.range(of: "not both"))
        XCTAssertNotNil(error("dev1 22 --gateway http://127.0.0.1 --ca c")?.range(of: "https"))
        XCTAssertEqual(error("dev1 22 --gateway"), "--gateway needs a value")
        XCTAssertEqual(error("dev1 22 --gateway https://gw --bogus 1"), "unknown option '--bogus'")
    }

    func testTokenFile() throws {
        XCTAssertEqual(try ConnectOptions.token(fromFileContents: Array("rht_abc\n".utf8)), "rht_abc")
        XCTAssertEqual(try ConnectOptions.token(fromFileContents: Array("  rht_abc \r\nsecond\n".utf8)), "rht_abc")
        XCTAssertThrowsError(try ConnectOptions.token(fromFileContents: Array("\nrht_abc\n".utf8)))
        XCTAssertThrowsError(try ConnectOptions.token(fromFileContents: Array("rht abc\n".utf8)))
        XCTAssertThrowsError(try ConnectOptions.token(fromFileContents: Array("rht\u{1}\n".utf8)))
    }
}

final class ConnectAnswerTests: XCTestCase {
    func testEstablished() {
        let bytes = Array("HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0".utf8)
        guard case .head(let a) = ConnectAnswer.parse(bytes) else { return XCTFail() }
        XCTAssertEqual(a.status, 200)
        XCTAssertEqual(a.reason, "Connection established")
        XCTAssertEqual(Array(bytes[a.headLength...]), Array("SSH-2.0".utf8))
    }

    func testEveryPrefixNeedsMore() {
        let bytes = Array("HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\nRetry-After: 5\r\n\r\n".utf8)
        for n in 0..<bytes.count {
            XCTAssertEqual(ConnectAnswer.parse(Array(bytes[0..<n])), .needMore, "prefix \(n)")
        }
        guard case .head(let a) = ConnectAnswer.parse(bytes) else { return XCTFail() }
        XCTAssertEqual(a.status, 403)
        XCTAssertEqual(a.contentLength, 10)
        XCTAssertEqual(a.retryAfter, "5")
        XCTAssertEqual(a.headLength, bytes.count)
    }

    func testInterimSkippedAndBareLF() {
        let bytes = Array("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200\nX: y\n\nrest".utf8)
        guard case .head(let a) = ConnectAnswer.parse(bytes) else { return XCTFail() }
        XCTAssertEqual(a.status, 200)
        XCTAssertEqual(a.reason, "")
        XCTAssertEqual(Array(bytes[a.headLength...]), Array("rest".utf8))
    }

    func testInvalid() {
        func invalid(_ s: String) -> Bool {
            if case .invalid = ConnectAnswer.parse(Array(s.utf8)) { return true }
            return false
        }
        XCTAssertTrue(invalid("SSH-2.0-OpenSSH\r\n\r\n"))
        XCTAssertTrue(invalid("HTTP/2 200\r\n\r\n"))
        XCTAssertTrue(invalid("HTTP/1.1 2x0 OK\r\n\r\n"))
        XCTAssertTrue(invalid("HTTP/1.1 200OK\r\n\r\n"))
        XCTAssertTrue(invalid("HTTP/1.1 403 F\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"))
        XCTAssertTrue(invalid("HTTP/1.1 403 F\r\nno colon\r\n\r\n"))
        let big = "HTTP/1.1 200 OK\r\n" + String(repeating: "X-Pad: 0123456789\r\n", count: 500)
        XCTAssertTrue(invalid(big))
        XCTAssertTrue(invalid(big + "\r\n"))
    }
}

final class ConnectSessionTests: XCTestCase {
    func session() -> ConnectSession {
        var o = ConnectOptions()
        o.host = "dev1"
        o.port = 22
        o.gateway = GatewayURL(tls: true, host: "gw", port: 443)
        return ConnectSession(options: o, token: "rht_x", version: "1.0")
    }

    /// The exit status and message when `actions` end the session.
    func exitCode(_ actions: ConnectSession.Actions, _ s: ConnectSession) -> (Int32, String?)? {
        guard actions.contains(.exit) else { return nil }
        XCTAssertEqual(s.state, .finished)
        return (s.exitStatus, s.exitMessage.isEmpty ? nil : s.exitMessage)
    }

    func testRequest() {
        var s = session()
        XCTAssertEqual(s.handle(.connected), [.sendRequest])
        XCTAssertEqual(s.request, Array(
            "CONNECT dev1:22 HTTP/1.1\r\nHost: dev1:22\r\nAuthorization: Bearer rht_x\r\nUser-Agent: fleet-connect/1.0\r\n\r\n".utf8))
        XCTAssertEqual(s.handle(.connected), [])
        XCTAssertEqual(ConnectSession.request(authority: "d:1", token: nil, version: "v"),
                       Array("CONNECT d:1 HTTP/1.1\r\nHost: d:1\r\nUser-Agent: fleet-connect/v\r\n\r\n".utf8))
    }

    func testEstablishedThenStdinEndsFirst() {
        var s = session()
        _ = s.handle(.connected)
        XCTAssertEqual(s.handle(.gatewayData(Array("HTTP/1.1 200 Connection".utf8))), [])
        XCTAssertEqual(s.handle(.gatewayData(Array(" established\r\n\r\nSSH".utf8))), [.writeStdout, .startStdin])
        XCTAssertEqual(s.takeOutput(), Array("SSH".utf8))
        XCTAssertEqual(s.takeOutput(), [])
        XCTAssertTrue(s.isBridging)
        XCTAssertEqual(s.handle(.gatewayData([1, 2])), [.writeStdout])
        XCTAssertEqual(s.takeOutput(), [1, 2])
        XCTAssertEqual(s.handle(.stdinEOF), [.finishGatewayWrite])
        XCTAssertEqual(s.handle(.stdinEOF), [])
        XCTAssertEqual(s.handle(.gatewayWriteDone), [])
        // Bytes keep flowing towards stdout after our half-close.
        XCTAssertEqual(s.handle(.gatewayData([3])), [.writeStdout])
        XCTAssertEqual(s.takeOutput(), [3])
        XCTAssertEqual(s.handle(.gatewayEOF), [.finishStdout])
        XCTAssertEqual(s.handle(.stdoutDone), [.exit])
        XCTAssertEqual(s.state, .finished)
        XCTAssertEqual(s.exitStatus, 0)
        XCTAssertEqual(s.exitMessage, "")
        XCTAssertEqual(s.handle(.gatewayData([4])), [])
    }

    func testGatewayEndsFirst() {
        var s = session()
        _ = s.handle(.connected)
        XCTAssertEqual(s.handle(.gatewayData(Array("HTTP/1.1 200 OK\r\n\r\n".utf8))), [.startStdin])
        XCTAssertEqual(s.handle(.gatewayEOF), [.finishStdout])
        XCTAssertEqual(s.handle(.gatewayEOF), [])
        XCTAssertEqual(s.handle(.stdoutDone), [])
        XCTAssertEqual(s.upstream, .open)
        XCTAssertEqual(s.downstream, .done)
        XCTAssertEqual(s.handle(.stdinEOF), [.finishGatewayWrite])
        XCTAssertEqual(s.handle(.gatewayWriteDone), [.exit])
        XCTAssertEqual(s.exitStatus, 0)
    }

    func testRefusalWithBodyInPieces() {
        var s = session()
        _ = s.handle(.connected)
        let head = "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 26\r\n\r\nno "
        XCTAssertEqual(s.handle(.gatewayData(Array(head.utf8))), [])
        let a = s.handle(.gatewayData(Array("rule allows port 22\n...".utf8)))
        XCTAssertEqual(exitCode(a, s)?.0, 1)
        XCTAssertEqual(exitCode(a, s)?.1, "dev1:22 via https://gw:443: gateway answered 403 Forbidden: no rule allows port 22")
    }

    func testRefusalWithoutBodyAndRetryAfter() {
        var s = session()
        _ = s.handle(.connected)
        let a = s.handle(.gatewayData(Array("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 10\r\nContent-Length: 0\r\n\r\n".utf8)))
        XCTAssertEqual(exitCode(a, s)?.1, "dev1:22 via https://gw:443: gateway answered 503 Service Unavailable (retry after 10 s)")
    }

    func testRefusalCutShort() {
        var s = session()
        _ = s.handle(.connected)
        XCTAssertEqual(s.handle(.gatewayData(Array("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 100\r\n\r\nport clo".utf8))), [])
        let a = s.handle(.gatewayEOF)
        XCTAssertEqual(exitCode(a, s)?.1, "dev1:22 via https://gw:443: gateway answered 502 Bad Gateway: port clo")
    }

    func testErrorsBeforeAndAfterTheAnswer() {
        var s = session()
        var a = s.handle(.failed("connect: refused"))
        XCTAssertEqual(exitCode(a, s)?.1, "dev1:22 via https://gw:443: connect: refused")
        s = session()
        _ = s.handle(.connected)
        a = s.handle(.gatewayEOF)
        XCTAssertEqual(exitCode(a, s)?.1, "dev1:22 via https://gw:443: the gateway closed the connection without answering")
        s = session()
        _ = s.handle(.connected)
        a = s.handle(.gatewayData(Array("garbage\r\n\r\n".utf8)))
        XCTAssertNotNil(exitCode(a, s)?.1?.range(of: "bad answer"))
        s = session()
        a = s.handle(.answerTimeout(seconds: 60))
        XCTAssertEqual(exitCode(a, s)?.1, "dev1:22 via https://gw:443: no answer from the gateway within 60 s")
        s = session()
        _ = s.handle(.connected)
        _ = s.handle(.gatewayData(Array("HTTP/1.1 200 OK\r\n\r\n".utf8)))
        XCTAssertEqual(s.handle(.answerTimeout(seconds: 60)), [])
        a = s.handle(.failed("reset"))
        XCTAssertEqual(exitCode(a, s)?.0, 1)
        XCTAssertEqual(s.handle(.stdinEOF), [])
    }
}
