import FleetAccess
import XCTest

final class PrincipalTests: XCTestCase {
    func testDisplayNames() {
        XCTAssertEqual(Principal(method: .token, name: "ci").displayName, "token:ci")
        XCTAssertEqual(Principal(method: .certificate, name: "alice").displayName, "user:alice")
        XCTAssertEqual(Principal(method: .jwt, name: "123", email: "a@example.com").displayName, "a@example.com")
        XCTAssertEqual(Principal(method: .jwt, name: "123").displayName, "sub:123")
    }
}
