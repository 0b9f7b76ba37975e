// HealthChecker's rules (docs/architecture.md: check_rise/check_fall move a device
// between unknown, up and down) and what they do to routing: a device that is down
// gets 503 at once, and one that comes up again sends what waits for it. Results
// are fed as HealthCheck records them; time is a ManualClock; no sockets.
import EventLoop
@testable import FleetGatewayKit
import ConfigFormat
import XCTest

private final class Conn: DeviceStreamTarget {
    let identity = DeviceIdentity(name: "dev1", hostname: "dev1")
    let connectedAt: UInt64 = 0
    var streamsInFlight = 0
    var canTakeStream: Bool { streamsInFlight < 1 }
}

private final class Directory: DeviceDirectory {
    var list: [Conn] = []
    func connections(hostname: String) -> [Conn] { hostname == "dev1" ? list : [] }
}

private final class Request: QueuedRequest {
    var sent = false
    func dispatchFromQueue(to connection: Conn) -> Bool {
        connection.streamsInFlight += 1
        sent = true
        return true
    }
}

final class HealthRuleTests: XCTestCase {
    private let clock = ManualClock()
    private lazy var loop = EventLoop(clock: clock.clock)
    private let logger = Logger(program: "test", level: .error)

    private func settings(rise: Int = 2, fall: Int = 3) -> CurrentConfig {
        var s = Settings()
        try! ConfigFile.parse(Array("plaintext_devices = true\ncheck_rise = \(rise)\ncheck_fall = \(fall)\n".utf8), name: "gw.conf", into: &s)
        return CurrentConfig(try! GatewayConfig(s))
    }

    private func checker(_ settings: CurrentConfig) -> HealthChecker {
        HealthChecker(loop: loop, logger: logger, settings: settings, directory: GatewayDirectory())
    }

    func testCheckFallFailuresInARowMakeADeviceDownAndCheckRiseSuccessesUp() {
        let h = checker(settings())
        h.deviceConnected(hostname: "dev1")
        XCTAssertEqual(h.devices["dev1"]?.state, .unknown)
        h.record("dev1", ok: false, timedOut: true, latencyMs: 1)
        h.record("dev1", ok: false, timedOut: false, latencyMs: 1)
        h.record("dev1", ok: true, timedOut: false, latencyMs: 1)  // breaks the run
        h.record("dev1", ok: false, timedOut: false, latencyMs: 1)
        h.record("dev1", ok: false, timedOut: false, latencyMs: 1)
        XCTAssertNil(h.downSince(hostname: "dev1"), "two failures in a row, check_fall is 3")
        clock.advance(milliseconds: 1_500)
        h.record("dev1", ok: false, timedOut: false, latencyMs: 1)
        XCTAssertEqual(h.devices["dev1"]?.state, .down)
        XCTAssertEqual(h.downSince(hostname: "dev1"), clock.nanoseconds)
        var up: [String] = []
        h.onDeviceUp = { up.append($0) }
        h.record("dev1", ok: true, timedOut: false, latencyMs: 1)
        XCTAssertEqual(h.devices["dev1"]?.state, .down)
        h.record("dev1", ok: true, timedOut: false, latencyMs: 1)
        XCTAssertEqual(h.devices["dev1"]?.state, .up)
        XCTAssertNil(h.downSince(hostname: "dev1"))
        XCTAssertEqual(up, ["dev1"])
        XCTAssertEqual(h.results, ["success": 3, "failure": 4, "timeout": 1])
    }

    func testADeviceThatGoesAwayForgetsItsHealth() {
        let h = checker(settings(fall: 1))
        h.deviceConnected(hostname: "dev1")
        h.record("dev1", ok: false, timedOut: false, latencyMs: 1)
        XCTAssertNotNil(h.downSince(hostname: "dev1"))
        h.deviceGone(hostname: "dev1")
        XCTAssertNil(h.downSince(hostname: "dev1"))
        h.deviceConnected(hostname: "dev1")
        XCTAssertEqual(h.devices["dev1"]?.state, .unknown, "a re-dialed device starts unknown, not down")
    }

    /// Down: 503 at once, even with a free connection; up again: what waited goes.
    func testADownDeviceIsRefusedAtOnceAndOneComingUpSendsWhatWaits() {
        let s = settings(rise: 1, fall: 1)
        let h = checker(s)
        let directory = Directory()
        let conn = Conn()
        directory.list = [conn]
        let queue = RequestQueue<Request, Directory>(clock: clock.clock, settings: s, directory: directory, health: h)
        h.onDeviceUp = { queue.deviceAvailable(hostname: $0) }
        h.deviceConnected(hostname: "dev1")
        conn.streamsInFlight = 1
        let waiting = Request()
        guard case .wait = queue.route(waiting, hostname: "dev1") else { return XCTFail("a busy device: the request waits") }
        h.record("dev1", ok: false, timedOut: true, latencyMs: 1)
        conn.streamsInFlight = 0
        guard case .reject(503, _, true) = queue.route(Request(), hostname: "dev1") else { return XCTFail("down: 503 at once") }
        h.record("dev1", ok: true, timedOut: false, latencyMs: 1)
        XCTAssertTrue(waiting.sent, "coming up sends the request that waited")
        XCTAssertEqual(queue.count, 0)
    }
}
