// idle-ping on an injected clock: when to PING, when to give up, what counts as life.
@testable import Wire
import XCTest

final class LivenessTests: XCTestCase {
    let ms: UInt64 = 1_000_000

    func testSilentPeerIsPingedThenDeclaredDead() {
        var l = Liveness(intervalMs: 4000, now: 0)
        XCTAssertEqual(l.tickMs, 1000)
        XCTAssertEqual(l.tick(now: 3999 * ms), .none)
        XCTAssertEqual(l.tick(now: 4000 * ms), .sendPing)
        XCTAssertTrue(l.awaitingAck)
        XCTAssertEqual(l.tick(now: 5000 * ms), .none, "one PING at a time")
        XCTAssertEqual(l.tick(now: 7999 * ms), .none)
        XCTAssertEqual(l.tick(now: 8000 * ms), .dead)
    }

    func testAnyBytesCountAsLife() {
        var l = Liveness(intervalMs: 4000, now: 0)
        XCTAssertEqual(l.tick(now: 4000 * ms), .sendPing)
        l.received(now: 4100 * ms)  // the ACK, or any frame
        XCTAssertFalse(l.awaitingAck)
        XCTAssertEqual(l.tick(now: 8000 * ms), .none)
        XCTAssertEqual(l.tick(now: 8100 * ms), .sendPing)
        for t in stride(from: 8200, to: 20000, by: 500) {
            l.received(now: UInt64(t) * ms)
            XCTAssertEqual(l.tick(now: UInt64(t) * ms), .none, "a busy connection is never pinged")
        }
    }

    func testWorstCaseDetectionWithQuarterTicksIsUnderNineSeconds() {
        // Ticks every tickMs from a phase just after the last byte: the worst case.
        var l = Liveness(intervalMs: 4000, now: 1)
        var t: UInt64 = 0
        var deadAt: UInt64?
        for _ in 0..<100 {
            t += UInt64(l.tickMs) * ms
            if l.tick(now: t) == .dead { deadAt = t; break }
        }
        XCTAssertNotNil(deadAt)
        XCTAssertLessThanOrEqual(deadAt!, 9000 * ms)
    }
}
