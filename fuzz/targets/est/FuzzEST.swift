// fuzz-est: what a peer sends over EST (RFC 7030), on arbitrary bytes. The first
// byte picks what the rest is fed to:
//   0  ESTBody.decode (base64 body, limit 4 KiB), then CertificateRequest(der:)
//      on what it decodes;
//   1  CertificateRequest(der:) on the raw bytes, and checkReenrollment against a
//      fixed current certificate;
//   2  PKCS7Certificates.decode / PKCS7CertsOnly on the raw bytes;
//   3  PKCS7CertsOnly.decode(estBody:) (base64 of a PKCS#7).
// Invariants: no crash, no hang (libFuzzer's -timeout), bounded memory; OpenSSL's
// error queue is left empty; a decoded body is at most 3/4 of the input and
// encodes back to something that decodes to it; an error's offset is within the
// input; a request accepted has an allowed key type, a CN of 1...256 printable
// bytes, fingerprint = SHA-256(publicKeyDER), and parses again from its own DER
// to the same fields; decoded certificates are 1...16, each one DER certificate
// with nothing after it, and PKCS7CertsOnly.encode of them decodes to the same list.
import Bytes
import COpenSSL
import FleetPKI
import TLS

/// The certificate a re-enrolling device holds: made once per process.
let current: IssuedCertificate = {
    guard let ca = try? CertificateAuthority(ephemeralName: "fuzz CA"),
          let key = try? EnrollmentKey(), let der = try? key.certificateRequest(commonName: "dev1.example"),
          let req = try? CertificateRequest(der: der),
          let issued = try? ca.issueDevice(request: req, name: "dev1.example") else { fatalError("fixed certificate") }
    return issued
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEST(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard size > 0, let data else { return 0 }
    let rest = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 4 {
    case 0:
        if let der = checkBody(rest) { checkRequest(der) }
    case 1: checkRequest(rest)
    case 2: checkPKCS7(rest)
    default:
        do throws(ESTError) {
            let certs = try PKCS7CertsOnly.decode(estBody: rest, limit: 4096)
            checkCertificates(certs)
        } catch {
            checkError(error, input: rest)
        }
    }
    guard ERR_peek_error() == 0 else { fail("OpenSSL error queue not empty") }
    return 0
}

func fail(_ what: String) -> Never {
    fatalError("fuzz-est invariant broken: " + what)
}

func checkError(_ e: ESTError, input: [UInt8]) {
    if case .notBase64(let offset) = e, offset > input.count { fail("error offset beyond the input") }
    _ = e.description
}

func checkBody(_ body: [UInt8]) -> [UInt8]? {
    let der: [UInt8]
    do throws(ESTError) {
        der = try ESTBody.decode(body, limit: 4096)
    } catch {
        checkError(error, input: body)
        if case .tooLarge = error, body.count <= 4096 { fail("size error for a small body") }
        return nil
    }
    guard !der.isEmpty, der.count <= body.count * 3 / 4 else { fail("decoded size") }
    guard (try? ESTBody.decode(ESTBody.encode(der), limit: 1 << 20)) == der else { fail("encode-decode") }
    return der
}

func checkRequest(_ der: [UInt8]) {
    let req: CertificateRequest
    do throws(ESTError) {
        req = try CertificateRequest(der: der)
    } catch {
        _ = error.description
        return
    }
    switch req.keyType {
    case .ecP256, .ecP384, .ed25519: break
    case .rsa(let bits): if bits < 2048 || bits > 8192 { fail("RSA size") }
    }
    let cn = req.commonName.utf8
    guard (1...256).contains(cn.count), !req.commonName.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
        fail("common name")
    }
    guard req.publicKeyFingerprint == sha256(req.publicKeyDER) else { fail("fingerprint") }
    guard let again = try? CertificateRequest(der: req.der), again.commonName == req.commonName,
          again.publicKeyDER == req.publicKeyDER, again.keyType == req.keyType else { fail("parse again") }
    do throws(ESTError) {
        try req.checkReenrollment(currentCertificateDER: current.certificateDER)
        guard req.commonName == "dev1.example" else { fail("re-enrollment with another CN") }
    } catch {
        _ = error.description
    }
}

func checkPKCS7(_ der: [UInt8]) {
    do throws(ESTError) {
        checkCertificates(try PKCS7Certificates.decode(der: der))
    } catch {
        _ = error.description
    }
}

func checkCertificates(_ certs: [[UInt8]]) {
    guard (1...PKCS7Certificates.maxCertificates).contains(certs.count) else { fail("certificate count") }
    for c in certs {
        let ok: Bool = c.withUnsafeBufferPointer { b in
            guard let base = b.baseAddress else { return false }
            var p: UnsafePointer<UInt8>? = base
            guard let x = d2i_X509(nil, &p, b.count) else { return false }
            X509_free(x)
            return p.map { $0 - base } == b.count
        }
        ERR_clear_error()
        guard ok else { fail("a decoded certificate does not parse alone") }
    }
    guard let again = try? PKCS7CertsOnly.encode(certificatesDER: certs) else {
        // A certificate OpenSSL decodes but cannot re-encode would be refused here:
        // PKCS7CertsOnly only encodes what it parses.
        ERR_clear_error()
        return
    }
    guard (try? PKCS7CertsOnly.decode(der: again)) == certs else { fail("encode-decode of the certificates") }
    guard (try? PKCS7Certificates.pem(der: again)) != nil else { fail("pem") }
    ERR_clear_error()
}
