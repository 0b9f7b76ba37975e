// EST building blocks of FleetPKI (issue 17): PKCS#10 requests checked before use,
// device certificates issued for them, certs-only PKCS#7, the re-enrollment rule.
// Requests of other key types come from the openssl command line, an independent client.
import Bytes
import COpenSSL
import Foundation
@testable import FleetPKI
import TLS
import XCTest

final class EnrollmentPKITests: XCTestCase {
    // MARK: - Requests

    func testAgentRequestParses() throws {
        let key = try EnrollmentKey()
        let der = try key.certificateRequest(commonName: "dev1.example")
        let req = try CertificateRequest(der: der)
        XCTAssertEqual(req.commonName, "dev1.example")
        XCTAssertEqual(req.keyType, .ecP256)
        XCTAssertEqual(req.der, der)
        XCTAssertEqual(req.publicKeyFingerprint, sha256(req.publicKeyDER))
        XCTAssertEqual(req.publicKeyFingerprintHex.count, 64)
        // The same through an EST body, in lines, and with stray white space.
        var body = ESTBody.encode(der)
        body.insert(0x20, at: 5)
        body += [0x0A, 0x09]
        let again = try CertificateRequest(estBody: body)
        XCTAssertEqual(again.publicKeyDER, req.publicKeyDER)
        // Two keys, two fingerprints.
        let other = try CertificateRequest(der: EnrollmentKey().certificateRequest(commonName: "dev1.example"))
        XCTAssertNotEqual(other.publicKeyFingerprint, req.publicKeyFingerprint)
    }

    func testKeyTypesFromOpenSSL() throws {
        try XCTSkipIf(opensslCLI == nil, "no openssl CLI")
        let dir = try makeTempDir()
        func request(_ keyArgs: [String], subject: String = "/CN=dev1.example", digest: String = "-sha256") throws -> [UInt8] {
            let out = dir + "/r.der"
            let (status, text) = try runOpenSSL(["req", "-new", "-newkey"] + keyArgs + ["-nodes", "-keyout", dir + "/k.pem",
                                                 "-subj", subject, "-outform", "DER", "-out", out]
                                                 + (digest.isEmpty ? [] : [digest]))
            XCTAssertEqual(status, 0, text)
            return Array(try Data(contentsOf: URL(fileURLWithPath: out)))
        }
        XCTAssertEqual(try CertificateRequest(der: request(["ec", "-pkeyopt", "ec_paramgen_curve:P-384"])).keyType, .ecP384)
        XCTAssertEqual(try CertificateRequest(der: request(["ed25519"], digest: "")).keyType, .ed25519)
        XCTAssertEqual(try CertificateRequest(der: request(["rsa:2048"])).keyType, .rsa(bits: 2048))
        XCTAssertEqual(try CertificateRequest(der: request(["ec", "-pkeyopt", "ec_paramgen_curve:P-256"], digest: "-sha512")).keyType, .ecP256)

        assertESTError(.unsupportedKey("RSA 1024")) { try CertificateRequest(der: request(["rsa:1024"])) }
        XCTAssertEqual(try CertificateRequest(der: request(["rsa:2048", "-pkeyopt", "rsa_keygen_pubexp:3"])).keyType, .rsa(bits: 2048))
        assertESTError(.unsupportedKey("RSA (public exponent must be odd, 3 to 2^32)")) {
            try CertificateRequest(der: request(["rsa:2048", "-pkeyopt", "rsa_keygen_pubexp:4294967297"]))
        }
        assertESTError(.unsupportedKey("EC secp256k1")) { try CertificateRequest(der: request(["ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"])) }
        assertESTError(.weakSignature("sha1WithRSAEncryption")) { try CertificateRequest(der: request(["rsa:2048"], digest: "-sha1")) }
        assertESTError(.weakSignature("ecdsa-with-SHA1")) {
            try CertificateRequest(der: request(["ec", "-pkeyopt", "ec_paramgen_curve:P-256"], digest: "-sha1"))
        }
        assertESTError(.commonName("no CN")) { try CertificateRequest(der: request(["ed25519"], subject: "/O=x", digest: "")) }
        assertESTError(.commonName("more than one CN")) {
            try CertificateRequest(der: request(["ed25519"], subject: "/CN=a/CN=b", digest: ""))
        }
        assertESTError(.unsupportedKey("RSASSA-PSS")) {
            try CertificateRequest(der: request(["rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048"]))
        }
    }

    func testHostileRequests() throws {
        let der = try EnrollmentKey().certificateRequest(commonName: "dev1.example")
        // The signature is the last bytes: any change there breaks the proof of possession.
        var badSig = der
        badSig[badSig.count - 3] ^= 0x01
        XCTAssertTrue([.badSignature, .malformed("PKCS#10 request")].contains(catchESTError { try CertificateRequest(der: badSig) }))
        // A changed CN (same length) keeps the DER valid but not the signature.
        var renamed = der
        let cn = Array("dev1.example".utf8)
        if let at = (0...(renamed.count - cn.count)).first(where: { Array(renamed[$0..<$0 + cn.count]) == cn }) {
            renamed[at] = UInt8(ascii: "e")
            assertESTError(.badSignature) { try CertificateRequest(der: renamed) }
        } else {
            XCTFail("CN not found in the DER")
        }
        assertESTError(.trailingBytes(1)) { try CertificateRequest(der: der + [0]) }
        assertESTError(.malformed("PKCS#10 request")) { try CertificateRequest(der: Array(der.prefix(der.count / 2))) }
        assertESTError(.malformed("PKCS#10 request")) { try CertificateRequest(der: []) }
        assertESTError(.malformed("PKCS#10 request")) { try CertificateRequest(der: [0x30, 0x80, 0, 0]) }
        assertESTError(.tooLarge(limit: CertificateRequest.maxDERBytes)) {
            try CertificateRequest(der: [UInt8](repeating: 0x30, count: CertificateRequest.maxDERBytes + 1))
        }
        assertESTError(.empty) { try CertificateRequest(estBody: Array(" \r\n".utf8)) }
        assertESTError(.notBase64(offset: 2)) { try CertificateRequest(estBody: Array("MI!!".utf8)) }
        assertESTError(.tooLarge(limit: 100)) { try CertificateRequest(estBody: ESTBody.encode(der), limit: 100) }
        // A certificate is not a request.
        let ca = try CertificateAuthority(ephemeralName: "x")
        XCTAssertNotNil(catchESTError { try CertificateRequest(der: ca.certificateDER()) })
        XCTAssertEqual(ERR_peek_error(), 0, "OpenSSL's error queue is left empty")
    }

    // MARK: - Issuing

    func testIssueFromRequestRecordsAndDecidesTheName() throws {
        let dir = try makeTempDir() + "/pki"
        try PKI.initialize(directory: dir, gatewayName: "gw.example")
        let ca = try CertificateAuthority(directory: dir)
        let key = try EnrollmentKey()
        // The request asks for another name: the caller's name wins, nothing else is copied.
        let req = try CertificateRequest(der: key.certificateRequest(commonName: "evil.example"))
        let issued = try ca.issueDevice(request: req, name: "dev1.example")
        XCTAssertEqual(PKI.certificateHostnames(pem: issued.certificatePEM), ["dev1.example"])
        XCTAssertEqual(issued.notAfter - issued.notBefore, 30 * 86_400 + 300)
        XCTAssertLessThan(abs(issued.notBefore + 300 - Int64(Date().timeIntervalSince1970)), 120)
        XCTAssertTrue(text(dir + "/issued.txt").contains(issued.serial + "\tdev1.example\n"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/devices/dev1.example.key"), "the device keeps its key")
        // The certificate goes with the device's key.
        var keyPEM = try key.privateKeyPEM()
        XCTAssertNoThrow(try TLSIdentity(certificatePEM: issued.certificatePEM, keyPEM: keyPEM))
        for i in keyPEM.indices { keyPEM[i] = 0 }
        // DER and PEM are the same certificate.
        XCTAssertEqual(try PKI.certificatesDER(pem: issued.certificatePEM), [issued.certificateDER])

        if opensslCLI != nil {
            try issued.certificatePEM.write(to: dir + "/leaf.pem")
            let (status, out) = try runOpenSSL(["verify", "-purpose", "sslclient", "-CAfile", dir + "/ca.crt", dir + "/leaf.pem"])
            XCTAssertEqual(status, 0, out)
            let (_, textOut) = try runOpenSSL(["x509", "-in", dir + "/leaf.pem", "-noout", "-text"])
            XCTAssertTrue(textOut.contains("Subject: CN = dev1.example"), textOut)
            XCTAssertTrue(textOut.contains("DNS:dev1.example"), textOut)
            XCTAssertTrue(textOut.contains("TLS Web Client Authentication"), textOut)
            XCTAssertFalse(textOut.contains("OU ="), textOut)
            XCTAssertFalse(textOut.contains("evil"), textOut)
        }

        // Earlier certificates: refused, kept, or revoked.
        let req2 = try CertificateRequest(der: EnrollmentKey().certificateRequest(commonName: "dev1.example"))
        let err = assertThrows("stillIssued") { () throws(PKIError) in _ = try ca.issueDevice(request: req2, name: "dev1.example") }
        guard case .stillIssued(_, let serials)? = err else { return XCTFail("\(String(describing: err))") }
        XCTAssertEqual(serials, [issued.serial])
        let kept = try ca.issueDevice(request: req2, name: "dev1.example", days: 7, earlier: .keep)
        XCTAssertEqual(kept.notAfter - kept.notBefore, 7 * 86_400 + 300)
        XCTAssertTrue(kept.revoked.isEmpty)
        let replaced = try ca.issueDevice(request: req2, name: "dev1.example", earlier: .revoke(crlDays: 30))
        XCTAssertEqual(Set(replaced.revoked), [issued.serial, kept.serial])
        XCTAssertTrue(text(dir + "/revoked.txt").contains(issued.serial))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/crl.pem"))
        // `pki revoke NAME` knows the enrolled certificates (issued.txt).
        XCTAssertEqual(try PKI.revoke(directory: dir, name: "dev1.example"), [replaced.serial])
    }

    func testCheckIssuableRefusesBeforeSigning() throws {
        let dir = try makeTempDir() + "/pki"
        try PKI.initialize(directory: dir, gatewayName: "gw.example")
        let ca = try CertificateAuthority(directory: dir)
        XCTAssertNoThrow(try ca.checkIssuable(name: "dev1.example"))
        XCTAssertNotNil(assertThrows("reserved") { () throws(PKIError) in try ca.checkIssuable(name: "gw.example", earlier: .keep) })
        XCTAssertNotNil(assertThrows("canonical") { () throws(PKIError) in try ca.checkIssuable(name: "Dev1.example") })
        try PKI.issue(directory: dir, name: "dev1.example")
        let e = assertThrows("stillIssued") { () throws(PKIError) in try ca.checkIssuable(name: "dev1.example") }
        guard case .stillIssued? = e else { return XCTFail("\(String(describing: e))") }
        XCTAssertNoThrow(try ca.checkIssuable(name: "dev1.example", earlier: .keep))
        XCTAssertNoThrow(try ca.checkIssuable(name: "dev1.example", earlier: .revoke(crlDays: 30)))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/crl.pem"), "nothing revoked by a check")
    }

    func testIssueRefusesNames() throws {
        let dir = try makeTempDir() + "/pki"
        try PKI.initialize(directory: dir, gatewayName: "gw.example")
        let ca = try CertificateAuthority(directory: dir)
        let req = try CertificateRequest(der: EnrollmentKey().certificateRequest(commonName: "x"))
        func reserved(_ e: PKIError?) -> Bool { if case .reservedName? = e { return true }; return false }
        func notCanonical(_ e: PKIError?) -> Bool { if case .notCanonical? = e { return true }; return false }
        func invalid(_ e: PKIError?) -> Bool { if case .invalidName? = e { return true }; return false }
        for (name, expected) in [("gw.example", reserved), ("localhost", reserved), ("DEV1.example", notCanonical),
                                 ("10.0.0.1", invalid), ("*.example", invalid), ("", invalid)] {
            let e = assertThrows(name) { () throws(PKIError) in _ = try ca.issueDevice(request: req, name: name) }
            XCTAssertTrue(expected(e), "\(name): \(String(describing: e))")
        }
        XCTAssertNotNil(assertThrows("days") { () throws(PKIError) in _ = try ca.issueDevice(request: req, name: "d.example", days: 0) })
        // An ephemeral CA records nothing and needs no directory.
        let mem = try CertificateAuthority(ephemeralName: "mem")
        XCTAssertNil(mem.directory)
        let one = try mem.issueDevice(request: req, name: "d.example")
        let two = try mem.issueDevice(request: req, name: "d.example")
        XCTAssertNotEqual(one.serial, two.serial)
    }

    // MARK: - PKCS#7

    func testCertsOnlyRoundTripAndOpenSSL() throws {
        let ca = try CertificateAuthority(ephemeralName: "Fleet CA")
        let req = try CertificateRequest(der: EnrollmentKey().certificateRequest(commonName: "d"))
        let leaf = try ca.issueDevice(request: req, name: "dev1.example")
        let chain = [leaf.certificateDER, try ca.certificateDER()]
        let p7 = try PKCS7CertsOnly.encode(certificatesDER: chain)
        XCTAssertEqual(try PKCS7CertsOnly.decode(der: p7), chain)
        XCTAssertEqual(try PKCS7CertsOnly.decode(estBody: PKCS7CertsOnly.estBody(certificatesDER: chain)), chain)
        XCTAssertEqual(try PKCS7CertsOnly.encode(certificatesPEM: leaf.certificatePEM + ca.certificatePEM), p7)
        // TLS's PEM for the agent: both certificates, leaf first.
        let pem = try PKCS7Certificates.pem(der: p7)
        XCTAssertEqual(try PKI.certificatesDER(pem: pem), chain)
        XCTAssertEqual(PKCS7CertsOnly.contentType, "application/pkcs7-mime; smime-type=certs-only")

        try XCTSkipIf(opensslCLI == nil, "no openssl CLI")
        let dir = try makeTempDir()
        try p7.write(to: dir + "/certs.p7")
        let (status, out) = try runOpenSSL(["pkcs7", "-inform", "DER", "-in", dir + "/certs.p7", "-print_certs", "-print"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("subject=CN = dev1.example"), out)
        XCTAssertTrue(out.contains("subject=CN = Fleet CA"), out)
        XCTAssertFalse(out.contains("issuer_and_serial"), "no signer: " + out)
        // encapContentInfo is SEQUENCE { id-data } with no eContent (RFC 7030 §4.1.3).
        let dataOnly: [UInt8] = [0x30, 0x0B, 0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x01]
        XCTAssertTrue((0...(p7.count - dataOnly.count)).contains { Array(p7[$0..<$0 + dataOnly.count]) == dataOnly })
        // And what `openssl crl2pkcs7` makes, we read.
        try leaf.certificatePEM.write(to: dir + "/leaf.pem")
        let (s2, o2) = try runOpenSSL(["crl2pkcs7", "-nocrl", "-certfile", dir + "/leaf.pem", "-outform", "DER", "-out", dir + "/o.p7"])
        XCTAssertEqual(s2, 0, o2)
        XCTAssertEqual(try PKCS7CertsOnly.decode(der: Array(Data(contentsOf: URL(fileURLWithPath: dir + "/o.p7")))), [leaf.certificateDER])
    }

    func testHostilePKCS7() throws {
        let ca = try CertificateAuthority(ephemeralName: "Fleet CA")
        let p7 = try PKCS7CertsOnly.encode(certificatesDER: [ca.certificateDER()])
        assertESTError(.trailingBytes(2)) { try PKCS7CertsOnly.decode(der: p7 + [0, 0]) }
        assertESTError(.malformed("PKCS#7")) { try PKCS7CertsOnly.decode(der: Array(p7.dropLast())) }
        assertESTError(.malformed("PKCS#7")) { try PKCS7CertsOnly.decode(der: []) }
        assertESTError(.malformed("PKCS#7")) { try PKCS7CertsOnly.decode(der: try ca.certificateDER()) }
        assertESTError(.notBase64(offset: 1)) { try PKCS7CertsOnly.decode(estBody: Array("=AAA".utf8)) }
        // A SignedData without certificates (crl2pkcs7 with neither).
        if opensslCLI != nil {
            let dir = try makeTempDir()
            let (s, o) = try runOpenSSL(["crl2pkcs7", "-nocrl", "-outform", "DER", "-out", dir + "/empty.p7"])
            XCTAssertEqual(s, 0, o)
            let empty = Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/empty.p7")))
            assertESTError(.notCertsOnly("no SignedData with certificates")) { try PKCS7CertsOnly.decode(der: empty) }
        }
        // Too many certificates.
        let many = try PKCS7CertsOnly.encode(certificatesDER: Array(repeating: ca.certificateDER(), count: PKCS7Certificates.maxCertificates + 1))
        assertESTError(.tooManyCertificates(limit: PKCS7Certificates.maxCertificates)) { try PKCS7CertsOnly.decode(der: many) }
        XCTAssertNotNil(assertThrows("empty") { () throws(PKIError) in _ = try PKCS7CertsOnly.encode(certificatesDER: []) })
        XCTAssertNotNil(assertThrows("malformed") { () throws(PKIError) in _ = try PKCS7CertsOnly.encode(certificatesDER: [[1, 2, 3]]) })
        XCTAssertEqual(ERR_peek_error(), 0)
    }

    // MARK: - Re-enrollment

    func testReenrollmentRule() throws {
        let ca = try CertificateAuthority(ephemeralName: "Fleet CA")
        let oldKey = try EnrollmentKey()
        let current = try ca.issueDevice(request: CertificateRequest(der: oldKey.certificateRequest(commonName: "dev1.example")),
                                         name: "dev1.example")
        let renewal = try CertificateRequest(der: EnrollmentKey().certificateRequest(commonName: "dev1.example"))
        XCTAssertNoThrow(try renewal.checkReenrollment(currentCertificateDER: current.certificateDER))
        XCTAssertNoThrow(try renewal.checkReenrollment(currentCertificatePEM: current.certificatePEM))
        let sameKey = try CertificateRequest(der: oldKey.certificateRequest(commonName: "dev1.example"))
        assertESTError(.keyReused) { try sameKey.checkReenrollment(currentCertificateDER: current.certificateDER) }
        let otherName = try CertificateRequest(der: EnrollmentKey().certificateRequest(commonName: "dev2.example"))
        assertESTError(.subjectChanged) { try otherName.checkReenrollment(currentCertificateDER: current.certificateDER) }
        // X509_NAME_cmp folds case; the CN must still be the same bytes.
        let upper = try CertificateRequest(der: EnrollmentKey().certificateRequest(commonName: "DEV1.example"))
        assertESTError(.subjectChanged) { try upper.checkReenrollment(currentCertificateDER: current.certificateDER) }
        assertESTError(.malformed("certificate")) { try renewal.checkReenrollment(currentCertificateDER: [0x30, 0]) }
        assertESTError(.malformed("certificate")) { try renewal.checkReenrollment(currentCertificateDER: current.certificateDER + [0]) }
        assertESTError(.malformed("certificate")) { try renewal.checkReenrollment(currentCertificatePEM: Array("x".utf8)) }
        XCTAssertEqual(ERR_peek_error(), 0)
    }

    // MARK: - Helpers

    func catchESTError(_ body: () throws -> Any) -> ESTError? {
        do {
            _ = try body()
            return nil
        } catch let e as ESTError {
            return e
        } catch {
            XCTFail("not an ESTError: \(error)")
            return nil
        }
    }

    func assertESTError(_ expected: ESTError, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Any) {
        XCTAssertEqual(catchESTError(body), expected, file: file, line: line)
    }
}

extension Array where Element == UInt8 {
    func write(to path: String) throws {
        try Data(self).write(to: URL(fileURLWithPath: path))
    }
}
