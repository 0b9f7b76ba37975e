// User certificates: `pki issue-user DIR NAME`. A person (or a script) proves who
// it is to the gateway's HTTPS public listener with a client certificate of the
// fleet CA whose subject carries OU=reversehttp-user. The device listener refuses
// such a certificate, and the public listener ignores a device's: one CA, two roles
// that cannot stand in for each other.
//
// DIR/issued.txt records a user's serial as "SERIAL<TAB>user:NAME", so that device
// names and user names never meet there (`pki revoke DIR DEVICE` never revokes a
// user's certificate); `pki revoke-user DIR NAME` revokes a user's, and
// `pki revoke DIR --serial HEX` either.
import COpenSSL
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension PKI {
    /// The subject OU that marks a user's certificate.
    public static let userMarker = "reversehttp-user"

    /// A user name: [A-Za-z0-9._@-]{1,64}, starting with a letter or digit (not a
    /// hidden file, not an option). Case-sensitive, as the certificate's CN.
    public static func isValidUserName(_ s: String) -> Bool {
        let b = Array(s.utf8)
        guard (1...64).contains(b.count), isAlphanumeric(b[0]) else { return false }
        return b.allSatisfy { isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_")
            || $0 == UInt8(ascii: "@") || $0 == UInt8(ascii: "-") }
    }

    static func isAlphanumeric(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
    }

    /// Issues a user (client) certificate signed by DIR/ca.crt + DIR/ca.key:
    /// DIR/users/NAME.crt (0644) and NAME.key (0600); subject OU=reversehttp-user,
    /// CN=NAME; EKU clientAuth; no subject alternative name. Its serial goes into
    /// DIR/issued.txt as "user:NAME". Without `force`, refuses when NAME has files or
    /// an unrevoked serial; with `force`, revokes every earlier serial of NAME.
    @discardableResult
    public static func issueUser(directory: String, name: String, days: Int = 365, force: Bool = false,
                                 crlDays: Int = 30) throws(PKIError) -> Issued {
        guard isValidUserName(name) else { throw .invalidUserName(name) }
        try checkDays(days, "days")
        try checkDays(crlDays, "CRL days")
        let dir = normalized(directory)
        let (caCert, caKey) = try loadCA(dir)
        defer { X509_free(caCert); EVP_PKEY_free(caKey) }
        let lock = try lockDirectory(dir)
        defer { close(lock) }

        let users = join(dir, "users")
        let files = [".key", ".crt"].map { users + "/" + name + $0 }
        if !force {
            for path in files where try exists(path) { throw .alreadyExists(path) }
            let revokedSerials = try readRevocationList(join(dir, "revoked.txt")).entries.map(\.serial)
            let live = try userSerials(dir, name: name, caCert: caCert).filter { !revokedSerials.contains($0) }
            if !live.isEmpty { throw .stillIssued("user:" + name, serials: live) }
        }
        var revoked: [String] = []
        if force {
            let previous = try userSerials(dir, name: name, caCert: caCert)
            revoked = try revokeLocked(dir: dir, previous.map { RevokedEntry(serial: $0, name: "user:" + name) },
                                       caCert: caCert, caKey: caKey, days: crlDays, writeUnchanged: false)
        }
        let serial = try issueLeaf(dir: dir, ca: (caCert, caKey), subdirectory: "users", name: name,
                                   organizationalUnit: userMarker, extensions: userExtensions(),
                                   days: days, notBeforeOffsetDays: 0, writeBundle: false, force: force)
        let indexPath = join(dir, "issued.txt")
        try appendEntries(indexPath, [RevokedEntry(serial: serial, name: "user:" + name)],
                          to: readRevocationList(indexPath).bytes)
        return Issued(serial: serial, revoked: revoked)
    }

    /// Revokes every certificate issued to user NAME (issued.txt's "user:NAME" serials
    /// and DIR/users/NAME.crt) and rewrites DIR/crl.pem. Returns the serials newly
    /// revoked; `.notFound` when NAME was never issued a certificate.
    @discardableResult
    public static func revokeUser(directory: String, name: String, crlDays: Int = 30) throws(PKIError) -> [String] {
        guard isValidUserName(name) else { throw .invalidUserName(name) }
        return try revokeEvery(directory: directory, label: "user:" + name, crlDays: crlDays,
                               missing: "users/" + name + ".crt") { dir, caCert throws(PKIError) in
            try userSerials(dir, name: name, caCert: caCert)
        }
    }

    static func userExtensions() -> [(Int32, String)] {
        [
            (NID_basic_constraints, "CA:FALSE"),
            (NID_key_usage, "critical,digitalSignature"),
            (NID_ext_key_usage, "clientAuth"),
            (NID_subject_key_identifier, "hash"),
            (NID_authority_key_identifier, "keyid:always"),
        ]
    }

    /// Every serial issued to user `name`: issued.txt's "user:NAME" entries and DIR/users/NAME.crt.
    static func userSerials(_ dir: String, name: String, caCert: OpaquePointer) throws(PKIError) -> [String] {
        var serials = try readRevocationList(join(dir, "issued.txt")).entries
            .filter { $0.name == "user:" + name }.map(\.serial)
        let path = join(dir, "users") + "/" + name + ".crt"
        if try exists(path) {
            let serial = try deviceSerial(path, caCert: caCert, dir: dir)
            if !serials.contains(serial) { serials.append(serial) }
        }
        return serials
    }
}
