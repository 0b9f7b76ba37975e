// The simulator as a library: an in-process fleet against an in-process gateway,
// on one event loop, over loopback. The loop runs until an awaited event, bounded
// in turns and time; nothing sleeps.
import DeviceSimKit
import EventLoop
@testable import FleetGatewayKit
import FleetPKI
import Foundation
import HTTP1
import ConfigFormat
import Wire
import XCTest

final class FleetTests: XCTestCase {
    private var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "simtests-" + UUID().uuidString
        try PKI.initialize(directory: dir + "/pki", gatewayName: "localhost", extraSANs: ["127.0.0.1"])
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Turns the loop until `done()` or `seconds` pass; returns `done()`.
    private func run(_ loop: EventLoop, seconds: Double, until done: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        var turns = 0
        while !done() && Date() < deadline && turns < 1_000_000 {
            loop.runOnce(maxWaitMilliseconds: 10)
            turns += 1
        }
        return done()
    }

    private func startGateway(_ loop: EventLoop, _ extra: [String] = []) throws -> Gateway {
        var s = Settings()
        _ = try parseCommandLine(["--ca", dir + "/pki/ca.crt", "--cert", dir + "/pki/gateway.crt",
                                  "--key", dir + "/pki/gateway.key", "--hostname-template", "{cn}.sim.test"] + extra,
                                 flags: GatewayConfig.flags, into: &s)
        var config = try GatewayConfig(s)
        config.listenDevices = HostPort(host: "127.0.0.1", port: 0)  // any free port
        config.listenPublic = HostPort(host: "127.0.0.1", port: 0)
        config.listenAdmin = nil
        let g = try Gateway(config: config, loop: loop, logger: Logger(program: "gw", level: .error))
        try g.start()
        return g
    }

    private func fleetOptions(_ gateway: Gateway, _ args: [String]) throws -> SimOptions {
        var s = Settings()
        _ = try parseCommandLine(["--gateway", "127.0.0.1:" + String(gateway.devicePort), "--server-name", "localhost",
                                  "--ca-dir", dir + "/pki"] + args, flags: SimOptions.flags, into: &s)
        return try SimOptions(s)
    }

    /// One GET through the gateway's public listener, on the same loop.
    private func get(_ loop: EventLoop, port: Int, host: String, path: String) throws -> (status: Int, body: String)? {
        let addr = try Socket.resolve(HostPort(host: "127.0.0.1", port: port))[0]
        let t = Transport(loop: loop, fd: try Socket.startConnect(addr), peer: addr, tls: nil, connecting: true)
        var parser = HTTP1ResponseParser()
        parser.expectResponse(toHEAD: false)
        var status = 0
        var body: [UInt8] = []
        var ended = false
        t.onOpen = { t.write(Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)) }
        t.onData = { bytes in
            for ev in (try? parser.feed(Array(bytes))) ?? [] {
                switch ev {
                case .head(let h): status = h.status
                case .body(let b): body += b
                case .end: ended = true
                }
            }
        }
        t.onClose = { _ in ended = true }
        t.start()
        guard run(loop, seconds: 10, until: { ended }) else { return nil }
        t.close()
        return (status, String(decoding: body, as: UTF8.self))
    }

    func testFleetConnectsServesEachDeviceAndStopsCleanly() throws {
        let loop = EventLoop()
        let gateway = try startGateway(loop)
        let options = try fleetOptions(gateway, ["--devices", "40", "--connections", "2", "--ramp", "400",
                                                 "--fault", "wrong-ca@dev-00003", "--fault", "expired@dev-00004"])
        let fleet = try Fleet(options: options, loop: loop, logger: Logger(program: "sim", level: .error))
        XCTAssertEqual(fleet.expected, 38)
        var all = false
        fleet.whenAllConnected { all = true }
        fleet.start()
        XCTAssertTrue(run(loop, seconds: 30, until: { all }), "connected \(fleet.connectedDevices) of 38")
        XCTAssertEqual(fleet.connections, 76)
        XCTAssertEqual(gateway.registry.deviceCount, 38)
        XCTAssertTrue(gateway.registry.connections(hostname: "dev-00003.sim.test").isEmpty)
        XCTAssertTrue(gateway.registry.connections(hostname: "dev-00004.sim.test").isEmpty)

        for name in ["dev-00001", "dev-00017", "dev-00040"] {
            let r = try XCTUnwrap(get(loop, port: gateway.publicPort, host: name + ".sim.test", path: "/device"))
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.body, name + "\n")
        }
        let refused = try XCTUnwrap(get(loop, port: gateway.publicPort, host: "dev-00003.sim.test", path: "/device"))
        XCTAssertEqual(refused.status, 503)

        let summary = fleet.summary()
        XCTAssertEqual(summary.connectedDevices, 38)
        XCTAssertEqual(summary.requestsByStatus[200], 3)
        XCTAssertEqual(summary.faultsInjected["wrong-ca"], 1)
        XCTAssertEqual(summary.faultsInjected["expired"], 1)
        XCTAssertGreaterThanOrEqual(summary.dialAttempts, 80)

        var stopped = false
        fleet.stop { stopped = true }
        XCTAssertTrue(run(loop, seconds: 15, until: { stopped }))
        XCTAssertTrue(run(loop, seconds: 10, until: { gateway.registry.deviceCount == 0 }))
    }

    func testAStoppedFleetIsFreed() throws {
        let loop = EventLoop()
        let gateway = try startGateway(loop)
        weak var released: Fleet?
        try {
            let fleet = try Fleet(options: fleetOptions(gateway, ["--devices", "3", "--fault", "flap@dev-00001,up=100"]),
                                  loop: loop, logger: Logger(program: "sim", level: .error))
            released = fleet
            var all = false
            fleet.whenAllConnected { all = true }
            fleet.start()
            XCTAssertTrue(run(loop, seconds: 20, until: { all }))
            var stopped = false
            fleet.stop { stopped = true }
            XCTAssertTrue(run(loop, seconds: 15, until: { stopped }))
        }()
        // Timers of the stopped devices are cancelled; pending loop tasks run out.
        XCTAssertTrue(run(loop, seconds: 5, until: { released == nil }), "the fleet is still referenced after stop")
    }

    func testDroppedDevicesComeBackAndGarbageIsRefused() throws {
        let loop = EventLoop()
        // No PINGs and no health checks: nothing but the request itself makes the gateway
        // read from dev-00005 again, so a 502 that waited for the next read would never come.
        let gateway = try startGateway(loop, ["--idle-ping-ms", "0", "--check-interval-ms", "0"])
        let options = try fleetOptions(gateway, ["--devices", "10", "--fault", "drop@dev-00002,at=0.3",
                                                 "--fault", "garbage@dev-00005", "--idle-ping-ms", "0"])
        let fleet = try Fleet(options: options, loop: loop, logger: Logger(program: "sim", level: .error))
        fleet.start()
        // dev-00002 is up, dropped at 0.3 s (or once it is up, on a slow machine), dialed
        // again after the backoff. Awaited as events (a reconnect, then every device up),
        // never as a count of all-connected moments: the drop may come before the last
        // device's first connection, and then all devices are up together only once.
        XCTAssertTrue(run(loop, seconds: 30, until: {
            fleet.summary().reconnects >= 1 && fleet.connectedDevices == fleet.expected
        }), "reconnects \(fleet.summary().reconnects), connected \(fleet.connectedDevices) of \(fleet.expected)")
        XCTAssertEqual(fleet.summary().reconnects, 1)
        XCTAssertEqual(fleet.summary().faultsInjected["drop"], 1)
        // Refused at once: the stream's reset is reported when it is sent, not at the next
        // read (there is none here: the answer would wait for response_timeout_ms, 30 s,
        // and `get` gives up after 10).
        let bad = try XCTUnwrap(get(loop, port: gateway.publicPort, host: "dev-00005.sim.test", path: "/device"))
        XCTAssertEqual(bad.status, 502)
        XCTAssertTrue(bad.body.contains("PROTOCOL_ERROR"), bad.body)
        let good = try XCTUnwrap(get(loop, port: gateway.publicPort, host: "dev-00002.sim.test", path: "/device"))
        XCTAssertEqual(good.body, "dev-00002\n")
        var stopped = false
        fleet.stop { stopped = true }
        XCTAssertTrue(run(loop, seconds: 15, until: { stopped }))
    }

    func testFaultSpecsParseAndBadOnesAreRefused() throws {
        let f = try FaultSpec(parsing: "freeze@10%,at=5,for=20,every=60")
        XCTAssertEqual(f.kind, .freeze)
        XCTAssertEqual(f.target, .fraction(0.1))
        XCTAssertEqual(f.at, 5)
        XCTAssertEqual(f.duration, 20)
        XCTAssertEqual(f.every, 60)
        XCTAssertEqual(try FaultSpec(parsing: "drop@dev-1+dev-2").target, .names(["dev-1", "dev-2"]))
        for bad in ["freeze", "melt@10%", "drop@150%", "drop@10%,at=-1", "drop@10%,when=3", "expired@1%,at=3", "drop@10%,every=0"] {
            XCTAssertThrowsError(try FaultSpec(parsing: bad), bad)
        }
    }
}
