// Name resolution off the loop (getaddrinfo_a).
@testable import EventLoop
import XCTest

final class ResolverTests: XCTestCase {
    func resolve(_ host: String, timeoutMs: Int = 3000) -> Result<[SocketAddress], SocketError>? {
        let loop = EventLoop()
        var result: Result<[SocketAddress], SocketError>?
        Resolution.start(loop: loop, HostPort(host: host, port: 443), timeoutMs: timeoutMs) { result = $0 }
        XCTAssertNil(result, "the answer never comes inside start()")
        for _ in 0..<2000 where result == nil { loop.runOnce(maxWaitMilliseconds: 10) }
        return result
    }

    func testLocalhostResolvesWithoutBlocking() throws {
        guard case .success(let addrs)? = resolve("localhost") else { return XCTFail("localhost did not resolve") }
        XCTAssertTrue(addrs.contains { $0.host == "127.0.0.1" || $0.host == "::1" }, "\(addrs.map(\.description))")
        XCTAssertTrue(addrs.allSatisfy { $0.description.hasSuffix(":443") })
    }

    func testLiteralsNeedNoLookup() throws {
        guard case .success(let v4)? = resolve("127.0.0.1"), case .success(let v6)? = resolve("::1") else { return XCTFail() }
        XCTAssertEqual(v4.map(\.description), ["127.0.0.1:443"])
        XCTAssertEqual(v6.map(\.description), ["[::1]:443"])
    }

    func testUnknownNameFailsWithItsName() throws {
        guard case .failure(let e)? = resolve("no-such-host.invalid", timeoutMs: 2000) else { return XCTFail("resolved?") }
        XCTAssertTrue(e.description.contains("no-such-host.invalid"), e.description)
    }
}
