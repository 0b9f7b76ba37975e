// Tests of the certificate commands: files and modes, chains verified with the
// OpenSSL API (and the openssl CLI when installed), names, refusals, validity.
import COpenSSL
import Foundation
import XCTest
@testable import FleetPKI

final class PKITests: XCTestCase {
    // MARK: helpers

    private func loadKey(_ path: String) -> OpaquePointer? {
        guard let bio = BIO_new_file(path, "r") else { return nil }
        defer { BIO_free(bio) }
        return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
    }

    /// Verifies `certPath` against the single trusted CA `caPath`; returns the
    /// X509_V_* result (X509_V_OK on success).
    private func verify(_ certPath: String, ca caPath: String, purpose: Int32? = nil, host: String? = nil) -> Int32 {
        guard let cert = loadCert(certPath), let ca = loadCert(caPath) else { return -1 }
        defer { X509_free(cert); X509_free(ca) }
        guard let store = X509_STORE_new() else { return -1 }
        defer { X509_STORE_free(store) }
        XCTAssertEqual(X509_STORE_add_cert(store, ca), 1)
        guard let ctx = X509_STORE_CTX_new() else { return -1 }
        defer { X509_STORE_CTX_free(ctx) }
        XCTAssertEqual(X509_STORE_CTX_init(ctx, store, cert, nil), 1)
        if let purpose { XCTAssertEqual(X509_STORE_CTX_set_purpose(ctx, purpose), 1) }
        if let host {
            XCTAssertEqual(X509_VERIFY_PARAM_set1_host(X509_STORE_CTX_get0_param(ctx), host, host.utf8.count), 1)
        }
        let ok = X509_verify_cert(ctx)
        let result = X509_STORE_CTX_get_error(ctx)
        if ok == 1 { XCTAssertEqual(result, X509_V_OK) } else { XCTAssertNotEqual(result, X509_V_OK) }
        ERR_clear_error()
        return result
    }

    private func commonName(_ cert: OpaquePointer) -> String {
        var buf = [CChar](repeating: 0, count: 300)
        let n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, &buf, Int32(buf.count))
        guard n >= 0 else { return "" }
        return String(decoding: buf.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private func matchesHost(_ cert: OpaquePointer, _ host: String) -> Bool {
        X509_check_host(cert, host, host.utf8.count, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS), nil) == 1
    }

    private func matchesIP(_ cert: OpaquePointer, _ ip: String) -> Bool {
        X509_check_ip_asc(cert, ip, 0) == 1
    }

    // MARK: tests

    func testInitializeAndIssueFilesAndModes() throws {
        let dir = try makeTempDir() + "/pki"
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test", extraSANs: ["127.0.0.1", "localhost"])
        XCTAssertEqual(mode(dir), 0o700)
        XCTAssertEqual(mode(dir + "/ca.key"), 0o600)
        XCTAssertEqual(mode(dir + "/gateway.key"), 0o600)
        XCTAssertEqual(mode(dir + "/ca.crt"), 0o644)
        XCTAssertEqual(mode(dir + "/gateway.crt"), 0o644)

        try PKI.issue(directory: dir, name: "dev-1")
        XCTAssertEqual(mode(dir + "/devices"), 0o700)
        XCTAssertEqual(mode(dir + "/devices/dev-1.key"), 0o600)
        XCTAssertEqual(mode(dir + "/devices/dev-1.pem"), 0o600)
        XCTAssertEqual(mode(dir + "/devices/dev-1.crt"), 0o644)

        // No temporary files left behind.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".") }
            + FileManager.default.contentsOfDirectory(atPath: dir + "/devices").filter { $0.hasPrefix(".") }
        XCTAssertEqual(leftovers, [])

        // Keys are unencrypted PKCS#8; the gateway chain file is just the leaf.
        for key in ["/ca.key", "/gateway.key", "/devices/dev-1.key"] {
            let pem = text(dir + key)
            XCTAssertTrue(pem.hasPrefix("-----BEGIN PRIVATE KEY-----\n"), key)
            XCTAssertFalse(pem.contains("ENCRYPTED"), key)
        }
        XCTAssertEqual(text(dir + "/gateway.crt").components(separatedBy: "BEGIN CERTIFICATE").count - 1, 1)

        // NAME.pem = certificate followed by key.
        XCTAssertEqual(text(dir + "/devices/dev-1.pem"),
                       text(dir + "/devices/dev-1.crt") + text(dir + "/devices/dev-1.key"))
    }

    func testDeviceCertificateChainsToCA() throws {
        let dir = try makeTempDir()
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test", caDays: 100, fleetName: "Acme")
        try PKI.issue(directory: dir, name: "sensor-42.site1")

        XCTAssertEqual(verify(dir + "/devices/sensor-42.site1.crt", ca: dir + "/ca.crt"), X509_V_OK)
        XCTAssertEqual(verify(dir + "/devices/sensor-42.site1.crt", ca: dir + "/ca.crt",
                              purpose: X509_PURPOSE_SSL_CLIENT), X509_V_OK)
        // A client certificate is not a server certificate.
        XCTAssertEqual(verify(dir + "/devices/sensor-42.site1.crt", ca: dir + "/ca.crt",
                              purpose: X509_PURPOSE_SSL_SERVER), X509_V_ERR_INVALID_PURPOSE)

        let cert = try XCTUnwrap(loadCert(dir + "/devices/sensor-42.site1.crt"))
        defer { X509_free(cert) }
        XCTAssertEqual(commonName(cert), "sensor-42.site1")
        XCTAssertEqual(X509_get_version(cert), 2)
        let eku = X509_get_extended_key_usage(cert)
        XCTAssertNotEqual(eku & UInt32(XKU_SSL_CLIENT), 0, "EKU clientAuth")
        XCTAssertEqual(eku & UInt32(XKU_SSL_SERVER), 0, "no EKU serverAuth")
        XCTAssertNotEqual(X509_get_key_usage(cert) & UInt32(KU_DIGITAL_SIGNATURE), 0)
        XCTAssertEqual(X509_check_ca(cert), 0)
        XCTAssertTrue(matchesHost(cert, "sensor-42.site1"))
        XCTAssertNotNil(X509_get0_authority_key_id(cert))

        // Serial: positive, 16 bytes.
        let serial = try XCTUnwrap(X509_get_serialNumber(cert))
        XCTAssertEqual(serial.pointee.type, V_ASN1_INTEGER)
        XCTAssertEqual(serial.pointee.length, 16)

        // The key is EC P-256 and belongs to the certificate.
        let key = try XCTUnwrap(loadKey(dir + "/devices/sensor-42.site1.key"))
        defer { EVP_PKEY_free(key) }
        XCTAssertEqual(EVP_PKEY_get_base_id(key), EVP_PKEY_EC)
        XCTAssertEqual(EVP_PKEY_get_bits(key), 256)
        XCTAssertEqual(X509_check_private_key(cert, key), 1)

        // The CA.
        let ca = try XCTUnwrap(loadCert(dir + "/ca.crt"))
        defer { X509_free(ca) }
        XCTAssertEqual(commonName(ca), "Acme Fleet CA")
        XCTAssertEqual(X509_check_ca(ca), 1)
        XCTAssertNotEqual(X509_get_key_usage(ca) & UInt32(KU_KEY_CERT_SIGN), 0)
        XCTAssertNotEqual(X509_get_key_usage(ca) & UInt32(KU_CRL_SIGN), 0)
        XCTAssertNotNil(X509_get0_subject_key_id(ca))
        var critical: Int32 = -1
        let bc = X509_get_ext_d2i(ca, NID_basic_constraints, &critical, nil)
        XCTAssertNotNil(bc)
        BASIC_CONSTRAINTS_free(bc?.assumingMemoryBound(to: BASIC_CONSTRAINTS.self))
        XCTAssertEqual(critical, 1, "basicConstraints critical")
        // caDays: 100 -> notAfter between 99 and 101 days from now.
        var day: Int32 = 0, sec: Int32 = 0
        XCTAssertEqual(ASN1_TIME_diff(&day, &sec, nil, X509_get0_notAfter(ca)), 1)
        XCTAssertTrue((99...100).contains(day), "CA validity \(day) days")
        // Self-signed: verifies against itself.
        XCTAssertEqual(verify(dir + "/ca.crt", ca: dir + "/ca.crt"), X509_V_OK)
    }

    func testGatewayCertificateHasSANs() throws {
        let dir = try makeTempDir()
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test",
                           extraSANs: ["127.0.0.1", "localhost", "::1", "gw.fleet.test"])
        let cert = try XCTUnwrap(loadCert(dir + "/gateway.crt"))
        defer { X509_free(cert) }
        XCTAssertEqual(commonName(cert), "gw.fleet.test")
        XCTAssertTrue(matchesHost(cert, "gw.fleet.test"))
        XCTAssertTrue(matchesHost(cert, "localhost"))
        XCTAssertTrue(matchesIP(cert, "127.0.0.1"))
        XCTAssertTrue(matchesIP(cert, "::1"))
        XCTAssertFalse(matchesHost(cert, "other.fleet.test"))
        XCTAssertFalse(matchesIP(cert, "127.0.0.2"))
        XCTAssertNotEqual(X509_get_extended_key_usage(cert) & UInt32(XKU_SSL_SERVER), 0)
        XCTAssertEqual(X509_get_extended_key_usage(cert) & UInt32(XKU_SSL_CLIENT), 0)
        XCTAssertNotNil(X509_get0_authority_key_id(cert))
        XCTAssertEqual(X509_check_ca(cert), 0)

        XCTAssertEqual(verify(dir + "/gateway.crt", ca: dir + "/ca.crt",
                              purpose: X509_PURPOSE_SSL_SERVER, host: "gw.fleet.test"), X509_V_OK)
        XCTAssertEqual(verify(dir + "/gateway.crt", ca: dir + "/ca.crt",
                              purpose: X509_PURPOSE_SSL_SERVER, host: "wrong.fleet.test"),
                       X509_V_ERR_HOSTNAME_MISMATCH)
        let key = try XCTUnwrap(loadKey(dir + "/gateway.key"))
        defer { EVP_PKEY_free(key) }
        XCTAssertEqual(X509_check_private_key(cert, key), 1)
    }

    func testIssueServerForWrongGatewayName() throws {
        let dir = try makeTempDir()
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test")
        try PKI.issueServer(directory: dir, name: "impostor.fleet.test", extraSANs: ["127.0.0.1"])
        XCTAssertEqual(mode(dir + "/servers/impostor.fleet.test.key"), 0o600)
        XCTAssertEqual(mode(dir + "/servers/impostor.fleet.test.crt"), 0o644)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/servers/impostor.fleet.test.pem"))
        let path = dir + "/servers/impostor.fleet.test.crt"
        XCTAssertEqual(verify(path, ca: dir + "/ca.crt", purpose: X509_PURPOSE_SSL_SERVER,
                              host: "impostor.fleet.test"), X509_V_OK)
        XCTAssertEqual(verify(path, ca: dir + "/ca.crt", purpose: X509_PURPOSE_SSL_SERVER,
                              host: "gw.fleet.test"), X509_V_ERR_HOSTNAME_MISMATCH)
        let cert = try XCTUnwrap(loadCert(path))
        defer { X509_free(cert) }
        XCTAssertTrue(matchesIP(cert, "127.0.0.1"))
        XCTAssertNotEqual(X509_get_extended_key_usage(cert) & UInt32(XKU_SSL_SERVER), 0)
    }

    func testOpenSSLCommandLineVerifies() throws {
        guard opensslCLI != nil else { throw XCTSkip("no /usr/bin/openssl") }
        let dir = try makeTempDir()
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test", extraSANs: ["127.0.0.1"])
        try PKI.issue(directory: dir, name: "dev-cli")
        var (status, output) = try runOpenSSL(["verify", "-CAfile", dir + "/ca.crt", dir + "/devices/dev-cli.crt"])
        XCTAssertEqual(status, 0, output)
        (status, output) = try runOpenSSL(["verify", "-purpose", "sslclient", "-CAfile", dir + "/ca.crt",
                                           dir + "/devices/dev-cli.crt"])
        XCTAssertEqual(status, 0, output)
        (status, output) = try runOpenSSL(["verify", "-purpose", "sslserver", "-verify_hostname", "gw.fleet.test",
                                           "-CAfile", dir + "/ca.crt", dir + "/gateway.crt"])
        XCTAssertEqual(status, 0, output)
        (status, output) = try runOpenSSL(["verify", "-purpose", "sslserver", "-verify_ip", "127.0.0.1",
                                           "-CAfile", dir + "/ca.crt", dir + "/gateway.crt"])
        XCTAssertEqual(status, 0, output)
        // The key files parse as unencrypted keys.
        (status, output) = try runOpenSSL(["pkey", "-in", dir + "/devices/dev-cli.key", "-noout"])
        XCTAssertEqual(status, 0, output)
    }

    func testSecondCADoesNotVerify() throws {
        let first = try makeTempDir()
        let second = try makeTempDir()
        try PKI.initialize(directory: first, gatewayName: "gw.fleet.test")
        try PKI.initialize(directory: second, gatewayName: "gw.fleet.test")
        try PKI.issue(directory: second, name: "rogue")
        try PKI.issue(directory: first, name: "good")

        XCTAssertEqual(verify(second + "/devices/rogue.crt", ca: second + "/ca.crt"), X509_V_OK)
        XCTAssertEqual(verify(second + "/devices/rogue.crt", ca: first + "/ca.crt"),
                       X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY)
        XCTAssertNotEqual(verify(second + "/gateway.crt", ca: first + "/ca.crt"), X509_V_OK)
        XCTAssertNotEqual(verify(first + "/devices/good.crt", ca: second + "/ca.crt"), X509_V_OK)
        XCTAssertNotEqual(text(first + "/ca.crt"), text(second + "/ca.crt"))

        if opensslCLI != nil {
            let (status, output) = try runOpenSSL(["verify", "-CAfile", first + "/ca.crt",
                                                   second + "/devices/rogue.crt"])
            XCTAssertNotEqual(status, 0, output)
        }
    }

    func testRefusesOverwrite() throws {
        let dir = try makeTempDir()
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test")
        let caKey = text(dir + "/ca.key")
        let caCert = text(dir + "/ca.crt")
        let gatewayCert = text(dir + "/gateway.crt")

        let error = assertThrows("alreadyExists") { () throws(PKIError) in
            try PKI.initialize(directory: dir, gatewayName: "other.fleet.test")
        }
        guard case .alreadyExists(let path)? = error else { return XCTFail("got \(String(describing: error))") }
        XCTAssertEqual(path, dir + "/ca.key")
        XCTAssertTrue(error!.description.contains("refusing to overwrite \(dir)/ca.key"), error!.description)
        XCTAssertTrue(error!.description.contains("--force"), error!.description)
        XCTAssertEqual(text(dir + "/ca.key"), caKey)
        XCTAssertEqual(text(dir + "/ca.crt"), caCert)
        XCTAssertEqual(text(dir + "/gateway.crt"), gatewayCert)

        // Devices: the same.
        try PKI.issue(directory: dir, name: "dev")
        let deviceKey = text(dir + "/devices/dev.key")
        let deviceError = assertThrows("alreadyExists") { () throws(PKIError) in
            try PKI.issue(directory: dir, name: "dev")
        }
        guard case .alreadyExists(let devicePath)? = deviceError else {
            return XCTFail("got \(String(describing: deviceError))")
        }
        XCTAssertEqual(devicePath, dir + "/devices/dev.key")
        XCTAssertEqual(text(dir + "/devices/dev.key"), deviceKey)
        try PKI.issue(directory: dir, name: "dev", force: true)
        XCTAssertNotEqual(text(dir + "/devices/dev.key"), deviceKey)
        XCTAssertEqual(mode(dir + "/devices/dev.key"), 0o600)

        // force: a new CA; the old device no longer verifies.
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test", force: true)
        XCTAssertNotEqual(text(dir + "/ca.key"), caKey)
        XCTAssertEqual(mode(dir + "/ca.key"), 0o600)
        XCTAssertNotEqual(verify(dir + "/devices/dev.crt", ca: dir + "/ca.crt"), X509_V_OK)
        XCTAssertEqual(verify(dir + "/gateway.crt", ca: dir + "/ca.crt"), X509_V_OK)
    }

    func testMissingCA() throws {
        let dir = try makeTempDir()
        let error = assertThrows("missingCA") { () throws(PKIError) in
            try PKI.issue(directory: dir, name: "dev")
        }
        guard case .missingCA(let path)? = error else { return XCTFail("got \(String(describing: error))") }
        XCTAssertEqual(path, dir)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/devices"))
    }

    func testHostnameValidation() throws {
        let invalid = ["*.x", "-a", "a-", "a..b", String(repeating: "a", count: 64), "a b", "", ".", "a.",
                       ".a", "a/b", "a_b", "dév", String(repeating: "a.", count: 127)]
        for name in invalid {
            XCTAssertFalse(PKI.isValidHostname(name), "\"\(name)\" should be invalid")
        }
        let valid = ["a", "dev-1", "Sensor-42.site1", "127.0.0.1", "x--y", String(repeating: "a", count: 63),
                     (0..<4).map { _ in String(repeating: "b", count: 63) }.joined(separator: ".").dropLast(2)
                         .description]
        for name in valid {
            XCTAssertTrue(PKI.isValidHostname(name), "\"\(name)\" should be valid")
        }
        XCTAssertEqual(valid.last!.utf8.count, 253)
        // A device name is a hostname that cannot be read as an IPv4 address.
        for name in ["127.0.0.1", "10.0.0.1", "127.1", "42", "dev.123"] {
            XCTAssertFalse(PKI.isValidDeviceName(name), name)
        }
        for name in ["dev1", "1.dev", "10.0.0.1.example", "123a", "sensor-42.site1"] {
            XCTAssertTrue(PKI.isValidDeviceName(name), name)
        }
        XCTAssertThrowsError(try PKI.issue(directory: "/nonexistent", name: "10.0.0.1"))
        XCTAssertFalse(PKI.isValidHostname(valid.last! + "b"))

        let dir = try makeTempDir()
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test")
        for name in ["*.x", "-a", "a..b", String(repeating: "a", count: 64), "a b", "", "../x"] {
            let error = assertThrows("invalidName") { () throws(PKIError) in
                try PKI.issue(directory: dir, name: name)
            }
            guard case .invalidName(let reported)? = error else {
                XCTFail("\"\(name)\": got \(String(describing: error))")
                continue
            }
            XCTAssertEqual(reported, name)
        }
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: dir + "/devices")) ?? [], [])

        // Invalid gateway names and SANs, too.
        for (gateway, sans) in [("*.fleet.test", [String]()), ("gw.fleet.test", ["bad name"]),
                                ("gw.fleet.test", ["fe80::1%eth0"]), ("gw.fleet.test", ["a,DNS:evil"])] {
            let other = try makeTempDir()
            let error = assertThrows("invalidName") { () throws(PKIError) in
                try PKI.initialize(directory: other, gatewayName: gateway, extraSANs: sans)
            }
            guard case .invalidName? = error else {
                XCTFail("\(gateway) \(sans): got \(String(describing: error))")
                continue
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: other + "/ca.key"))
        }

        // A 251-character device name works (its CN is longer than the X.520 64);
        // 253 is a valid hostname but NAME.key exceeds NAME_MAX (255).
        let long = String(valid.last!.dropLast(2))
        try PKI.issue(directory: dir, name: long)
        let cert = try XCTUnwrap(loadCert(dir + "/devices/" + long + ".crt"))
        defer { X509_free(cert) }
        XCTAssertEqual(commonName(cert), long)
        let tooLong = assertThrows("io") { () throws(PKIError) in
            try PKI.issue(directory: dir, name: valid.last!)
        }
        guard case .io(_, let code)? = tooLong else { return XCTFail("got \(String(describing: tooLong))") }
        XCTAssertEqual(code, ENAMETOOLONG)
    }

    func testExpiredAndNotYetValidCertificates() throws {
        let dir = try makeTempDir()
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test")
        try PKI.issue(directory: dir, name: "old", days: 1, notBeforeOffsetDays: -10)
        try PKI.issue(directory: dir, name: "future", days: 30, notBeforeOffsetDays: 5)

        let old = try XCTUnwrap(loadCert(dir + "/devices/old.crt"))
        defer { X509_free(old) }
        XCTAssertLessThan(X509_cmp_current_time(X509_get0_notAfter(old)), 0, "notAfter is in the past")
        var day: Int32 = 0, sec: Int32 = 0
        XCTAssertEqual(ASN1_TIME_diff(&day, &sec, X509_get0_notBefore(old), X509_get0_notAfter(old)), 1)
        XCTAssertEqual(day, 1)
        XCTAssertEqual(verify(dir + "/devices/old.crt", ca: dir + "/ca.crt"), X509_V_ERR_CERT_HAS_EXPIRED)

        let future = try XCTUnwrap(loadCert(dir + "/devices/future.crt"))
        defer { X509_free(future) }
        XCTAssertGreaterThan(X509_cmp_current_time(X509_get0_notBefore(future)), 0, "notBefore is in the future")
        XCTAssertEqual(verify(dir + "/devices/future.crt", ca: dir + "/ca.crt"), X509_V_ERR_CERT_NOT_YET_VALID)

        // A normal certificate starts 5 minutes in the past (clock skew).
        try PKI.issue(directory: dir, name: "now")
        let now = try XCTUnwrap(loadCert(dir + "/devices/now.crt"))
        defer { X509_free(now) }
        XCTAssertEqual(ASN1_TIME_diff(&day, &sec, X509_get0_notBefore(now), nil), 1)
        XCTAssertEqual(day, 0)
        XCTAssertTrue((295...320).contains(sec), "notBefore \(sec)s ago")
        XCTAssertEqual(ASN1_TIME_diff(&day, &sec, nil, X509_get0_notAfter(now)), 1)
        let left = Int(day) * 86_400 + Int(sec)
        XCTAssertTrue(abs(left - 825 * 86_400) <= 5, "notAfter in 825 days, not \(left) s")

        let error = assertThrows("invalidArgument") { () throws(PKIError) in
            try PKI.issue(directory: dir, name: "zero", days: 0)
        }
        guard case .invalidArgument? = error else { return XCTFail("got \(String(describing: error))") }
    }

    func testErrorDescriptions() {
        XCTAssertEqual(PKIError.alreadyExists("/x/ca.key").description,
                       "refusing to overwrite /x/ca.key: a fleet CA already exists there (use --force)")
        XCTAssertTrue(PKIError.io("/x/ca.key", errno: EACCES).description.contains("/x/ca.key"))
        XCTAssertTrue(PKIError.io("/x/ca.key", errno: EACCES).description.contains("ermission denied"))
        XCTAssertTrue(PKIError.missingCA("/x").description.contains("/x"))
        XCTAssertTrue(PKIError.invalidName("*.x").description.contains("\"*.x\""))
        for error in [PKIError.alreadyExists("/a"), .io("/a", errno: ENOENT), .missingCA("/a"),
                      .invalidName("a b"), .invalidArgument("days must be ...")] {
            XCTAssertFalse(error.description.contains("\n"))
        }
    }
}
