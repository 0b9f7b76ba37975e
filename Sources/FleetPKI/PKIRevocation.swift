// Certificate revocation for the fleet PKI: DIR/revoked.txt (the list the
// operator keeps) and DIR/crl.pem (an X.509 v2 CRL signed by the fleet CA,
// made from that list with the OpenSSL 3 C API).
//
//   revoked.txt   one revoked certificate a line: lowercase hex serial, a tab and
//                 the device name. Blank lines and lines starting with '#' are
//                 ignored (and kept when a line is added). 0644.
//   issued.txt    every device serial issued, with its name (PKIDeviceNames.swift):
//                 what `revoke NAME` revokes.
//   crlnumber     the decimal number of the last CRL written. 0644.
//   crl.pem       the CRL. lastUpdate now - 5 min, nextUpdate now + crlDays;
//                 extensions cRLNumber and authorityKeyIdentifier; each entry's
//                 revocationDate is kept from the previous crl.pem when that one
//                 was signed by the same CA, else it is the time of writing. 0644.
//
// Commands that read and rewrite these files hold an exclusive flock on DIR, so
// two concurrent revocations cannot lose an entry.
import COpenSSL
import TLS
#if os(Linux)
import Synchronization
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension PKI {
    /// One line of revoked.txt: a normalized serial (lowercase hex, no leading zero
    /// byte) and the device name written next to it (may be empty).
    struct RevokedEntry: Equatable, Sendable {
        var serial: String
        var name: String
    }

    /// Revokes device NAME (case-insensitive): adds every serial issued to it (DIR/issued.txt
    /// and the certificates DIR/devices holds for it in any case) to DIR/revoked.txt, unless
    /// listed already, and rewrites DIR/crl.pem with every serial of revoked.txt and a CRL
    /// number one higher than the last (DIR/crlnumber). Returns the serials newly revoked.
    /// Throws `.missingCA` without a fleet CA, `.notFound` when nothing was issued to NAME,
    /// `.invalidArgument` for a certificate of another CA.
    @discardableResult
    public static func revoke(directory: String, name: String, crlDays: Int = 30) throws(PKIError) -> [String] {
        guard let key = canonicalDeviceName(name) else { throw .invalidName(name) }
        return try revokeEvery(directory: directory, label: key, crlDays: crlDays,
                               missing: "devices/" + key + ".crt") { dir, caCert throws(PKIError) in
            try issuedSerials(dir, name: key, caCert: caCert)
        }
    }

    /// Revokes every serial `serials` finds (devices' or users'), under the directory's
    /// lock with the CA loaded, listed as `label`; `.notFound(DIR/missing)` when none.
    static func revokeEvery(directory: String, label: String, crlDays: Int, missing: String,
                            serials find: (String, OpaquePointer) throws(PKIError) -> [String]) throws(PKIError) -> [String] {
        try checkDays(crlDays, "CRL days")
        let dir = normalized(directory)
        let (caCert, caKey) = try loadCA(dir)
        defer { X509_free(caCert); EVP_PKEY_free(caKey) }
        let lock = try lockDirectory(dir)
        defer { close(lock) }
        let serials = try find(dir, caCert)
        guard !serials.isEmpty else { throw .notFound(join(dir, missing)) }
        return try revokeLocked(dir: dir, serials.map { RevokedEntry(serial: $0, name: label) },
                                caCert: caCert, caKey: caKey, days: crlDays, writeUnchanged: true)
    }

    /// Revokes the certificate with serial number `serial` (hex, any case, leading zeros
    /// allowed), whatever its name: for a certificate whose files are gone. Returns the
    /// device name DIR/issued.txt records for it (nil when unknown) and whether it was
    /// newly revoked.
    @discardableResult
    public static func revoke(directory: String, serial text: String,
                              crlDays: Int = 30) throws(PKIError) -> (name: String?, newlyRevoked: Bool) {
        // Also as `openssl x509 -text` prints it: "4a:3f:...".
        guard let serial = normalizedSerial(text.split(separator: ":").joined()) else {
            throw .invalidArgument("--serial wants a certificate serial number in hex (at most 20 bytes, "
                + "as `openssl x509 -serial` prints it), got \"\(text)\"")
        }
        try checkDays(crlDays, "CRL days")
        let dir = normalized(directory)
        let (caCert, caKey) = try loadCA(dir)
        defer { X509_free(caCert); EVP_PKEY_free(caKey) }
        let lock = try lockDirectory(dir)
        defer { close(lock) }
        let name = try issuedName(dir, serial: serial)
        let added = try revokeLocked(dir: dir, [RevokedEntry(serial: serial, name: name ?? "")],
                                     caCert: caCert, caKey: caKey, days: crlDays, writeUnchanged: true)
        return (name, !added.isEmpty)
    }

    /// Adds `entries` not yet in DIR/revoked.txt to it and writes DIR/crl.pem (also when
    /// nothing was added, if `writeUnchanged`). The caller holds the directory lock.
    /// Returns the serials added.
    static func revokeLocked(dir: String, _ entries: [RevokedEntry], caCert: OpaquePointer, caKey: OpaquePointer,
                             days: Int, writeUnchanged: Bool) throws(PKIError) -> [String] {
        let listPath = join(dir, "revoked.txt")
        let (existing, bytes) = try readRevocationList(listPath)
        var added: [RevokedEntry] = []
        for entry in entries where !existing.contains(where: { $0.serial == entry.serial })
            && !added.contains(where: { $0.serial == entry.serial }) {
            added.append(entry)
        }
        guard !added.isEmpty || writeUnchanged else { return [] }
        try appendEntries(listPath, added, to: bytes)
        try signAndWriteCRL(dir: dir, entries: existing + added, caCert: caCert, caKey: caKey, days: days)
        return added.map(\.serial)
    }

    /// Writes DIR/crl.pem again from DIR/revoked.txt (an empty CRL when nothing is
    /// revoked, or revoked.txt does not exist), with the next CRL number: for renewing
    /// nextUpdate before it passes.
    public static func writeCRL(directory: String, crlDays: Int = 30) throws(PKIError) {
        try checkDays(crlDays, "CRL days")
        let dir = normalized(directory)
        let (caCert, caKey) = try loadCA(dir)
        defer { X509_free(caCert); EVP_PKEY_free(caKey) }
        let lock = try lockDirectory(dir)
        defer { close(lock) }
        let entries = try readRevocationList(join(dir, "revoked.txt")).entries
        try signAndWriteCRL(dir: dir, entries: entries, caCert: caCert, caKey: caKey, days: crlDays)
    }

    // MARK: - Revocation list and CRL number files

    /// An exclusive flock on DIR itself (no lock file); released by closing the descriptor.
    static func lockDirectory(_ dir: String) throws(PKIError) -> Int32 {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(dir, errno: errno) }
        while flock(fd, LOCK_EX) != 0 {
            let code = errno
            if code == EINTR { continue }
            close(fd)
            throw .io(dir, errno: code)
        }
        return fd
    }

    /// The serial of the device certificate at `path`, normalized; the certificate
    /// must have been signed by `caCert`.
    static func deviceSerial(_ path: String, caCert: OpaquePointer, dir: String) throws(PKIError) -> String {
        let bytes: [UInt8]
        do throws(PKIError) {
            bytes = try readFile(path)
        } catch {
            if case .io(_, let code) = error, code == ENOENT || code == ENOTDIR { throw .notFound(path) }
            throw error
        }
        let cert: OpaquePointer? = bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_X509(bio, nil, nil, nil)
        }
        guard let cert else { throw failure("read certificate \(path)") }
        defer { X509_free(cert) }
        guard X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(caCert)) == 0,
              X509_verify(cert, X509_get0_pubkey(caCert)) == 1 else {
            ERR_clear_error()
            throw .invalidArgument("\(path) was not issued by the fleet CA in \(dir) "
                + "(it is not trusted there, so there is nothing to revoke)")
        }
        return try serialHex(cert, what: path)
    }

    /// The serial of `cert`, normalized (`what` names it in errors).
    static func serialHex(_ cert: OpaquePointer, what path: String) throws(PKIError) -> String {
        guard let bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nil) else {
            throw failure("read the serial number of \(path)")
        }
        defer { BN_free(bn) }
        guard BN_is_negative(bn) == 0, let hex = BN_bn2hex(bn) else {
            throw .malformed(path, reason: "the certificate has a negative serial number")
        }
        defer { rh_OPENSSL_free(hex) }
        guard let serial = normalizedSerial(String(cString: hex)) else {
            throw .malformed(path, reason: "the serial number is longer than 20 bytes")
        }
        return serial
    }

    /// Lowercase hex without leading zero bytes ("00" for zero); nil unless `text`
    /// is 1...40 significant hex digits (RFC 5280: at most 20 octets).
    static func normalizedSerial<S: StringProtocol>(_ text: S) -> String? {
        var digits = ""
        for c in text.unicodeScalars {
            switch c {
            case "0"..."9", "a"..."f": digits.unicodeScalars.append(c)
            case "A"..."F": digits.unicodeScalars.append(Unicode.Scalar(c.value + 0x20)!)
            default: return nil
            }
        }
        guard !digits.isEmpty else { return nil }
        while digits.hasPrefix("0") { digits.removeFirst() }
        if digits.count % 2 == 1 { digits = "0" + digits }
        guard digits.count <= 40 else { return nil }
        return digits.isEmpty ? "00" : digits
    }

    /// The entries of revoked.txt (duplicates removed, first name kept) and its raw
    /// bytes; both empty when it does not exist.
    static func readRevocationList(_ path: String) throws(PKIError) -> (entries: [RevokedEntry], bytes: [UInt8]) {
        let stamp = FileStamp(path)  // before reading (FileStamp.swift)
        if let stamp, let hit = RevocationListCache.lookup(path, stamp) { return hit }
        let list = try parseRevocationList(path)
        if let stamp { RevocationListCache.store(path, stamp, list) }
        return list
    }

    static func parseRevocationList(_ path: String) throws(PKIError) -> (entries: [RevokedEntry], bytes: [UInt8]) {
        let bytes: [UInt8]
        do throws(PKIError) {
            bytes = try readFile(path)
        } catch {
            if case .io(_, let code) = error, code == ENOENT { return ([], []) }
            throw error
        }
        var entries: [RevokedEntry] = []
        var seen = Set<String>()
        for (index, raw) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            var line = String(decoding: raw, as: UTF8.self)
            if line.hasSuffix("\r") { line.removeLast() }
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let field = trimmed.prefix { $0 != "\t" && $0 != " " }
            guard let serial = normalizedSerial(field) else {
                throw .malformed(path, reason: "line \(index + 1): expected a hex serial number "
                    + "(at most 20 bytes), a tab and the device name, got \"\(line)\"")
            }
            let name = trimmed.dropFirst(field.count).drop { $0 == "\t" || $0 == " " }
            if seen.insert(serial).inserted { entries.append(RevokedEntry(serial: serial, name: String(name))) }
        }
        return (entries, bytes)
    }

    /// The number in DIR/crlnumber, nil when the file does not exist.
    static func readCRLNumber(_ path: String) throws(PKIError) -> Int64? {
        let bytes: [UInt8]
        do throws(PKIError) {
            bytes = try readFile(path)
        } catch {
            if case .io(_, let code) = error, code == ENOENT { return nil }
            throw error
        }
        let text = String(decoding: bytes, as: UTF8.self)
            .trimmingSuffix { $0 == "\n" || $0 == "\r" || $0 == " " }
        guard !text.isEmpty, text.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
              let number = Int64(text), number < Int64.max else {
            throw .malformed(path, reason: "expected the decimal number of the last CRL, got \"\(text)\"")
        }
        return number
    }

    // MARK: - The CRL

    /// Builds, signs and writes DIR/crl.pem listing `entries`, with the CRL number one
    /// above both DIR/crlnumber and the number of the previous crl.pem.
    static func signAndWriteCRL(dir: String, entries: [RevokedEntry], caCert: OpaquePointer,
                                caKey: OpaquePointer, days: Int) throws(PKIError) {
        let crlPath = join(dir, "crl.pem")
        let numberPath = join(dir, "crlnumber")
        let previous = loadPreviousCRL(crlPath, caCert: caCert)
        defer { if let previous { X509_CRL_free(previous) } }
        var number = try readCRLNumber(numberPath) ?? 0
        if let previous, let old = crlNumber(previous) { number = max(number, old) }
        guard number < Int64.max else {
            throw .malformed(numberPath, reason: "the CRL number cannot be incremented")
        }
        number += 1

        let pem = try makeCRL(entries: entries, number: number, previous: previous,
                              caCert: caCert, caKey: caKey, days: days)
        // The number first: a failure in between skips a number, never reuses one.
        try writeFile(numberPath, Array("\(number)\n".utf8), mode: certMode, replace: true)
        try writeFile(crlPath, pem, mode: certMode, replace: true)
    }

    /// DIR/crl.pem if it exists, parses and was signed by `caCert`; else nil.
    /// The caller frees it.
    static func loadPreviousCRL(_ path: String, caCert: OpaquePointer) -> OpaquePointer? {
        guard let bytes = try? readFile(path) else { return nil }
        let crl: OpaquePointer? = bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_X509_CRL(bio, nil, nil, nil)
        }
        guard let crl else {
            ERR_clear_error()
            return nil
        }
        guard X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(caCert)) == 0,
              X509_CRL_verify(crl, X509_get0_pubkey(caCert)) == 1 else {
            ERR_clear_error()
            X509_CRL_free(crl)
            return nil
        }
        return crl
    }

    /// The cRLNumber extension of `crl`, if present and representable.
    static func crlNumber(_ crl: OpaquePointer) -> Int64? {
        guard let ext = X509_CRL_get_ext_d2i(crl, NID_crl_number, nil, nil) else {
            ERR_clear_error()
            return nil
        }
        let integer = ext.assumingMemoryBound(to: ASN1_INTEGER.self)
        defer { ASN1_INTEGER_free(integer) }
        var value: Int64 = 0
        guard ASN1_INTEGER_get_int64(&value, integer) == 1, value >= 0 else {
            ERR_clear_error()
            return nil
        }
        return value
    }

    /// A signed X.509 v2 CRL as PEM. Duplicate serials are listed once.
    static func makeCRL(entries: [RevokedEntry], number: Int64, previous: OpaquePointer?,
                        caCert: OpaquePointer, caKey: OpaquePointer, days: Int) throws(PKIError) -> [UInt8] {
        guard let crl = X509_CRL_new() else { throw failure("X509_CRL_new") }
        defer { X509_CRL_free(crl) }
        guard X509_CRL_set_version(crl, 1) == 1 else { throw failure("X509_CRL_set_version") }
        guard X509_CRL_set_issuer_name(crl, X509_get_subject_name(caCert)) == 1 else {
            throw failure("X509_CRL_set_issuer_name")
        }

        let now = time(nil)
        guard let lastUpdate = ASN1_TIME_adj(nil, now, 0, -300) else { throw failure("ASN1_TIME_adj") }
        defer { ASN1_TIME_free(lastUpdate) }
        guard let nextUpdate = ASN1_TIME_adj(nil, now, Int32(days), 0) else { throw failure("ASN1_TIME_adj") }
        defer { ASN1_TIME_free(nextUpdate) }
        guard let revokedNow = ASN1_TIME_adj(nil, now, 0, 0) else { throw failure("ASN1_TIME_adj") }
        defer { ASN1_TIME_free(revokedNow) }
        guard X509_CRL_set1_lastUpdate(crl, lastUpdate) == 1,
              X509_CRL_set1_nextUpdate(crl, nextUpdate) == 1 else {
            throw failure("set CRL lastUpdate/nextUpdate")
        }

        var listed = Set<String>()
        for entry in entries where listed.insert(entry.serial).inserted {
            try addRevoked(crl, entry, previous: previous, revokedNow: revokedNow)
        }

        guard let crlNumber = ASN1_INTEGER_new() else { throw failure("ASN1_INTEGER_new") }
        defer { ASN1_INTEGER_free(crlNumber) }
        guard ASN1_INTEGER_set_int64(crlNumber, number) == 1,
              X509_CRL_add1_ext_i2d(crl, NID_crl_number, crlNumber, 0, 0) == 1 else {
            throw failure("add the CRL number extension")
        }
        // authorityKeyIdentifier (RFC 5280 5.2.1), from the CA's subjectKeyIdentifier.
        var ctx = X509V3_CTX()
        X509V3_set_ctx(&ctx, caCert, nil, nil, crl, 0)
        guard let aki = X509V3_EXT_conf_nid(nil, &ctx, NID_authority_key_identifier, "keyid:always") else {
            throw failure("build the CRL authorityKeyIdentifier extension")
        }
        defer { X509_EXTENSION_free(aki) }
        guard X509_CRL_add_ext(crl, aki, -1) == 1 else { throw failure("X509_CRL_add_ext") }

        guard X509_CRL_sort(crl) == 1 else { throw failure("X509_CRL_sort") }
        guard X509_CRL_sign(crl, caKey, EVP_sha256()) > 0 else { throw failure("sign the CRL") }
        return try pem(secure: false, "PEM_write_bio_X509_CRL") { PEM_write_bio_X509_CRL($0, crl) }
    }

    /// Adds one revoked entry to `crl`, with the revocation date of the same serial
    /// in `previous` when listed there, else `revokedNow`.
    static func addRevoked(_ crl: OpaquePointer, _ entry: RevokedEntry, previous: OpaquePointer?,
                           revokedNow: UnsafeMutablePointer<ASN1_TIME>) throws(PKIError) {
        guard let bn = serialBignum(entry.serial) else { throw failure("parse serial \(entry.serial)") }
        defer { BN_free(bn) }
        guard let serial = BN_to_ASN1_INTEGER(bn, nil) else { throw failure("BN_to_ASN1_INTEGER") }
        defer { ASN1_INTEGER_free(serial) }

        var date = revokedNow
        if let previous {
            var old: OpaquePointer? = nil
            if X509_CRL_get0_by_serial(previous, &old, serial) == 1, let old,
               let oldDate = X509_REVOKED_get0_revocationDate(old) {
                date = UnsafeMutablePointer(mutating: oldDate)
            }
        }

        guard let revoked = X509_REVOKED_new() else { throw failure("X509_REVOKED_new") }
        var added = false
        defer { if !added { X509_REVOKED_free(revoked) } }
        guard X509_REVOKED_set_serialNumber(revoked, serial) == 1,
              X509_REVOKED_set_revocationDate(revoked, date) == 1 else {
            throw failure("set the revoked entry of serial \(entry.serial)")
        }
        guard X509_CRL_add0_revoked(crl, revoked) == 1 else { throw failure("X509_CRL_add0_revoked") }
        added = true
    }

    /// A BIGNUM from a normalized hex serial; the caller frees it.
    static func serialBignum(_ hex: String) -> OpaquePointer? {
        var bn: OpaquePointer? = nil
        guard BN_hex2bn(&bn, hex) == Int32(hex.utf8.count) else {
            if let bn { BN_free(bn) }
            return nil
        }
        return bn
    }
}

private extension String {
    func trimmingSuffix(while predicate: (Character) -> Bool) -> String {
        var s = self
        while let last = s.last, predicate(last) { s.removeLast() }
        return s
    }
}

extension PKI {
    /// lastUpdate and nextUpdate (Unix seconds) of the first CRL in `pem`: when the
    /// gateway must write it again (`writeCRL`) or warn that it will expire.
    /// `.malformed` when there is no CRL or it has no nextUpdate.
    public static func crlUpdateTimes(pem: [UInt8], what: String = "CRL") throws(PKIError) -> (lastUpdate: Int64, nextUpdate: Int64) {
        let crl: OpaquePointer? = pem.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_X509_CRL(bio, nil, nil, nil)
        }
        guard let crl else {
            ERR_clear_error()
            throw .malformed(what, reason: "no PEM CRL")
        }
        defer { X509_CRL_free(crl) }
        guard let last = CertificateInfo.unixTime(X509_CRL_get0_lastUpdate(crl)), let next = CertificateInfo.unixTime(X509_CRL_get0_nextUpdate(crl)) else {
            ERR_clear_error()
            throw .malformed(what, reason: "the CRL has no readable lastUpdate and nextUpdate")
        }
        return (last, next)
    }

    /// `crlUpdateTimes` of the file at `path` (DIR/crl.pem).
    public static func crlUpdateTimes(file path: String) throws(PKIError) -> (lastUpdate: Int64, nextUpdate: Int64) {
        try crlUpdateTimes(pem: readFile(path), what: path)
    }
}

/// revoked.txt and issued.txt as parsed last, by path, while their FileStamp is
/// the same: the gateway checks both at every enrollment, and they grow with the
/// fleet. A few paths at most (one PKI directory); process-wide, under a mutex.
enum RevocationListCache {
    typealias List = (entries: [PKI.RevokedEntry], bytes: [UInt8])
    static let maxPaths = 8
    #if os(Linux)
    private struct Item: Sendable {
        let stamp: FileStamp
        let entries: [PKI.RevokedEntry]
        let bytes: [UInt8]
    }
    private static let items = Mutex<[String: Item]>([:])
    #endif

    static func lookup(_ path: String, _ stamp: FileStamp) -> List? {
        #if os(Linux)
        items.withLock { items in
            guard let item = items[path], item.stamp == stamp else { return nil }
            return (item.entries, item.bytes)
        }
        #else
        nil
        #endif
    }

    static func store(_ path: String, _ stamp: FileStamp, _ list: List) {
        #if os(Linux)
        items.withLock { items in
            if items[path] == nil && items.count >= maxPaths { items.removeAll() }
            items[path] = Item(stamp: stamp, entries: list.entries, bytes: list.bytes)
        }
        #endif
    }
}
