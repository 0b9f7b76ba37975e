// One device name, one set of serials that revocation knows (issue 12, finding 4),
// no device under the gateway's own names (finding 9), and TLS 1.2 with AEAD
// suites only (finding 14): `pki` and the gateway's identity check, in memory.
import COpenSSL
@testable import FleetGatewayKit
@testable import FleetPKI
import Foundation
@testable import TLS
import ConfigFormat
import XCTest

final class DeviceNameTests: XCTestCase {
    private func makePKI() throws -> String {
        let dir = try makeTempDir()
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test", extraSANs: ["alt.fleet.test", "127.0.0.1"])
        return dir
    }

    /// X509_V_OK when the certificate at `path` verifies against DIR's CA and CRL.
    private func verify(_ path: String, dir: String) -> Int32 {
        guard let cert = loadCert(path), let store = X509_STORE_new(), let ctx = X509_STORE_CTX_new() else { return -1 }
        defer { X509_free(cert); X509_STORE_free(store); X509_STORE_CTX_free(ctx) }
        XCTAssertEqual(X509_STORE_load_file(store, dir + "/ca.crt"), 1)
        if FileManager.default.fileExists(atPath: dir + "/crl.pem") {
            let lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file())
            XCTAssertGreaterThan(X509_load_crl_file(lookup, dir + "/crl.pem", X509_FILETYPE_PEM), 0)
            X509_STORE_set_flags(store, UInt(X509_V_FLAG_CRL_CHECK))
        }
        XCTAssertEqual(X509_STORE_CTX_init(ctx, store, cert, nil), 1)
        _ = X509_verify_cert(ctx)
        return X509_STORE_CTX_get_error(ctx)
    }

    private func copy(_ from: String, _ to: String) throws {
        try? FileManager.default.removeItem(atPath: to)
        try FileManager.default.copyItem(atPath: from, toPath: to)
    }

    // MARK: - pki

    func testForceRevokesEveryEarlierCertificateOfTheName() throws {
        let dir = try makePKI()
        let old1 = dir + "/old1.crt", old2 = dir + "/old2.crt"
        try PKI.issue(directory: dir, name: "dev1.example")
        try copy(dir + "/devices/dev1.example.crt", old1)
        try PKI.issue(directory: dir, name: "dev1.example", force: true)
        XCTAssertEqual(verify(old1, dir: dir), X509_V_ERR_CERT_REVOKED, "the replaced certificate still verifies")
        XCTAssertEqual(verify(dir + "/devices/dev1.example.crt", dir: dir), X509_V_OK)
        try copy(dir + "/devices/dev1.example.crt", old2)

        let third = try PKI.issue(directory: dir, name: "dev1.example", force: true)
        XCTAssertEqual(third.revoked.count, 1)
        XCTAssertEqual(verify(old2, dir: dir), X509_V_ERR_CERT_REVOKED)
        XCTAssertEqual(verify(dir + "/devices/dev1.example.crt", dir: dir), X509_V_OK)

        // revoke NAME revokes what is left: here the third certificate.
        XCTAssertEqual(try PKI.revoke(directory: dir, name: "dev1.example"), [third.serial])
        XCTAssertEqual(verify(dir + "/devices/dev1.example.crt", dir: dir), X509_V_ERR_CERT_REVOKED)
        XCTAssertEqual(text(dir + "/issued.txt").split(separator: "\n").count, 3)
        // Nothing left unrevoked: --force says so and writes no new CRL.
        let crl = text(dir + "/crl.pem")
        XCTAssertEqual(try PKI.issue(directory: dir, name: "dev1.example", force: true).revoked, [])
        XCTAssertEqual(text(dir + "/crl.pem"), crl)
    }

    func testNamesAreCaseInsensitiveAndMustBeCanonical() throws {
        let dir = try makePKI()
        try PKI.issue(directory: dir, name: "dev1.example")
        let upper = assertThrows("notCanonical") { () throws(PKIError) in
            try PKI.issue(directory: dir, name: "DEV1.EXAMPLE")
        }
        guard case .notCanonical("DEV1.EXAMPLE")? = upper else { return XCTFail("got \(String(describing: upper))") }
        XCTAssertTrue(upper!.description.contains("\"dev1.example\""), upper!.description)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/devices/DEV1.EXAMPLE.crt"))

        // A directory of an earlier version holding DEV2.Example.*: dev2.example collides
        // with it, and revoking dev2.example (in any case) revokes both spellings.
        let ca = try CertificateAuthority(directory: dir)
        let (pem, key) = try ca.issueDevice(name: "DEV2.Example")
        try Data(pem).write(to: URL(fileURLWithPath: dir + "/devices/DEV2.Example.crt"))
        try Data(key).write(to: URL(fileURLWithPath: dir + "/devices/DEV2.Example.key"))
        let collision = assertThrows("alreadyExists") { () throws(PKIError) in
            try PKI.issue(directory: dir, name: "dev2.example")
        }
        guard case .alreadyExists(let path)? = collision else { return XCTFail("got \(String(describing: collision))") }
        XCTAssertEqual(path, dir + "/devices/DEV2.Example.key")
        try PKI.issue(directory: dir, name: "dev2.example", force: true)
        XCTAssertEqual(verify(dir + "/devices/DEV2.Example.crt", dir: dir), X509_V_ERR_CERT_REVOKED)
        XCTAssertEqual(verify(dir + "/devices/dev2.example.crt", dir: dir), X509_V_OK)
        XCTAssertEqual(try PKI.revoke(directory: dir, name: "Dev2.EXAMPLE").count, 1)
        XCTAssertEqual(verify(dir + "/devices/dev2.example.crt", dir: dir), X509_V_ERR_CERT_REVOKED)
        XCTAssertEqual(verify(dir + "/devices/dev1.example.crt", dir: dir), X509_V_OK)
    }

    func testRevokeBySerialAndAfterTheFilesAreGone() throws {
        let dir = try makePKI()
        let one = try PKI.issue(directory: dir, name: "dev1.example")
        let two = try PKI.issue(directory: dir, name: "dev2.example")
        try copy(dir + "/devices/dev1.example.crt", dir + "/kept1.crt")
        try copy(dir + "/devices/dev2.example.crt", dir + "/kept2.crt")
        for ext in ["crt", "key", "pem"] {
            try FileManager.default.removeItem(atPath: dir + "/devices/dev1.example." + ext)
            try FileManager.default.removeItem(atPath: dir + "/devices/dev2.example." + ext)
        }
        // By serial, as `openssl x509 -serial` prints it (upper case, maybe leading zeros).
        let (name, added) = try PKI.revoke(directory: dir, serial: "00" + one.serial.uppercased())
        XCTAssertEqual(name, "dev1.example")
        XCTAssertTrue(added)
        XCTAssertEqual(verify(dir + "/kept1.crt", dir: dir), X509_V_ERR_CERT_REVOKED)
        XCTAssertFalse(try PKI.revoke(directory: dir, serial: one.serial).newlyRevoked)
        // By name, from issued.txt alone.
        XCTAssertEqual(try PKI.revoke(directory: dir, name: "dev2.example"), [two.serial])
        XCTAssertEqual(verify(dir + "/kept2.crt", dir: dir), X509_V_ERR_CERT_REVOKED)
        XCTAssertTrue(text(dir + "/revoked.txt").contains(two.serial + "\tdev2.example\n"))

        for bad in ["", "xyz", "0x12", String(repeating: "ab", count: 21)] {
            let error = assertThrows("invalidArgument") { () throws(PKIError) in
                try PKI.revoke(directory: dir, serial: bad)
            }
            guard case .invalidArgument? = error else { return XCTFail("\(bad): got \(String(describing: error))") }
        }
    }

    /// Review of issue 12: the files of a device are gone but issued.txt holds an
    /// unrevoked serial for it: without --force no second certificate is issued.
    func testIssueRefusesANameWithAnUnrevokedSerialWhoseFilesAreGone() throws {
        let dir = try makePKI()
        let one = try PKI.issue(directory: dir, name: "dev1.example")
        func removeFiles() throws {
            for ext in ["crt", "key", "pem"] {
                try FileManager.default.removeItem(atPath: dir + "/devices/dev1.example." + ext)
            }
        }
        try removeFiles()
        let error = assertThrows("stillIssued") { () throws(PKIError) in
            try PKI.issue(directory: dir, name: "dev1.example")
        }
        guard case .stillIssued("dev1.example", let serials)? = error else { return XCTFail("got \(String(describing: error))") }
        XCTAssertEqual(serials, [one.serial])
        XCTAssertTrue(error!.description.contains("--force") && error!.description.contains("pki revoke"), error!.description)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/devices/dev1.example.crt"))
        XCTAssertEqual(text(dir + "/issued.txt").split(separator: "\n").count, 1)
        // --force revokes the earlier serial and issues.
        XCTAssertEqual(try PKI.issue(directory: dir, name: "dev1.example", force: true).revoked, [one.serial])
        // Once every serial is revoked (pki revoke), issuing again needs no --force.
        try removeFiles()
        XCTAssertEqual(try PKI.revoke(directory: dir, name: "dev1.example").count, 1)
        XCTAssertNoThrow(try PKI.issue(directory: dir, name: "dev1.example"))
    }

    func testReservedNamesAreRefused() throws {
        let dir = try makePKI()
        try PKI.issueServer(directory: dir, name: "api.fleet.test")
        for name in ["localhost", "x.localhost", "gw.fleet.test", "alt.fleet.test", "api.fleet.test"] {
            let error = assertThrows("reservedName") { () throws(PKIError) in
                try PKI.issue(directory: dir, name: name)
            }
            guard case .reservedName(name, _)? = error else { return XCTFail("\(name): got \(String(describing: error))") }
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/devices/" + name + ".crt"))
        }
        XCTAssertNoThrow(try PKI.issue(directory: dir, name: "dev.fleet.test"))
        XCTAssertEqual(PKI.certificateHostnames(file: dir + "/gateway.crt"), ["gw.fleet.test", "alt.fleet.test"])
    }

    // MARK: - The gateway's identity check

    private func gatewayConfig(_ dir: String, _ extra: String = "") throws -> GatewayConfig {
        var s = Settings()
        let text = "ca = \(dir)/ca.crt\ncert = \(dir)/gateway.crt\nkey = \(dir)/gateway.key\n"
            + "public_cert = \(dir)/servers/www.fleet.test.crt\npublic_key = \(dir)/servers/www.fleet.test.key\n"
            + "tls_min = 1.2\n" + extra
        try ConfigFile.parse(Array(text.utf8), name: "gw.conf", into: &s)
        return try GatewayConfig(s)
    }

    /// Handshakes a device presenting `identity` with the gateway's device listener
    /// context in memory; the server's connection, or nil when the handshake failed.
    private func connect(_ server: TLSContext, _ client: TLSContext, identity: TLSIdentity? = nil,
                         serverName: String = "gw.fleet.test") throws -> TLSConnection? {
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
            if cs == .established && ss == .established && a.isEmpty && b.isEmpty { return s }
        }
        XCTFail("handshake did not settle")
        return nil
    }

    private func clientContext(_ dir: String) throws -> TLSContext {
        var c = TLSConfiguration(role: .client)
        c.trustFile = dir + "/ca.crt"
        c.alpn = ["h2"]
        c.minimumVersion = .tls12
        return try TLSContext(c)
    }

    func testGatewayRefusesNonCanonicalAndReservedCommonNames() throws {
        let dir = try makePKI()
        try PKI.issueServer(directory: dir, name: "www.fleet.test", extraSANs: ["users.fleet.test"])
        let config = try gatewayConfig(dir)
        let reserved = ReservedNames(config: config)
        let server = try TLSContext(config.deviceTLS())
        let client = try clientContext(dir)
        // Certificates another tool could issue: the in-memory CA checks no more than syntax.
        let ca = try CertificateAuthority(directory: dir)
        func admit(_ cn: String) throws -> Result<DeviceIdentity, DeviceRefusal> {
            let (pem, key) = try ca.issueDevice(name: cn)
            let conn = try XCTUnwrap(connect(server, client, identity: TLSIdentity(certificatePEM: pem, keyPEM: key)))
            XCTAssertEqual(conn.peerCommonName, cn)
            return DeviceIdentity.admit(commonName: conn.peerCommonName, config: config, reserved: reserved)
        }
        XCTAssertEqual(try admit("dev1.example"), .success(DeviceIdentity(name: "dev1.example", hostname: "dev1.example")))
        XCTAssertEqual(try admit("DEV1.EXAMPLE"), .failure(.notCanonical("DEV1.EXAMPLE")))
        XCTAssertEqual(try admit("Dev1.example"), .failure(.notCanonical("Dev1.example")))
        for name in ["localhost", "a.localhost", "gw.fleet.test", "alt.fleet.test", "www.fleet.test", "users.fleet.test"] {
            XCTAssertEqual(try admit(name), .failure(.reserved(name, name)), name)
        }
        XCTAssertTrue(DeviceRefusal.notCanonical("DEV1.EXAMPLE").description.contains("canonical"))

        // Under a template, the hostname a device gets is checked too.
        let templated = try gatewayConfig(dir, "hostname_template = {cn}.fleet.test\n")
        let r2 = ReservedNames(config: templated)
        XCTAssertEqual(DeviceIdentity.admit(commonName: "www", config: templated, reserved: r2),
                       .failure(.reserved("www", "www.fleet.test")))
        XCTAssertEqual(DeviceIdentity.admit(commonName: "dev1", config: templated, reserved: r2),
                       .success(DeviceIdentity(name: "dev1", hostname: "dev1.fleet.test")))
        XCTAssertEqual(DeviceIdentity.admit(commonName: nil, config: templated, reserved: r2), .failure(.noValidName))
        XCTAssertEqual(DeviceIdentity.admit(commonName: "dev1.", config: templated, reserved: r2), .failure(.noValidName))
    }

    // MARK: - TLS 1.2 suites

    func testTLS12AcceptsOnlyECDHEWithAEAD() throws {
        let dir = try makePKI()
        try PKI.issueServer(directory: dir, name: "www.fleet.test")
        try PKI.issue(directory: dir, name: "dev1.example")
        let config = try gatewayConfig(dir)
        let ca = try CertificateAuthority(directory: dir)
        let (pem, key) = try ca.issueDevice(name: "dev1.example")
        let identity = try TLSIdentity(certificatePEM: pem, keyPEM: key)
        // The device and the public listener: the agent-side client context offers AEAD only too.
        let listeners = [("gw.fleet.test", try TLSContext(config.deviceTLS())),
                         ("www.fleet.test", try XCTUnwrap(config.publicTLS().map { try TLSContext($0) }))]
        for (serverName, server) in listeners {
            for (suite, accepted) in [("ECDHE-ECDSA-AES128-SHA", false), ("ECDHE-ECDSA-AES256-SHA384", false),
                                      ("ECDHE-ECDSA-AES128-SHA256", false), ("ECDHE-ECDSA-AES128-GCM-SHA256", true),
                                      ("ECDHE-ECDSA-CHACHA20-POLY1305", true)] {
                let client = try clientContext(dir)
                XCTAssertEqual(SSL_CTX_ctrl(client.ctx, SSL_CTRL_SET_MAX_PROTO_VERSION, Int(TLS1_2_VERSION), nil), 1)
                XCTAssertEqual(SSL_CTX_set_cipher_list(client.ctx, suite), 1, suite)
                let conn = try connect(server, client, identity: identity, serverName: serverName)
                XCTAssertEqual(conn != nil, accepted, suite)
                if let conn { XCTAssertEqual(conn.protocolVersion, "TLSv1.2") }
            }
        }
        // What our own client offers for TLS 1.2.
        let ours = try clientContext(dir)
        guard let ssl = SSL_new(ours.ctx) else { return XCTFail("SSL_new") }
        defer { SSL_free(ssl) }
        var offered: [String] = []
        var i: Int32 = 0
        while let name = SSL_get_cipher_list(ssl, i) {
            offered.append(String(cString: name))
            i += 1
        }
        let tls12 = offered.filter { !$0.hasPrefix("TLS_") }
        XCTAssertFalse(tls12.isEmpty)
        for suite in tls12 {
            XCTAssertTrue(suite.hasPrefix("ECDHE-") && (suite.contains("GCM") || suite.contains("CHACHA20")), suite)
        }
    }
}
