// Review of issue 13: a dot segment whose path parameter starts with an encoded `;`.
import FleetAccess
import XCTest

final class ReviewI13PathTests: XCTestCase {
    /// "..;x" (raw `;`) is non-canonical, and denyMatch already takes %3B as the start of
    /// path parameters, but "..%3B" counts as an ordinary segment: a server that decodes
    /// before it strips parameters (Jetty's "ambiguous path parameter", older Undertow)
    /// reads /api/..%3B/admin as /admin, which `allow ... paths=/api/` lets through.
    func testEncodedSemicolonAfterDotsIsNonCanonical() throws {
        XCTAssertNil(PathCanonical.canonical("/api/..%3B/admin"))
        XCTAssertNil(PathCanonical.canonical("/api/.%3bx/admin"))
        let policy = try AccessPolicy.parse("allow anyone * paths=/api/\n", file: "p")
        XCTAssertFalse(policy.decide(AccessRequest(principal: nil, device: "dev1", method: "GET",
                                                   path: "/api/..%3B/admin", source: "192.0.2.1")).allowed)
    }
}
