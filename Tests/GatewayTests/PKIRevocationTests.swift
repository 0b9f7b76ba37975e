// Tests of certificate revocation: revoked.txt, crlnumber and crl.pem, checked with
// the OpenSSL API (X509_STORE with CRL checking) and the openssl CLI when installed.
import COpenSSL
import Foundation
import XCTest
@testable import FleetPKI

final class PKIRevocationTests: XCTestCase {
    // MARK: helpers

    /// A PKI with devices dev1.example and dev2.example.
    private func makePKI() throws -> String {
        let dir = try makeTempDir() + "/pki"
        try PKI.initialize(directory: dir, gatewayName: "gw.fleet.test")
        try PKI.issue(directory: dir, name: "dev1.example")
        try PKI.issue(directory: dir, name: "dev2.example")
        return dir
    }

    private func loadCRL(_ path: String, file: StaticString = #filePath, line: UInt = #line) -> OpaquePointer? {
        guard let bio = BIO_new_file(path, "r") else {
            XCTFail("cannot open \(path)", file: file, line: line)
            return nil
        }
        defer { BIO_free(bio) }
        let crl = PEM_read_bio_X509_CRL(bio, nil, nil, nil)
        XCTAssertNotNil(crl, "no CRL in \(path)", file: file, line: line)
        return crl
    }

    /// Verifies `certPath` against the CA `caPath` with CRL checking against `crlPath`;
    /// returns the X509_V_* result.
    private func verify(_ certPath: String, ca caPath: String, crl crlPath: String) -> Int32 {
        guard let cert = loadCert(certPath), let ca = loadCert(caPath), let crl = loadCRL(crlPath) else { return -1 }
        defer { X509_free(cert); X509_free(ca); X509_CRL_free(crl) }
        guard let store = X509_STORE_new() else { return -1 }
        defer { X509_STORE_free(store) }
        XCTAssertEqual(X509_STORE_add_cert(store, ca), 1)
        XCTAssertEqual(X509_STORE_add_crl(store, crl), 1)
        XCTAssertEqual(X509_STORE_set_flags(store, UInt(X509_V_FLAG_CRL_CHECK)), 1)
        guard let ctx = X509_STORE_CTX_new() else { return -1 }
        defer { X509_STORE_CTX_free(ctx) }
        XCTAssertEqual(X509_STORE_CTX_init(ctx, store, cert, nil), 1)
        XCTAssertEqual(X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT), 1)
        let ok = X509_verify_cert(ctx)
        let result = X509_STORE_CTX_get_error(ctx)
        if ok == 1 { XCTAssertEqual(result, X509_V_OK) } else { XCTAssertNotEqual(result, X509_V_OK) }
        ERR_clear_error()
        return result
    }

    /// The certificate's serial as lowercase hex.
    private func serialHex(_ certPath: String) -> String {
        guard let cert = loadCert(certPath) else { return "" }
        defer { X509_free(cert) }
        guard let bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nil) else { return "" }
        defer { BN_free(bn) }
        guard let hex = BN_bn2hex(bn) else { return "" }
        defer { rh_OPENSSL_free(hex) }
        return String(cString: hex).lowercased()
    }

    /// The serials listed by a CRL, lowercase hex, in CRL order.
    private func revokedSerials(_ crl: OpaquePointer) -> [String] {
        guard let list = X509_CRL_get_REVOKED(crl) else { return [] }
        return (0..<rh_sk_X509_REVOKED_num(list)).map { i in
            guard let entry = rh_sk_X509_REVOKED_value(list, i),
                  let bn = ASN1_INTEGER_to_BN(X509_REVOKED_get0_serialNumber(entry), nil) else { return "?" }
            defer { BN_free(bn) }
            guard let hex = BN_bn2hex(bn) else { return "?" }
            defer { rh_OPENSSL_free(hex) }
            return String(cString: hex).lowercased()
        }
    }

    private func crlNumber(_ crl: OpaquePointer) -> Int64? {
        var critical: Int32 = -1
        guard let ext = X509_CRL_get_ext_d2i(crl, NID_crl_number, &critical, nil) else { return nil }
        let integer = ext.assumingMemoryBound(to: ASN1_INTEGER.self)
        defer { ASN1_INTEGER_free(integer) }
        XCTAssertEqual(critical, 0, "cRLNumber is not critical")
        var value: Int64 = 0
        XCTAssertEqual(ASN1_INTEGER_get_int64(&value, integer), 1)
        return value
    }

    private func crlNumber(atPath path: String) -> Int64? {
        guard let crl = loadCRL(path) else { return nil }
        defer { X509_CRL_free(crl) }
        return crlNumber(crl)
    }

    /// Asserts that `time` lies `days` days from now, within a few seconds.
    private func assertDaysAhead(_ time: UnsafePointer<ASN1_TIME>?, _ days: Int,
                                 file: StaticString = #filePath, line: UInt = #line) {
        var day: Int32 = 0, sec: Int32 = 0
        XCTAssertEqual(ASN1_TIME_diff(&day, &sec, nil, time), 1, file: file, line: line)
        let seconds = Int(day) * 86_400 + Int(sec)
        XCTAssertTrue((days * 86_400 - 10...days * 86_400).contains(seconds),
                      "\(seconds)s ahead, expected \(days) days", file: file, line: line)
    }

    // MARK: tests

    func testRevokedDeviceFailsOthersVerify() throws {
        let dir = try makePKI()
        let dev1 = dir + "/devices/dev1.example.crt"
        let dev2 = dir + "/devices/dev2.example.crt"
        try PKI.revoke(directory: dir, name: "dev1.example")

        XCTAssertEqual(mode(dir + "/crl.pem"), 0o644)
        XCTAssertEqual(mode(dir + "/revoked.txt"), 0o644)
        XCTAssertEqual(text(dir + "/revoked.txt"), serialHex(dev1) + "\tdev1.example\n")
        XCTAssertEqual(text(dir + "/crlnumber"), "1\n")
        XCTAssertTrue(text(dir + "/crl.pem").hasPrefix("-----BEGIN X509 CRL-----\n"))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".") }
        XCTAssertEqual(leftovers, [])

        XCTAssertEqual(verify(dev1, ca: dir + "/ca.crt", crl: dir + "/crl.pem"), X509_V_ERR_CERT_REVOKED)
        XCTAssertEqual(verify(dev2, ca: dir + "/ca.crt", crl: dir + "/crl.pem"), X509_V_OK)

        // The CRL itself: v2, issued and signed by the CA, the validity window, one entry.
        let crl = try XCTUnwrap(loadCRL(dir + "/crl.pem"))
        defer { X509_CRL_free(crl) }
        let ca = try XCTUnwrap(loadCert(dir + "/ca.crt"))
        defer { X509_free(ca) }
        XCTAssertEqual(X509_CRL_get_version(crl), 1)
        XCTAssertEqual(X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)), 0)
        XCTAssertEqual(X509_CRL_verify(crl, X509_get0_pubkey(ca)), 1)
        XCTAssertEqual(X509_CRL_get_signature_nid(crl), NID_ecdsa_with_SHA256)
        XCTAssertEqual(crlNumber(crl), 1)
        XCTAssertNotNil(X509_CRL_get_ext_d2i(crl, NID_authority_key_identifier, nil, nil).map {
            AUTHORITY_KEYID_free($0.assumingMemoryBound(to: AUTHORITY_KEYID.self))
        })
        var day: Int32 = 0, sec: Int32 = 0
        XCTAssertEqual(ASN1_TIME_diff(&day, &sec, X509_CRL_get0_lastUpdate(crl), nil), 1)
        XCTAssertEqual(day, 0)
        XCTAssertTrue((295...320).contains(sec), "lastUpdate \(sec)s ago")
        assertDaysAhead(X509_CRL_get0_nextUpdate(crl), 30)
        XCTAssertEqual(revokedSerials(crl), [serialHex(dev1)])
        let entry = try XCTUnwrap(rh_sk_X509_REVOKED_value(X509_CRL_get_REVOKED(crl), 0))
        XCTAssertEqual(ASN1_TIME_diff(&day, &sec, X509_REVOKED_get0_revocationDate(entry), nil), 1)
        XCTAssertEqual(day, 0)
        XCTAssertTrue((0...20).contains(sec), "revoked \(sec)s ago")
    }

    func testOpenSSLCommandLineHonoursCRL() throws {
        guard opensslCLI != nil else { throw XCTSkip("no /usr/bin/openssl") }
        let dir = try makePKI()
        try PKI.revoke(directory: dir, name: "dev1.example")
        var (status, output) = try runOpenSSL(["verify", "-crl_check", "-CAfile", dir + "/ca.crt",
                                               "-CRLfile", dir + "/crl.pem", dir + "/devices/dev1.example.crt"])
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("revoked"), output)
        (status, output) = try runOpenSSL(["verify", "-crl_check", "-CAfile", dir + "/ca.crt",
                                           "-CRLfile", dir + "/crl.pem", dir + "/devices/dev2.example.crt"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("OK"), output)
        // The CRL parses and its signature verifies with the CA.
        (status, output) = try runOpenSSL(["crl", "-in", dir + "/crl.pem", "-CAfile", dir + "/ca.crt",
                                           "-noout", "-text"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("verify OK"), output)
        XCTAssertTrue(output.contains("X509v3 CRL Number"), output)
        XCTAssertTrue(output.contains("Version 2"), output)
    }

    func testRevokeTwiceAndNumbersIncrease() throws {
        let dir = try makePKI()
        let dev1 = dir + "/devices/dev1.example.crt"
        let dev2 = dir + "/devices/dev2.example.crt"
        try PKI.revoke(directory: dir, name: "dev1.example")
        let list = text(dir + "/revoked.txt")
        let firstCRL = try XCTUnwrap(loadCRL(dir + "/crl.pem"))
        defer { X509_CRL_free(firstCRL) }
        let firstEntry = try XCTUnwrap(rh_sk_X509_REVOKED_value(X509_CRL_get_REVOKED(firstCRL), 0))
        XCTAssertEqual(crlNumber(firstCRL), 1)

        // A revocation date has one-second resolution: let time move on.
        Thread.sleep(forTimeInterval: 1.2)
        try PKI.revoke(directory: dir, name: "dev1.example")
        XCTAssertEqual(text(dir + "/revoked.txt"), list)
        XCTAssertEqual(crlNumber(atPath: dir + "/crl.pem"), 2)
        XCTAssertEqual(text(dir + "/crlnumber"), "2\n")

        try PKI.revoke(directory: dir, name: "dev2.example", crlDays: 7)
        XCTAssertEqual(text(dir + "/revoked.txt"), list + serialHex(dev2) + "\tdev2.example\n")
        let crl = try XCTUnwrap(loadCRL(dir + "/crl.pem"))
        defer { X509_CRL_free(crl) }
        XCTAssertEqual(crlNumber(crl), 3)
        XCTAssertEqual(Set(revokedSerials(crl)), [serialHex(dev1), serialHex(dev2)])
        XCTAssertEqual(revokedSerials(crl).count, 2)
        assertDaysAhead(X509_CRL_get0_nextUpdate(crl), 7)
        // dev1 keeps the date of its first revocation.
        let serial1 = X509_REVOKED_get0_serialNumber(firstEntry)
        var entry1: OpaquePointer? = nil
        XCTAssertEqual(X509_CRL_get0_by_serial(crl, &entry1, serial1), 1)
        XCTAssertEqual(ASN1_TIME_compare(X509_REVOKED_get0_revocationDate(try XCTUnwrap(entry1)),
                                         X509_REVOKED_get0_revocationDate(firstEntry)), 0)
        XCTAssertEqual(verify(dev1, ca: dir + "/ca.crt", crl: dir + "/crl.pem"), X509_V_ERR_CERT_REVOKED)
        XCTAssertEqual(verify(dev2, ca: dir + "/ca.crt", crl: dir + "/crl.pem"), X509_V_ERR_CERT_REVOKED)

        // writeCRL renews: same entries, next number, new window.
        try PKI.writeCRL(directory: dir, crlDays: 60)
        XCTAssertEqual(text(dir + "/revoked.txt"), list + serialHex(dev2) + "\tdev2.example\n")
        let renewed = try XCTUnwrap(loadCRL(dir + "/crl.pem"))
        defer { X509_CRL_free(renewed) }
        XCTAssertEqual(crlNumber(renewed), 4)
        XCTAssertEqual(Set(revokedSerials(renewed)), [serialHex(dev1), serialHex(dev2)])
        assertDaysAhead(X509_CRL_get0_nextUpdate(renewed), 60)

        // A re-issued dev1 has a new serial and verifies again.
        try PKI.issue(directory: dir, name: "dev1.example", force: true)
        XCTAssertEqual(verify(dev1, ca: dir + "/ca.crt", crl: dir + "/crl.pem"), X509_V_OK)
    }

    func testWriteCRLOnFreshPKIIsEmptyAndValid() throws {
        let dir = try makePKI()
        try PKI.writeCRL(directory: dir)
        XCTAssertEqual(mode(dir + "/crl.pem"), 0o644)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/revoked.txt"))
        let crl = try XCTUnwrap(loadCRL(dir + "/crl.pem"))
        defer { X509_CRL_free(crl) }
        let ca = try XCTUnwrap(loadCert(dir + "/ca.crt"))
        defer { X509_free(ca) }
        XCTAssertEqual(X509_CRL_verify(crl, X509_get0_pubkey(ca)), 1)
        XCTAssertEqual(X509_CRL_get_version(crl), 1)
        XCTAssertEqual(revokedSerials(crl), [])
        XCTAssertEqual(crlNumber(crl), 1)
        assertDaysAhead(X509_CRL_get0_nextUpdate(crl), 30)
        XCTAssertEqual(verify(dir + "/devices/dev1.example.crt", ca: dir + "/ca.crt", crl: dir + "/crl.pem"),
                       X509_V_OK)
        try PKI.writeCRL(directory: dir)
        XCTAssertEqual(crlNumber(atPath: dir + "/crl.pem"), 2)
        if opensslCLI != nil {
            let (status, output) = try runOpenSSL(["verify", "-crl_check", "-CAfile", dir + "/ca.crt",
                                                   "-CRLfile", dir + "/crl.pem",
                                                   dir + "/devices/dev2.example.crt"])
            XCTAssertEqual(status, 0, output)
        }
    }

    func testHandEditedListAndNumber() throws {
        let dir = try makePKI()
        let dev1 = dir + "/devices/dev1.example.crt"
        // Comments, blank lines, upper case and leading zeros; the line for dev1 is
        // recognised as dev1's serial, so revoking dev1 adds nothing.
        let handWritten = "# revoked by hand\n\n00" + serialHex(dev1).uppercased() + "\tdev1 (lost)\r\n0a\n"
        try handWritten.write(toFile: dir + "/revoked.txt", atomically: true, encoding: .utf8)
        try "41\n".write(toFile: dir + "/crlnumber", atomically: true, encoding: .utf8)
        try PKI.revoke(directory: dir, name: "dev1.example")
        XCTAssertEqual(text(dir + "/revoked.txt"), handWritten)
        let crl = try XCTUnwrap(loadCRL(dir + "/crl.pem"))
        defer { X509_CRL_free(crl) }
        XCTAssertEqual(crlNumber(crl), 42)
        XCTAssertEqual(Set(revokedSerials(crl)), [serialHex(dev1), "0a"])
        XCTAssertEqual(verify(dev1, ca: dir + "/ca.crt", crl: dir + "/crl.pem"), X509_V_ERR_CERT_REVOKED)

        // Without crlnumber the number continues from the previous CRL.
        try FileManager.default.removeItem(atPath: dir + "/crlnumber")
        try PKI.revoke(directory: dir, name: "dev2.example")
        XCTAssertEqual(crlNumber(atPath: dir + "/crl.pem"), 43)
        XCTAssertTrue(text(dir + "/revoked.txt").hasSuffix(handWritten + serialHex(dir + "/devices/dev2.example.crt")
            + "\tdev2.example\n"))

        // Garbage is refused, naming the file and line; the CRL stays as it was.
        let before = text(dir + "/crl.pem")
        try "zz\tdev\n".write(toFile: dir + "/revoked.txt", atomically: true, encoding: .utf8)
        let error = assertThrows("malformed") { () throws(PKIError) in try PKI.writeCRL(directory: dir) }
        guard case .malformed(let path, let reason)? = error else {
            return XCTFail("got \(String(describing: error))")
        }
        XCTAssertEqual(path, dir + "/revoked.txt")
        XCTAssertTrue(reason.contains("line 1"), reason)
        XCTAssertEqual(text(dir + "/crl.pem"), before)

        try "".write(toFile: dir + "/revoked.txt", atomically: true, encoding: .utf8)
        try "x\n".write(toFile: dir + "/crlnumber", atomically: true, encoding: .utf8)
        let numberError = assertThrows("malformed") { () throws(PKIError) in try PKI.writeCRL(directory: dir) }
        guard case .malformed(let numberPath, _)? = numberError else {
            return XCTFail("got \(String(describing: numberError))")
        }
        XCTAssertEqual(numberPath, dir + "/crlnumber")
    }

    func testSerialNormalization() {
        XCTAssertEqual(PKI.normalizedSerial("0A"), "0a")
        XCTAssertEqual(PKI.normalizedSerial("000abc"), "0abc")
        XCTAssertEqual(PKI.normalizedSerial("0"), "00")
        XCTAssertEqual(PKI.normalizedSerial("7fFF"), "7fff")
        XCTAssertEqual(PKI.normalizedSerial(String(repeating: "f", count: 40)), String(repeating: "f", count: 40))
        XCTAssertNil(PKI.normalizedSerial(String(repeating: "f", count: 41)))
        XCTAssertNil(PKI.normalizedSerial(""))
        XCTAssertNil(PKI.normalizedSerial("-1"))
        XCTAssertNil(PKI.normalizedSerial("0x1"))
        XCTAssertNil(PKI.normalizedSerial("g"))
    }

    func testRevocationErrors() throws {
        let dir = try makePKI()

        let missing = assertThrows("notFound") { () throws(PKIError) in
            try PKI.revoke(directory: dir, name: "nope.example")
        }
        guard case .notFound(let path)? = missing else { return XCTFail("got \(String(describing: missing))") }
        XCTAssertEqual(path, dir + "/devices/nope.example.crt")
        XCTAssertTrue(missing!.description.contains(path), missing!.description)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/revoked.txt"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/crl.pem"))

        let invalid = assertThrows("invalidName") { () throws(PKIError) in
            try PKI.revoke(directory: dir, name: "../ca")
        }
        guard case .invalidName? = invalid else { return XCTFail("got \(String(describing: invalid))") }

        for days in [0, 36_501] {
            let error = assertThrows("invalidArgument") { () throws(PKIError) in
                try PKI.revoke(directory: dir, name: "dev1.example", crlDays: days)
            }
            guard case .invalidArgument? = error else { return XCTFail("got \(String(describing: error))") }
            let renewError = assertThrows("invalidArgument") { () throws(PKIError) in
                try PKI.writeCRL(directory: dir, crlDays: days)
            }
            guard case .invalidArgument? = renewError else { return XCTFail("got \(String(describing: renewError))") }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/revoked.txt"))

        // No CA.
        let empty = try makeTempDir()
        let noCA = assertThrows("missingCA") { () throws(PKIError) in
            try PKI.revoke(directory: empty, name: "dev1.example")
        }
        guard case .missingCA(let reported)? = noCA else { return XCTFail("got \(String(describing: noCA))") }
        XCTAssertEqual(reported, empty)
        let noCARenew = assertThrows("missingCA") { () throws(PKIError) in try PKI.writeCRL(directory: empty) }
        guard case .missingCA(let renewReported)? = noCARenew else {
            return XCTFail("got \(String(describing: noCARenew))")
        }
        XCTAssertEqual(renewReported, empty)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: empty), [])

        // A certificate of another CA is refused.
        let other = try makePKI()
        try FileManager.default.copyItem(atPath: other + "/devices/dev1.example.crt",
                                         toPath: dir + "/devices/foreign.crt")
        let foreign = assertThrows("invalidArgument") { () throws(PKIError) in
            try PKI.revoke(directory: dir, name: "foreign")
        }
        guard case .invalidArgument(let text)? = foreign else {
            return XCTFail("got \(String(describing: foreign))")
        }
        XCTAssertTrue(text.contains("not issued by the fleet CA"), text)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/revoked.txt"))

        // A CRL left by an earlier CA (init --force) is replaced, not trusted.
        try PKI.revoke(directory: other, name: "dev2.example")
        try FileManager.default.copyItem(atPath: other + "/crl.pem", toPath: dir + "/crl.pem")
        try PKI.writeCRL(directory: dir)
        XCTAssertEqual(crlNumber(atPath: dir + "/crl.pem"), 1)
        let crl = try XCTUnwrap(loadCRL(dir + "/crl.pem"))
        defer { X509_CRL_free(crl) }
        XCTAssertEqual(revokedSerials(crl), [])

        for error in [PKIError.notFound("/a/devices/x.crt"), .notFound("/a/b"), .malformed("/a", reason: "bad")] {
            XCTAssertFalse(error.description.contains("\n"))
            XCTAssertTrue(error.description.contains("/a"))
        }
    }
}
