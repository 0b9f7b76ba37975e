@testable import FleetGatewayKit
import XCTest

final class HeapTrimPolicyTests: XCTestCase {
    func testTrimsOnceAfterAStormHasCalmedDown() {
        var p = HeapTrimPolicy(threshold: 100, calm: 5)
        for _ in 0..<60 { p.connectionChanged() }
        XCTAssertFalse(p.tick(), "below the threshold")
        for _ in 0..<60 { p.connectionChanged() }
        XCTAssertFalse(p.tick(), "over the threshold, but the storm goes on")
        for _ in 0..<3 { p.connectionChanged() }
        XCTAssertTrue(p.tick(), "over the threshold and calm: trim")
        XCTAssertEqual(p.sinceTrim, 0)
        XCTAssertFalse(p.tick(), "once per storm")
    }

    func testAFewChangesAtATimeAddUpToOneTrim() {
        var p = HeapTrimPolicy(threshold: 20, calm: 5)
        var trims = 0
        for _ in 0..<10 {
            for _ in 0..<4 { p.connectionChanged() }
            if p.tick() { trims += 1 }
        }
        XCTAssertEqual(trims, 2, "40 changes, 4 per period: a trim every 20")
    }
}
