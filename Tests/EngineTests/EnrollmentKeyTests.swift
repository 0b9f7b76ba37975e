// The agent's side of EST (TLS module): base64 bodies, a new key and its
// PKCS#10 request, certificates out of a certs-only PKCS#7 (made here with the
// openssl command line, an independent implementation).
import Bytes
import COpenSSL
import Foundation
@testable import TLS
import XCTest

final class EnrollmentKeyTests: XCTestCase {
    func testBase64RoundTripAndLines() throws {
        var g = SystemRandomNumberGenerator()
        for n in 0..<200 {
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
            let body = ESTBody.encode(bytes)
            XCTAssertTrue(body.split(separator: 0x0A).allSatisfy { $0.count <= 66 && $0.last == 0x0D })
            if n == 0 {
                XCTAssertEqual(body, [])
                continue
            }
            XCTAssertEqual(try ESTBody.decode(body), bytes)
            // Without line breaks, and with white space anywhere.
            let flat = body.filter { $0 != 0x0D && $0 != 0x0A }
            XCTAssertEqual(try ESTBody.decode(flat), bytes)
            XCTAssertEqual(Data(base64Encoded: Data(flat)).map(Array.init), bytes, "standard base64")
            var spaced = flat
            spaced.insert(0x20, at: spaced.count / 2)
            spaced.insert(0x09, at: 0)
            XCTAssertEqual(try ESTBody.decode(spaced), bytes)
        }
    }

    func testBase64IsStrict() {
        func err(_ s: String, limit: Int = ESTBody.defaultLimit) -> ESTError? {
            do { _ = try ESTBody.decode(Array(s.utf8), limit: limit); return nil } catch { return error }
        }
        XCTAssertEqual(err(""), .empty)
        XCTAssertEqual(err(" \r\n\t"), .empty)
        XCTAssertEqual(err("===="), .notBase64(offset: 2))
        XCTAssertEqual(err("=="), .notBase64(offset: 0))
        XCTAssertEqual(err("QQ=A"), .notBase64(offset: 3), "padding only at the end")
        XCTAssertEqual(err("QQ="), .notBase64(offset: 3), "incomplete padding")
        XCTAssertEqual(err("QR=="), .notBase64(offset: 4), "leftover bits set")
        XCTAssertEqual(err("Q"), .notBase64(offset: 1), "a single letter left over")
        XCTAssertEqual(err("QUJD-"), .notBase64(offset: 4), "base64url is not base64")
        XCTAssertEqual(err("QUJD\0"), .notBase64(offset: 4))
        XCTAssertEqual(err("QUJDRA", limit: 5), .tooLarge(limit: 5))
        XCTAssertEqual(try ESTBody.decode(Array("QQ==".utf8)), [0x41])
        XCTAssertEqual(try ESTBody.decode(Array("QQ".utf8)), [0x41], "padding optional")
        XCTAssertEqual(try ESTBody.decode(Array("QUI=\r\n".utf8)), [0x41, 0x42])
    }

    func testKeyAndRequest() throws {
        let key = try EnrollmentKey()
        let pem = String(decoding: try key.privateKeyPEM(), as: UTF8.self)
        XCTAssertTrue(pem.hasPrefix("-----BEGIN PRIVATE KEY-----\n"), pem)
        let der = try key.certificateRequest(commonName: "dev1.example")
        let req: OpaquePointer? = der.withUnsafeBufferPointer { b in
            var p: UnsafePointer<UInt8>? = b.baseAddress
            return d2i_X509_REQ(nil, &p, b.count)
        }
        guard let req else { return XCTFail("no PKCS#10") }
        defer { X509_REQ_free(req) }
        XCTAssertEqual(X509_REQ_verify(req, X509_REQ_get0_pubkey(req)), 1)
        XCTAssertEqual(X509_REQ_get_version(req), 0)
        XCTAssertEqual(X509_REQ_get_signature_nid(req), NID_ecdsa_with_SHA256)
        XCTAssertEqual(EVP_PKEY_eq(X509_REQ_get0_pubkey(req), key.key), 1)
        let reqPEM = String(decoding: try key.certificateRequestPEM(commonName: "dev1.example"), as: UTF8.self)
        XCTAssertTrue(reqPEM.hasPrefix("-----BEGIN CERTIFICATE REQUEST-----\n"))
        XCTAssertThrowsError(try key.certificateRequest(commonName: ""))
        XCTAssertThrowsError(try key.certificateRequest(commonName: String(repeating: "a", count: 254)))
        XCTAssertNotEqual(try EnrollmentKey().privateKeyPEM(), try key.privateKeyPEM())

        // The openssl CLI agrees: the request verifies, CN as asked.
        let dir = NSTemporaryDirectory() + "rh-est-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(der).write(to: URL(fileURLWithPath: dir + "/r.der"))
        let (status, out) = try openssl(["req", "-inform", "DER", "-in", dir + "/r.der", "-verify", "-noout", "-subject"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("CN = dev1.example") || out.contains("CN=dev1.example"), out)
    }

    func testCertificatesOfAPKCS7FromOpenSSL() throws {
        let pki = try TestPKI.make(leaves: ["dev1.example"])
        let (s1, o1) = try openssl(["crl2pkcs7", "-nocrl", "-certfile", pki.cert("dev1.example"), "-certfile", pki.caCert,
                                    "-outform", "DER", "-out", pki.dir + "/chain.p7"])
        XCTAssertEqual(s1, 0, o1)
        let p7 = Array(try Data(contentsOf: URL(fileURLWithPath: pki.dir + "/chain.p7")))
        let pem = try PKCS7Certificates.pem(der: p7)
        let leaf = try String(contentsOfFile: pki.cert("dev1.example"), encoding: .utf8)
        let ca = try String(contentsOfFile: pki.caCert, encoding: .utf8)
        XCTAssertEqual(String(decoding: pem, as: UTF8.self), leaf + ca)
        // Through a base64 body as a server sends it.
        XCTAssertEqual(try PKCS7Certificates.decode(der: ESTBody.decode(ESTBody.encode(p7))).count, 2)
        // What the agent reads to renew.
        let info = try CertificateInfo(pem: pem)
        XCTAssertEqual(info.commonName, "dev1.example")
        XCTAssertEqual(info.notAfter - info.notBefore, 2 * 86_400)
        XCTAssertLessThan(abs(info.notBefore - Int64(Date().timeIntervalSince1970)), 600)
        XCTAssertEqual(info.renewalTime(), info.notBefore + 2 * 86_400 * 667 / 1000)
        XCTAssertEqual(info.renewalTime(jitter: 10 * 86_400), info.notAfter, "never after the end")
        XCTAssertThrowsError(try CertificateInfo(pem: Array("-----BEGIN CERTIFICATE-----\nAAAA\n".utf8)))
        XCTAssertEqual(ERR_peek_error(), 0)
        // The leaf and its key make an identity.
        XCTAssertNoThrow(try TLSIdentity(certificatePEM: pem, keyPEM: Array(try Data(contentsOf: URL(fileURLWithPath: pki.key("dev1.example"))))))
        // Hostile: cut, extended, not a SignedData.
        XCTAssertThrowsError(try PKCS7Certificates.decode(der: Array(p7.dropLast(10))))
        XCTAssertEqual(try? PKCS7Certificates.decode(der: p7 + [1]), nil)
        XCTAssertThrowsError(try PKCS7Certificates.decode(der: [0x30, 0x03, 0x06, 0x01, 0x00]))
        XCTAssertEqual(ERR_peek_error(), 0)
    }

    private func openssl(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
