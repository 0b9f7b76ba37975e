// Claim certificates (issue 17), as AWS IoT fleet provisioning's claims:
// `pki claim DIR NAME --devices GLOB [--expires 30d]` makes one certificate and key
// that a factory bakes into many boards. On the device listener's EST port it
// authorizes /simpleenroll of a device name matching GLOB, and nothing else.
//
// Why a claim can never be a device or a user, by construction: it is signed by the
// fleet's issuing CA (so the device listener's TLS handshake verifies it, the CRL
// covers it and `pki revoke` works), but its subject is OU=reversehttp-claim,
// CN=claim:NAME. A ':' is in no device name (a hostname) and in no user name
// ([A-Za-z0-9._@-]), so the device identity (DeviceIdentity.admit: CN must be a
// hostname) and the user principal (OU=reversehttp-user and a user-name CN) refuse
// it before any flag is read; both also refuse the claim OU explicitly, to say so
// in the log. It has no subjectAltName. A separate claim CA was not chosen: the
// TLS layer would have to trust it on the device listener anyway (the claim is a
// TLS client certificate there), which puts it in the very store the device
// verifier uses, and it would need a CRL of its own.
//
// What a claim allows is the server's record, not the certificate's text:
// DIR/claims.txt, one line per claim: "SERIAL<TAB>NAME<TAB>NOTAFTER<TAB>GLOB"
// (Unix seconds; lines starting with '#' ignored). The serial also goes into
// DIR/issued.txt as "claim:NAME", so `pki revoke DIR --serial HEX` names it and
// `pki revoke-claim DIR NAME` revokes every claim of NAME (revoked.txt, crl.pem).
import COpenSSL
import TLS
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One claim as DIR/claims.txt records it.
public struct ClaimRecord: Equatable, Sendable {
    /// Lower-case hex, as in issued.txt.
    public let serial: String
    public let name: String
    /// Unix seconds: the certificate's notAfter.
    public let notAfter: Int64
    /// The device names it may enroll (EnrollmentBinding's syntax: a name, or globs).
    public let devices: String
}

/// What the gateway reads from a verified client certificate (DER): its serial,
/// subject and validity. nil for bytes that are not a certificate.
public struct PresentedCertificate: Equatable, Sendable {
    public let serial: String
    /// The first CN ("" without one).
    public let commonName: String
    public let organizationalUnits: [String]
    public let notBefore: Int64
    public let notAfter: Int64

    public init?(der: [UInt8]) {
        let parsed: OpaquePointer? = der.withUnsafeBufferPointer { b in
            var p: UnsafePointer<UInt8>? = b.baseAddress
            return d2i_X509(nil, &p, b.count)
        }
        guard let cert = parsed else {
            ERR_clear_error()
            return nil
        }
        defer { X509_free(cert) }
        guard let serial = try? PKI.serialHex(cert, what: "certificate"),
              let from = CertificateInfo.unixTime(X509_get0_notBefore(cert)),
              let to = CertificateInfo.unixTime(X509_get0_notAfter(cert)), let subject = X509_get_subject_name(cert) else {
            ERR_clear_error()
            return nil
        }
        self.serial = serial
        notBefore = from
        notAfter = to
        commonName = PresentedCertificate.entries(subject, NID_commonName).first ?? ""
        organizationalUnits = PresentedCertificate.entries(subject, NID_organizationalUnitName)
    }

    public var isClaim: Bool { organizationalUnits.contains(PKI.claimMarker) }

    /// The claim name of a claim certificate's CN ("claim:NAME"), nil otherwise.
    public var claimName: String? {
        guard isClaim, commonName.hasPrefix(PKI.claimPrefix) else { return nil }
        let name = String(commonName.dropFirst(PKI.claimPrefix.count))
        return PKI.isValidClaimName(name) ? name : nil
    }

    private static func entries(_ name: OpaquePointer, _ nid: Int32) -> [String] {
        var out: [String] = []
        var idx = X509_NAME_get_index_by_NID(name, nid, -1)
        while idx >= 0 && out.count < 16 {
            if let entry = X509_NAME_get_entry(name, idx), let data = X509_NAME_ENTRY_get_data(entry) {
                var utf8: UnsafeMutablePointer<UInt8>?
                let len = ASN1_STRING_to_UTF8(&utf8, data)
                if len >= 0, let utf8 {
                    out.append(String(decoding: UnsafeBufferPointer(start: utf8, count: Int(len)), as: UTF8.self))
                    rh_OPENSSL_free(utf8)
                }
            }
            idx = X509_NAME_get_index_by_NID(name, nid, idx)
        }
        return out
    }
}

extension PKI {
    /// The subject OU that marks a claim certificate.
    public static let claimMarker = "reversehttp-claim"
    /// A claim's CN is "claim:NAME": no device name or user name has a ':'.
    public static let claimPrefix = "claim:"
    public static let claimsFile = "claims.txt"
    /// Most claims DIR/claims.txt may hold (a claim serves many boards: a few per factory).
    public static let maxClaims = 1_000

    /// A claim's name: as a user name ([A-Za-z0-9._@-]{1,64}), also a file name.
    public static func isValidClaimName(_ s: String) -> Bool { isValidUserName(s) }

    /// Issues claim NAME for device names `devices` (checked by the caller as an
    /// EnrollmentBinding: FleetPKI does not parse globs; here only: no space, tab or
    /// newline, at most 1024 bytes), valid `lifetimeSeconds`: writes OUT/NAME.crt
    /// (the certificate, then the issuing CA when there is one; 0644) and OUT/NAME.key
    /// (0600), refusing to replace them without `force`, and records the claim in
    /// DIR/claims.txt and DIR/issued.txt ("claim:NAME").
    @discardableResult
    public static func issueClaim(directory: String, name: String, devices: String, lifetimeSeconds: Int64,
                                  outDirectory: String = ".", force: Bool = false) throws(PKIError) -> ClaimRecord {
        guard isValidClaimName(name) else {
            throw .invalidArgument("invalid claim name \"\(name)\": use 1 to 64 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit")
        }
        guard !devices.isEmpty, devices.utf8.count <= 1024,
              !devices.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7f }) else {
            throw .invalidArgument("--devices wants a device name or comma-separated globs without spaces, e.g. dev-*")
        }
        guard lifetimeSeconds >= 60, lifetimeSeconds <= Int64(maxDays) * 86_400 else {
            throw .invalidArgument("a claim must expire between 1 minute and \(maxDays) days from now")
        }
        let dir = normalized(directory)
        let out = normalized(outDirectory)
        let (caCert, caKey) = try loadCA(dir)
        defer { X509_free(caCert); EVP_PKEY_free(caKey) }
        let keyPath = join(out, name + ".key"), certPath = join(out, name + ".crt")
        if !force {
            for path in [keyPath, certPath] where try exists(path) { throw .alreadyExists(path) }
        }
        let lock = try lockDirectory(dir)
        defer { close(lock) }
        let existing = try readClaims(dir)
        guard existing.count < maxClaims else {
            throw .invalidArgument("\(join(dir, claimsFile)) holds \(maxClaims) claims already: remove expired ones")
        }

        let key = try generateKey()
        defer { EVP_PKEY_free(key) }
        let cert = try makeCertificate(commonName: claimPrefix + name, organizationalUnit: claimMarker, subjectKey: key,
                                       issuer: (caCert, caKey), days: 1, notBeforeOffsetDays: 0,
                                       validitySeconds: Int(lifetimeSeconds), extensions: claimExtensions())
        defer { X509_free(cert) }
        var pemKey = try keyPEM(key)
        defer { wipe(&pemKey) }
        let pemCert = try certificatePEM(cert) + chainAfterLeaf(caCert)
        let serial = try serialHex(cert, what: name)
        guard let notAfter = CertificateInfo.unixTime(X509_get0_notAfter(cert)) else { throw failure("read notAfter") }
        let record = ClaimRecord(serial: serial, name: name, notAfter: notAfter, devices: devices)

        // The record first: a claim on a board that the gateway does not know would be useless.
        let claimsPath = join(dir, claimsFile)
        var contents = (try? readFile(claimsPath)) ?? Array("# claim certificates: serial, name, notAfter (Unix seconds), device names\n".utf8)
        if let last = contents.last, last != UInt8(ascii: "\n") { contents.append(UInt8(ascii: "\n")) }
        contents += Array((serial + "\t" + name + "\t" + String(notAfter) + "\t" + devices + "\n").utf8)
        try writeFile(claimsPath, contents, mode: certMode, replace: true)
        let indexPath = join(dir, "issued.txt")
        try appendEntries(indexPath, [RevokedEntry(serial: serial, name: "claim:" + name)], to: readRevocationList(indexPath).bytes)

        try makeParents(out)
        try writeFile(keyPath, pemKey, mode: keyMode, replace: force)
        do throws(PKIError) {
            try writeFile(certPath, pemCert, mode: certMode, replace: true)
        } catch {
            if !force { unlink(keyPath) }
            throw error
        }
        return record
    }

    static func claimExtensions() -> [(Int32, String)] {
        [
            (NID_basic_constraints, "CA:FALSE"),
            (NID_key_usage, "critical,digitalSignature"),
            // clientAuth: the device listener verifies TLS client certificates for that purpose.
            (NID_ext_key_usage, "clientAuth"),
            (NID_subject_key_identifier, "hash"),
            (NID_authority_key_identifier, "keyid:always"),
        ]
    }

    /// Every claim of DIR/claims.txt (empty when it does not exist).
    public static func claims(directory: String) throws(PKIError) -> [ClaimRecord] {
        try readClaims(normalized(directory))
    }

    /// The claim with serial `serial` (lower-case hex), nil when DIR/claims.txt has none.
    public static func claim(directory: String, serial: String) throws(PKIError) -> ClaimRecord? {
        try readClaims(normalized(directory)).first { $0.serial == serial }
    }

    /// Whether DIR/revoked.txt lists `serial`: what the gateway checks besides the CRL
    /// (which it reads on reload only), so that `pki revoke` takes effect at once.
    public static func isRevoked(directory: String, serial: String) throws(PKIError) -> Bool {
        try readRevocationList(join(normalized(directory), "revoked.txt")).entries.contains { $0.serial == serial }
    }

    /// Revokes every claim named NAME (claims.txt) and rewrites DIR/crl.pem; returns the
    /// serials newly revoked; `.notFound` when there is no claim of that name.
    @discardableResult
    public static func revokeClaim(directory: String, name: String, crlDays: Int = 30) throws(PKIError) -> [String] {
        guard isValidClaimName(name) else { throw .invalidArgument("invalid claim name \"\(name)\"") }
        return try revokeEvery(directory: directory, label: "claim:" + name, crlDays: crlDays,
                               missing: claimsFile + " (claim " + name + ")") { dir, _ throws(PKIError) in
            try readClaims(dir).filter { $0.name == name }.map(\.serial)
        }
    }

    static func readClaims(_ dir: String) throws(PKIError) -> [ClaimRecord] {
        let path = join(dir, claimsFile)
        let bytes: [UInt8]
        do throws(PKIError) {
            bytes = try readFile(path, limit: 4 << 20)
        } catch {
            if case .io(_, let code) = error, code == ENOENT { return [] }
            throw error
        }
        var out: [ClaimRecord] = []
        for (index, raw) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            var line = String(decoding: raw, as: UTF8.self)
            if line.hasSuffix("\r") { line.removeLast() }
            if line.isEmpty || line.hasPrefix("#") { continue }
            let f = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard f.count == 4, let serial = normalizedSerial(f[0]), isValidClaimName(String(f[1])),
                  let notAfter = Int64(f[2]), !f[3].isEmpty else {
                throw .malformed(path, reason: "line \(index + 1): expected serial, name, notAfter and device names, tab-separated")
            }
            out.append(ClaimRecord(serial: serial, name: String(f[1]), notAfter: notAfter, devices: String(f[3])))
        }
        return out
    }
}
