// CertificateChain: what an enrolled agent writes as its certificate file: the
// leaf EST issued, then the CA certificates /cacerts listed except a self-signed
// root (the peer has it; sending it only costs bytes), all PEM. No I/O.
import COpenSSL

public enum CertificateChain {
    /// `leaf` and the non-self-signed certificates of `cas` (DER each), as PEM.
    public static func pem(leaf: [UInt8], cas: [[UInt8]]) throws(ESTError) -> [UInt8] {
        var out = try convert(leaf, dropSelfSigned: false)
        for c in cas { out += try convert(c, dropSelfSigned: true) }
        return out
    }

    static func convert(_ der: [UInt8], dropSelfSigned: Bool) throws(ESTError) -> [UInt8] {
        let x: OpaquePointer? = der.withUnsafeBufferPointer { b in
            var p: UnsafePointer<UInt8>? = b.baseAddress
            return d2i_X509(nil, &p, b.count)
        }
        guard let x else {
            ERR_clear_error()
            throw .malformed("certificate")
        }
        defer { X509_free(x) }
        if dropSelfSigned && X509_check_issued(x, x) == X509_V_OK { return [] }
        guard let pem = try? PEMBuffer.write(secure: false, "PEM_write_bio_X509", { PEM_write_bio_X509($0, x) }) else {
            ERR_clear_error()
            throw .malformed("certificate")
        }
        return pem
    }
}
