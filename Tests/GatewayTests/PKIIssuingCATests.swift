// Two-tier PKI (`pki init --issuing-ca`, issue 17): a root that can leave the
// machine, an issuing CA that signs everything, chains that verify against the root.
import COpenSSL
import Foundation
@testable import FleetPKI
import TLS
import XCTest

final class PKIIssuingCATests: XCTestCase {
    func pemCount(_ path: String) -> Int {
        text(path).components(separatedBy: "-----BEGIN CERTIFICATE-----").count - 1
    }

    func testLayoutAndChains() throws {
        let dir = try makeTempDir() + "/pki"
        try PKI.initialize(directory: dir, gatewayName: "gw.example", issuingCA: true)
        for (file, m) in [("root.crt", 0o644), ("root.key", 0o600), ("ca.crt", 0o644), ("ca.key", 0o600),
                          ("gateway.crt", 0o644), ("gateway.key", 0o600)] {
            XCTAssertEqual(mode(dir + "/" + file), mode_t(m), file)
        }
        XCTAssertEqual(pemCount(dir + "/root.crt"), 1)
        XCTAssertEqual(pemCount(dir + "/ca.crt"), 2, "issuing CA, then root")
        XCTAssertEqual(pemCount(dir + "/gateway.crt"), 2, "leaf, then issuing CA")
        XCTAssertTrue(text(dir + "/ca.crt").hasSuffix(text(dir + "/root.crt")))

        // The root key can leave: nothing below needs it.
        try FileManager.default.removeItem(atPath: dir + "/root.key")
        try PKI.issue(directory: dir, name: "dev1.example")
        XCTAssertEqual(pemCount(dir + "/devices/dev1.example.crt"), 2)
        let ca = try CertificateAuthority(directory: dir)
        let chain = try ca.chainDER()
        XCTAssertEqual(chain.count, 2)
        XCTAssertEqual(chain[0], try ca.certificateDER(), "the signing CA first")
        XCTAssertEqual(try PKCS7CertsOnly.decode(der: PKCS7CertsOnly.encode(certificatesDER: chain)), chain)
        let req = try CertificateRequest(der: EnrollmentKey().certificateRequest(commonName: "dev2.example"))
        let enrolled = try ca.issueDevice(request: req, name: "dev2.example")

        try XCTSkipIf(opensslCLI == nil, "no openssl CLI")
        try enrolled.certificatePEM.write(to: dir + "/dev2.pem")
        let root = dir + "/root.crt", bundle = dir + "/ca.crt"
        // Against the root alone, with the issuing CA as the chain; and against the bundle.
        for leaf in [dir + "/dev2.pem", dir + "/devices/dev1.example.crt", dir + "/gateway.crt"] {
            let (s1, o1) = try runOpenSSL(["verify", "-CAfile", root, "-untrusted", bundle, leaf])
            XCTAssertEqual(s1, 0, o1)
            let (s2, o2) = try runOpenSSL(["verify", "-CAfile", bundle, leaf])
            XCTAssertEqual(s2, 0, o2)
            let (s3, o3) = try runOpenSSL(["verify", "-CAfile", root, leaf])
            XCTAssertNotEqual(s3, 0, "the leaf alone does not reach the root: " + o3)
        }
        // The issuing CA's CRL covers the leaves it signed.
        try PKI.revoke(directory: dir, name: "dev2.example")
        let (s4, o4) = try runOpenSSL(["verify", "-crl_check", "-CRLfile", dir + "/crl.pem", "-CAfile", bundle, dir + "/dev2.pem"])
        XCTAssertNotEqual(s4, 0)
        XCTAssertTrue(o4.contains("revoked"), o4)
        let (s5, o5) = try runOpenSSL(["verify", "-crl_check", "-CRLfile", dir + "/crl.pem", "-CAfile", bundle,
                                       dir + "/devices/dev1.example.crt"])
        XCTAssertEqual(s5, 0, o5)
        let (_, caText) = try runOpenSSL(["x509", "-in", bundle, "-noout", "-text"])
        XCTAssertTrue(caText.contains("CA:TRUE, pathlen:0"), caText)
        XCTAssertTrue(caText.contains("Issuer: CN = ReverseHTTP Root CA"), caText)
    }

    func testCRLUpdateTimes() throws {
        let dir = try makeTempDir() + "/pki"
        try PKI.initialize(directory: dir, gatewayName: "gw.example", issuingCA: true)
        try PKI.writeCRL(directory: dir, crlDays: 30)
        let (last, next) = try PKI.crlUpdateTimes(file: dir + "/crl.pem")
        let now = Int64(Date().timeIntervalSince1970)
        XCTAssertLessThan(abs(last + 300 - now), 120)
        XCTAssertLessThan(abs(next - 30 * 86_400 - now), 120)
        XCTAssertNotNil(assertThrows("no CRL") { () throws(PKIError) in _ = try PKI.crlUpdateTimes(pem: Array("x".utf8)) })
        XCTAssertNotNil(assertThrows("no file") { () throws(PKIError) in _ = try PKI.crlUpdateTimes(file: dir + "/none.pem") })
        XCTAssertEqual(ERR_peek_error(), 0)
    }

    func testSingleCAUnchangedAndRefusals() throws {
        let dir = try makeTempDir() + "/pki"
        try PKI.initialize(directory: dir, gatewayName: "gw.example")
        try PKI.issue(directory: dir, name: "dev1.example")
        XCTAssertEqual(pemCount(dir + "/ca.crt"), 1)
        XCTAssertEqual(pemCount(dir + "/gateway.crt"), 1)
        XCTAssertEqual(pemCount(dir + "/devices/dev1.example.crt"), 1, "a single CA's leaves stay alone")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/root.crt"))
        XCTAssertEqual(try CertificateAuthority(directory: dir).chainDER().count, 1)

        let two = try makeTempDir() + "/pki2"
        XCTAssertNotNil(assertThrows("root outlives") { () throws(PKIError) in
            try PKI.initialize(directory: two, gatewayName: "gw.example", caDays: 3650, issuingCA: true, rootDays: 100)
        })
        XCTAssertFalse(FileManager.default.fileExists(atPath: two + "/ca.key"))
        try PKI.initialize(directory: two, gatewayName: "gw.example", issuingCA: true)
        try FileManager.default.removeItem(atPath: two + "/ca.key")
        let e = assertThrows("root.key exists") { () throws(PKIError) in
            try PKI.initialize(directory: two, gatewayName: "gw.example", issuingCA: true)
        }
        guard case .alreadyExists(let path)? = e else { return XCTFail("\(String(describing: e))") }
        XCTAssertTrue(path.hasSuffix("/root.key"))
    }
}
