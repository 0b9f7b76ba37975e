// Simulated devices that enroll over EST (--enroll-token-dir): an in-process
// fleet against an in-process gateway with --pki-dir, on one event loop. The
// loop runs until an awaited event, bounded in turns and time; nothing sleeps.
import ConfigFormat
import DeviceSimKit
import EventLoop
@testable import FleetGatewayKit
import FleetPKI
import Foundation
import XCTest

final class FleetEnrollmentTests: XCTestCase {
    private var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "simenroll-" + UUID().uuidString
        try PKI.initialize(directory: dir + "/pki", gatewayName: "localhost", extraSANs: ["127.0.0.1"], issuingCA: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func run(_ loop: EventLoop, seconds: Double, until done: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        var turns = 0
        while !done() && Date() < deadline && turns < 1_000_000 {
            loop.runOnce(maxWaitMilliseconds: 10)
            turns += 1
        }
        return done()
    }

    private func startGateway(_ loop: EventLoop) throws -> Gateway {
        var s = Settings()
        _ = try parseCommandLine(["--ca", dir + "/pki/ca.crt", "--cert", dir + "/pki/gateway.crt", "--key", dir + "/pki/gateway.key",
                                  "--pki-dir", dir + "/pki", "--hostname-template", "{cn}.sim.test"],
                                 flags: GatewayConfig.flags, into: &s)
        var config = try GatewayConfig(s)
        config.listenDevices = HostPort(host: "127.0.0.1", port: 0)
        config.listenPublic = HostPort(host: "127.0.0.1", port: 0)
        config.listenAdmin = nil
        let g = try Gateway(config: config, loop: loop, logger: Logger(program: "gw", level: .error))
        try g.start()
        return g
    }

    private func options(_ gateway: Gateway, tokens: String, _ args: [String]) throws -> SimOptions {
        var s = Settings()
        _ = try parseCommandLine(["--gateway", "127.0.0.1:" + String(gateway.devicePort), "--server-name", "localhost",
                                  "--enroll-token-dir", tokens, "--ca", dir + "/pki/ca.crt", "--devices", "8"] + args,
                                 flags: SimOptions.flags, into: &s)
        return try SimOptions(s)
    }

    func testDevicesEnrollConnectAndTheirTokensWorkOnce() throws {
        let loop = EventLoop()
        let gateway = try startGateway(loop)
        weak var released: Fleet?
        try {
            let fleet = try Fleet(options: options(gateway, tokens: dir + "/tokens", ["--mint-tokens", dir + "/pki"]),
                                  loop: loop, logger: Logger(program: "sim", level: .error))
            released = fleet
            XCTAssertEqual(fleet.stats.enrollment.minted, 8)
            var enrolledAt: Double?
            fleet.onAllEnrolled = { enrolledAt = $0 }
            var all = false
            fleet.whenAllConnected { all = true }
            fleet.start()
            XCTAssertTrue(run(loop, seconds: 60, until: { all }), "connected \(fleet.connectedDevices) of 8")
            XCTAssertEqual(gateway.registry.deviceCount, 8)
            XCTAssertNotNil(enrolledAt)
            let e = try XCTUnwrap(fleet.summary().enrollment)
            XCTAssertEqual(e.enrolled, 8)
            XCTAssertEqual(e.failedAttempts, 0)
            XCTAssertEqual(e.p50Ms.map { $0 > 0 }, true)
            XCTAssertLessThanOrEqual(try XCTUnwrap(e.p50Ms), try XCTUnwrap(e.p99Ms))
            XCTAssertTrue(fleet.summary().json.contains("\"enrollment\": {\"enrolled\": 8, \"failed_attempts\": 0"))
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/tokens/dev-00008.crt"))
            var stopped = false
            fleet.stop { stopped = true }
            XCTAssertTrue(run(loop, seconds: 15, until: { stopped }))
        }()
        XCTAssertTrue(run(loop, seconds: 5, until: { released == nil }), "the fleet is still referenced after stop")

        // The same tokens, no certificates: all refused; stopped while they back off.
        try FileManager.default.createDirectory(atPath: dir + "/again", withIntermediateDirectories: false)
        for i in 1...8 {
            let name = String(format: "dev-%05d.token", i)
            try FileManager.default.copyItem(atPath: dir + "/tokens/" + name, toPath: dir + "/again/" + name)
        }
        try {
            let fleet = try Fleet(options: options(gateway, tokens: dir + "/again", []), loop: loop,
                                  logger: Logger(program: "sim", level: .error))
            released = fleet
            fleet.start()
            XCTAssertTrue(run(loop, seconds: 30, until: { fleet.stats.enrollment.devicesFailed == 8 }))
            XCTAssertEqual(fleet.stats.enrollment.enrolled, 0)
            XCTAssertEqual(fleet.connectedDevices, 0)
            XCTAssertTrue(fleet.stats.enrollment.lastError?.contains("401 enrollment token already used") ?? false,
                          fleet.stats.enrollment.lastError ?? "no error")
            var stopped = false
            fleet.stop { stopped = true }
            XCTAssertTrue(run(loop, seconds: 15, until: { stopped }))
        }()
        XCTAssertTrue(run(loop, seconds: 5, until: { released == nil }), "an enrolling fleet is still referenced after stop")
    }

    func testEnrollmentOptions() throws {
        func parse(_ args: [String]) throws -> SimOptions {
            var s = Settings()
            _ = try parseCommandLine(["--gateway", "127.0.0.1:1"] + args, flags: SimOptions.flags, into: &s)
            return try SimOptions(s)
        }
        let o = try parse(["--enroll-token-dir", "/t", "--mint-tokens", "/p", "--token-expires", "600", "--renew", "false"])
        XCTAssertTrue(o.enrolls)
        XCTAssertEqual(o.caFile, "/p/ca.crt")
        XCTAssertEqual(o.mintTokenSeconds, 600)
        XCTAssertFalse(o.renew)
        XCTAssertThrowsError(try parse(["--enroll-token-dir", "/t", "--plaintext"]))
        XCTAssertThrowsError(try parse(["--enroll-token-dir", "/t", "--ca-dir", "/p"]))
        XCTAssertThrowsError(try parse(["--ca-dir", "/p", "--renew", "true"]))
        XCTAssertFalse(try parse(["--ca-dir", "/p"]).enrolls)
    }
}
