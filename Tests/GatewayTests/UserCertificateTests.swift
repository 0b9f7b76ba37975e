// User certificates (issue 13): `pki issue-user`, the public listener that asks for
// a client certificate without requiring one, and the two roles of the fleet CA's
// certificates kept apart (a user's is no device, a device's is no user). In memory.
import COpenSSL
import FleetAccess
@testable import FleetGatewayKit
@testable import FleetPKI
import Foundation
@testable import TLS
import ConfigFormat
import XCTest

final class UserCertificateTests: XCTestCase {
    private func makePKI() throws -> String {
        let dir = try makeTempDir() + "/pki"
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test", extraSANs: ["127.0.0.1"])
        try PKI.issueServer(directory: dir, name: "www.fleet.test")
        return dir
    }

    private func gatewayConfig(_ dir: String, _ extra: String = "") throws -> GatewayConfig {
        var s = Settings()
        let text = "ca = \(dir)/ca.crt\ncert = \(dir)/gateway.crt\nkey = \(dir)/gateway.key\n"
            + "public_cert = \(dir)/servers/www.fleet.test.crt\npublic_key = \(dir)/servers/www.fleet.test.key\n" + extra
        try ConfigFile.parse(Array(text.utf8), name: "gw.conf", into: &s)
        return try GatewayConfig(s)
    }

    private func clientContext(_ dir: String, alpn: [String]) throws -> TLSContext {
        var c = TLSConfiguration(role: .client)
        c.trustFile = dir + "/ca.crt"
        c.alpn = alpn
        return try TLSContext(c)
    }

    private func identity(_ crt: String, _ key: String) throws -> TLSIdentity {
        try TLSIdentity(certificatePEM: Array(try Data(contentsOf: URL(fileURLWithPath: crt))),
                        keyPEM: Array(try Data(contentsOf: URL(fileURLWithPath: key))))
    }

    /// The server's connection once both sides are established; nil when either
    /// side's handshake failed.
    private func connect(_ server: TLSContext, _ client: TLSContext, identity: TLSIdentity?,
                         serverName: String) throws -> TLSConnection? {
        let s = try TLSConnection(context: server)
        let c = try TLSConnection(context: client, serverName: serverName, identity: identity)
        for _ in 0..<1_000 {
            var cs: TLSConnection.Progress = .wantMore, ss: TLSConnection.Progress = .wantMore
            do { cs = try c.handshake(); ss = try s.handshake() } catch { return nil }
            var a: [UInt8] = [], b: [UInt8] = []
            c.takeOutput(into: &a)
            s.takeOutput(into: &b)
            s.feed(a)
            c.feed(b)
            if cs == .established && ss == .established && a.isEmpty && b.isEmpty {
                // TLS 1.3: the server judges the client's certificate after the client
                // considers itself done; a refusal arrives as an alert on the first read.
                var buf = [UInt8](repeating: 0, count: 64)
                do { _ = try buf.withUnsafeMutableBytes { try c.read(into: $0) } } catch { return nil }
                return s
            }
        }
        XCTFail("handshake did not settle")
        return nil
    }

    private func expectError(_ expected: String, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Any) {
        do {
            _ = try body()
            XCTFail("expected \(expected), nothing thrown", file: file, line: line)
        } catch {
            XCTAssertTrue("\(error)".contains(expected), "\(error)", file: file, line: line)
        }
    }

    func testIssueUser() throws {
        let dir = try makePKI()
        let issued = try PKI.issueUser(directory: dir, name: "alice@example.com")
        let crt = dir + "/users/alice@example.com.crt", key = dir + "/users/alice@example.com.key"
        XCTAssertEqual(mode(key) & 0o777, 0o600)
        XCTAssertEqual(mode(crt) & 0o777, 0o644)
        let (rc, text) = try runOpenSSL(["x509", "-in", crt, "-noout", "-subject", "-ext",
                                         "extendedKeyUsage,subjectAltName,basicConstraints"])
        XCTAssertEqual(rc, 0)
        XCTAssertTrue(text.contains("subject=OU = reversehttp-user, CN = alice@example.com"), text)
        XCTAssertTrue(text.contains("TLS Web Client Authentication"), text)
        XCTAssertFalse(text.contains("Server Authentication"), text)
        XCTAssertFalse(text.contains("DNS:"), text)
        XCTAssertTrue(text.contains("CA:FALSE"), text)
        XCTAssertEqual(try runOpenSSL(["verify", "-CAfile", dir + "/ca.crt", "-purpose", "sslclient", crt]).0, 0)
        XCTAssertTrue(self.text(dir + "/issued.txt").contains(issued.serial + "\tuser:alice@example.com\n"))

        // Again: refused without --force; with it, the earlier serial is revoked.
        expectError("refusing to overwrite " + key) { try PKI.issueUser(directory: dir, name: "alice@example.com") }
        let again = try PKI.issueUser(directory: dir, name: "alice@example.com", force: true)
        XCTAssertEqual(again.revoked, [issued.serial])
        XCTAssertTrue(self.text(dir + "/revoked.txt").contains(issued.serial + "\tuser:alice@example.com"))
        // Files gone, serial still live: refused, as for devices.
        try FileManager.default.removeItem(atPath: crt)
        try FileManager.default.removeItem(atPath: key)
        expectError("user:alice@example.com still has a valid certificate") {
            try PKI.issueUser(directory: dir, name: "alice@example.com")
        }
        // A user named like a device is a different thing: `pki revoke NAME` (devices) never touches it.
        try PKI.issue(directory: dir, name: "dev1")
        try PKI.issueUser(directory: dir, name: "dev1")
        let revoked = try PKI.revoke(directory: dir, name: "dev1")
        XCTAssertEqual(revoked.count, 1)
        XCTAssertFalse(self.text(dir + "/revoked.txt").contains("user:dev1"))
        // ... and --serial revokes a user's certificate too, naming it.
        let userSerial = try XCTUnwrap(self.text(dir + "/issued.txt").split(separator: "\n")
            .first { $0.hasSuffix("\tuser:dev1") }?.split(separator: "\t").first)
        XCTAssertEqual(try PKI.revoke(directory: dir, serial: String(userSerial)).name, "user:dev1")
        // revoke-user: every serial of the user, nothing of the device of the same name.
        try PKI.issueUser(directory: dir, name: "bob")
        let bobSerials = try PKI.revokeUser(directory: dir, name: "bob")
        XCTAssertEqual(bobSerials.count, 1)
        XCTAssertTrue(self.text(dir + "/revoked.txt").contains(bobSerials[0] + "\tuser:bob"))
        XCTAssertEqual(try PKI.revokeUser(directory: dir, name: "bob"), [])
        expectError("does not exist") { try PKI.revokeUser(directory: dir, name: "carol") }
        expectError("invalid user name") { try PKI.revokeUser(directory: dir, name: "a b") }
    }

    func testIssueUserRefusesBadNames() throws {
        let dir = try makePKI()
        for bad in ["", ".hidden", "-opt", "a b", "a/b", "../x", "a:b", "zoë", String(repeating: "x", count: 65), "a\n"] {
            expectError("invalid user name") { try PKI.issueUser(directory: dir, name: bad) }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/users"))
        try PKI.issueUser(directory: dir, name: String(repeating: "x", count: 64))
        try PKI.issueUser(directory: dir, name: "Bob_Smith-2.ops@example.com")
    }

    func testPublicListenerAsksForUserCertificates() throws {
        let dir = try makePKI()
        try PKI.issueUser(directory: dir, name: "alice")
        try PKI.issueUser(directory: dir, name: "mallory")
        try PKI.issue(directory: dir, name: "dev1")
        try PKI.revoke(directory: dir, serial: try XCTUnwrap(self.text(dir + "/issued.txt").split(separator: "\n")
            .first { $0.hasSuffix("\tuser:mallory") }?.split(separator: "\t").first.map(String.init)))
        let config = try gatewayConfig(dir, "crl = \(dir)/crl.pem\n")
        let publicTLS = try XCTUnwrap(config.publicTLS())
        XCTAssertTrue(publicTLS.clientCertificateOptional)
        let server = try TLSContext(publicTLS)
        let client = try clientContext(dir, alpn: ["h2", "http/1.1"])

        // No certificate: accepted, anonymous.
        let anonymous = try XCTUnwrap(connect(server, client, identity: nil, serverName: "www.fleet.test"))
        XCTAssertFalse(anonymous.peerCertificateVerified)
        XCTAssertNil(userPrincipal(from: anonymous))

        // A user's certificate: user:alice, expiring when the certificate does.
        let alice = try XCTUnwrap(connect(server, client, identity: identity(dir + "/users/alice.crt", dir + "/users/alice.key"),
                                          serverName: "www.fleet.test"))
        let p = try XCTUnwrap(userPrincipal(from: alice))
        XCTAssertEqual(p.method, .certificate)
        XCTAssertEqual(p.name, "alice")
        XCTAssertEqual(p.displayName, "user:alice")
        let notAfter = try XCTUnwrap(p.expires)
        XCTAssertEqual(Double(notAfter), Date().timeIntervalSince1970 + 365 * 86_400, accuracy: 3_600)

        // A device's certificate on the public side: no user (as if none was sent).
        let device = try XCTUnwrap(connect(server, client, identity: identity(dir + "/devices/dev1.crt", dir + "/devices/dev1.key"),
                                           serverName: "www.fleet.test"))
        XCTAssertTrue(device.peerCertificateVerified)
        XCTAssertNil(userPrincipal(from: device))

        // A revoked user's certificate: the handshake fails.
        XCTAssertNil(try connect(server, client, identity: identity(dir + "/users/mallory.crt", dir + "/users/mallory.key"),
                                 serverName: "www.fleet.test"))

        // Without `ca` the public listener asks for nothing (plain server TLS).
        var s = Settings()
        try ConfigFile.parse(Array(("plaintext_devices = true\npublic_cert = \(dir)/servers/www.fleet.test.crt\n"
                                    + "public_key = \(dir)/servers/www.fleet.test.key\n").utf8), name: "gw.conf", into: &s)
        XCTAssertNil(try XCTUnwrap(try GatewayConfig(s).publicTLS()).trustFile)
    }

    func testDeviceListenerRefusesUserCertificates() throws {
        let dir = try makePKI()
        try PKI.issueUser(directory: dir, name: "dev2")  // a user named like a device
        try PKI.issue(directory: dir, name: "dev1")
        let config = try gatewayConfig(dir)
        let reserved = ReservedNames(config: config)
        let server = try TLSContext(config.deviceTLS())
        let client = try clientContext(dir, alpn: ["h2"])
        let user = try XCTUnwrap(connect(server, client, identity: identity(dir + "/users/dev2.crt", dir + "/users/dev2.key"),
                                         serverName: "gw.fleet.test"))
        XCTAssertTrue(user.peerHasOrganizationalUnit(PKI.userMarker))
        let refusal = DeviceIdentity.admit(commonName: user.peerCommonName,
                                           isUserCertificate: user.peerHasOrganizationalUnit(PKI.userMarker),
                                           config: config, reserved: reserved)
        XCTAssertEqual(refusal, .failure(.userCertificate("dev2")))
        XCTAssertEqual(DeviceRefusal.userCertificate("dev2").logLine(peer: "127.0.0.1:5555"),
                       "certificate from 127.0.0.1:5555 is a user's (OU=reversehttp-user, CN \"dev2\"), not a device's: "
                       + "refused on the device listener (users connect to the public listener)")
        let device = try XCTUnwrap(connect(server, client, identity: identity(dir + "/devices/dev1.crt", dir + "/devices/dev1.key"),
                                           serverName: "gw.fleet.test"))
        XCTAssertFalse(device.peerHasOrganizationalUnit(PKI.userMarker))
        XCTAssertEqual(DeviceIdentity.admit(commonName: device.peerCommonName, isUserCertificate: false, config: config, reserved: reserved),
                       .success(DeviceIdentity(name: "dev1", hostname: "dev1")))
    }
}
