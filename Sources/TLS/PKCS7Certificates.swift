// PKCS7Certificates: the certificates of a certs-only PKCS#7 (RFC 7030 §4.1.3,
// §4.2.3), what EST's /cacerts and /simpleenroll answer, read with OpenSSL's
// d2i_PKCS7: one SignedData, nothing after it, 1 to 16 certificates. Signer infos
// are ignored (a certs-only reply has none; nothing here is trusted before the
// certificates are verified by the TLS handshake that uses them).
import COpenSSL

/// The certificates of a certs-only PKCS#7 (RFC 7030 §4.1.3, §4.2.3): what
/// /cacerts and /simpleenroll answer.
public enum PKCS7Certificates {
    /// At most this many certificates are read.
    public static let maxCertificates = 16

    /// The certificates' DER, in the order the SignedData lists them. `der` must be
    /// one SignedData with at least one certificate and nothing after it.
    public static func decode(der: [UInt8]) throws(ESTError) -> [[UInt8]] {
        try certificates(der) { x in
            let len = i2d_X509(x, nil)
            guard len > 0 else { return nil }
            var one = [UInt8](repeating: 0, count: Int(len))
            let written = one.withUnsafeMutableBufferPointer { p -> Int32 in
                var o: UnsafeMutablePointer<UInt8>? = p.baseAddress
                return i2d_X509(x, &o)
            }
            return written == len ? one : nil
        }
    }

    /// The certificates as one PEM bundle (leaf first when the server lists it
    /// first, as ours does): what a certificate file holds.
    public static func pem(der: [UInt8]) throws(ESTError) -> [UInt8] {
        var out: [UInt8] = []
        for one in try certificates(der, { x in try? PEMBuffer.write(secure: false, "PEM_write_bio_X509") { PEM_write_bio_X509($0, x) } }) {
            out += one
        }
        return out
    }

    /// The agent's reading, in one C call: at most `max` certificates in the
    /// SignedData's order as one PEM text, self-signed ones (a root: the peer has
    /// it) left out when `dropSelfSigned`; and how many. Nil when `der` is not a
    /// certs-only PKCS#7 of 1 to 16 certificates with nothing after it.
    public static func pem(der: [UInt8], max: Int, dropSelfSigned: Bool) -> (pem: [UInt8], count: Int)? {
        guard let bio = BIO_new(BIO_s_mem()) else { return nil }
        defer { BIO_free(bio) }
        let n = der.withUnsafeBufferPointer { rh_pkcs7_certs_to_pem($0.baseAddress, $0.count, Int32(max), dropSelfSigned ? 1 : 0, bio) }
        guard n >= 0 else { return nil }
        var out = [UInt8](repeating: 0, count: Int(rh_BIO_pending(bio)))
        if !out.isEmpty { _ = out.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32($0.count)) } }
        return (out, Int(n))
    }

    /// `convert` applied to each certificate of the SignedData in `der` (nil: `.malformed`).
    static func certificates(_ der: [UInt8], _ convert: (OpaquePointer) -> [UInt8]?) throws(ESTError) -> [[UInt8]] {
        guard der.count <= 1 << 20 else { throw .tooLarge(limit: 1 << 20) }
        let (p7, used) = der.withUnsafeBufferPointer { b -> (UnsafeMutablePointer<PKCS7>?, Int) in
            guard let base = b.baseAddress else { return (nil, 0) }
            var p: UnsafePointer<UInt8>? = base
            let r = d2i_PKCS7(nil, &p, b.count)
            return (r, p.map { $0 - base } ?? 0)
        }
        ERR_clear_error()
        guard let p7 else { throw .malformed("PKCS#7") }
        defer { PKCS7_free(p7) }
        guard used == der.count else { throw .trailingBytes(der.count - used) }
        guard let certs = rh_PKCS7_signed_certs(p7) else { throw .notCertsOnly("no SignedData with certificates") }
        let n = Int(rh_sk_X509_num(certs))
        guard n > 0 else { throw .notCertsOnly("no certificate") }
        guard n <= maxCertificates else { throw .tooManyCertificates(limit: maxCertificates) }
        var out: [[UInt8]] = []
        for i in 0..<n {
            guard let x = rh_sk_X509_value(certs, Int32(i)), let one = convert(x) else {
                ERR_clear_error()
                throw .malformed("certificate")
            }
            out.append(one)
        }
        return out
    }
}
