// DeviceRegistry, the gateway's one device directory, with fake connections:
// keyed by identity, asked by hostname (routing) and by name (admin API, access
// ledger); which connection takes the next request; max_connections_per_device.
import EventLoop
@testable import FleetGatewayKit
import XCTest

private final class Conn: DeviceStreamTarget {
    let identity: DeviceIdentity
    let connectedAt: UInt64
    var streamsInFlight = 0
    var maxStreams = 100
    var canTakeStream: Bool { streamsInFlight < maxStreams }

    init(_ name: String, _ hostname: String, at: UInt64) {
        identity = DeviceIdentity(name: name, hostname: hostname)
        connectedAt = at
    }
}

final class DeviceRegistryTests: XCTestCase {
    func testADeviceIsFoundByHostnameAndByName() {
        let r = DeviceRegistry<Conn>()
        let a = Conn("dev1", "dev1.devices.example", at: 1), b = Conn("dev1", "dev1.devices.example", at: 2)
        r.add(a)
        r.add(b)
        r.add(Conn("dev2", "dev2.devices.example", at: 3))
        XCTAssertEqual(r.connections(hostname: "dev1.devices.example").map(\.connectedAt), [1, 2])
        XCTAssertEqual(r.connections(device: "dev1").map(\.connectedAt), [1, 2])
        XCTAssertTrue(r.connections(device: "dev1.devices.example").isEmpty, "a hostname is not a name")
        XCTAssertTrue(r.connections(hostname: "dev1").isEmpty, "a name is not a hostname")
        XCTAssertEqual(r.deviceCount, 2)
        XCTAssertEqual(Set(r.hostnames), ["dev1.devices.example", "dev2.devices.example"])
        XCTAssertEqual(Set(r.devices.map(\.name)), ["dev1", "dev2"])
    }

    func testTheLastConnectionRemovedRemovesTheDevice() {
        let r = DeviceRegistry<Conn>()
        let a = Conn("dev1", "dev1", at: 1), b = Conn("dev1", "dev1", at: 2)
        r.add(a)
        r.add(b)
        r.remove(a)
        r.remove(a)  // twice (evicted, then closed) is harmless
        XCTAssertTrue(r.isConnected(hostname: "dev1"))
        r.remove(b)
        XCTAssertFalse(r.isConnected(hostname: "dev1"))
        XCTAssertTrue(r.connections(device: "dev1").isEmpty)
        XCTAssertEqual(r.deviceCount, 0)
        XCTAssertTrue(r.hostnames.isEmpty)
    }

    func testPickTakesTheConnectionWithFewestStreamsThatCanTakeOneMore() {
        let r = DeviceRegistry<Conn>()
        let full = Conn("d", "d", at: 1), busy = Conn("d", "d", at: 2), idle = Conn("d", "d", at: 3)
        full.maxStreams = 1
        full.streamsInFlight = 1
        busy.streamsInFlight = 5
        idle.streamsInFlight = 2
        for c in [full, busy, idle] { r.add(c) }
        XCTAssertTrue(r.pick(hostname: "d") === idle)
        idle.streamsInFlight = 100
        XCTAssertTrue(r.pick(hostname: "d") === busy)
        busy.streamsInFlight = 100
        XCTAssertNil(r.pick(hostname: "d"), "every connection at its MAX_CONCURRENT_STREAMS")
        XCTAssertNil(r.pick(hostname: "other"))
    }

    /// max_connections_per_device: a newer connection closes the oldest (a rebooted
    /// device never finds its name taken), whatever order they were added in.
    func testSurplusOverMaxConnectionsPerDeviceIsTheOldest() {
        let r = DeviceRegistry<Conn>()
        let id = DeviceIdentity(name: "d", hostname: "d")
        for t in [3, 1, 4, 2] as [UInt64] { r.add(Conn("d", "d", at: t)) }
        r.add(Conn("e", "e", at: 0))
        XCTAssertEqual(r.surplus(of: id, max: 2).map(\.connectedAt), [1, 2])
        XCTAssertEqual(r.surplus(of: id, max: 4).map(\.connectedAt), [])
        XCTAssertEqual(r.surplus(of: id, max: 1).map(\.connectedAt), [1, 2, 3])
        XCTAssertTrue(r.surplus(of: DeviceIdentity(name: "x", hostname: "x"), max: 1).isEmpty)
    }

    /// A reload that changes hostname_template: the device's old connections keep
    /// their old hostname until they close, and a new one serves the new hostname.
    func testOneNameUnderTwoHostnamesDuringATemplateChange() {
        let r = DeviceRegistry<Conn>()
        let old = Conn("dev1", "dev1", at: 1), new = Conn("dev1", "dev1.new.example", at: 2)
        r.add(old)
        r.add(new)
        XCTAssertTrue(r.connections(hostname: "dev1").first === old)
        XCTAssertTrue(r.connections(hostname: "dev1.new.example").first === new)
        XCTAssertTrue(r.connections(device: "dev1").first === new, "the name answers with the newest identity")
        XCTAssertEqual(r.devices.count, 2)
        r.remove(old)
        XCTAssertTrue(r.connections(device: "dev1").first === new, "the old identity leaving does not hide the new one")
        XCTAssertTrue(r.connections(hostname: "dev1").isEmpty)
    }
}
