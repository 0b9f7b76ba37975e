import FleetAccess
import XCTest

final class LoopbackTests: XCTestCase {
    func testLoopbackAddresses() {
        for yes in ["127.0.0.1", "127.255.3.4", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", "localhost", "LocalHost"] {
            XCTAssertTrue(Loopback.isLoopback(yes), yes)
        }
        for no in ["0.0.0.0", "::", "128.0.0.1", "10.0.0.1", "::2", "[::1]", "127.0.0.1:80", "localhost.", "localhost.example",
                   "127.1", "", "::ffff:10.0.0.1", "fe80::1"] {
            XCTAssertFalse(Loopback.isLoopback(no), no)
        }
    }
}
