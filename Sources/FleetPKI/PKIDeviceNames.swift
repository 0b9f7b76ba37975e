// Device certificates and names: `pki issue`, the one normalisation
// of a name (shared with the gateway), the names no device may have, and
// DIR/issued.txt, the record of every serial issued to each name.
//
//   issued.txt   one issued device certificate a line: lowercase hex serial, a tab
//                and the device name (the format of revoked.txt). Appended by
//                `pki issue` under the directory lock. 0644.
//
// Two certificates must never stand for one device while revocation knows only
// one of them: names are compared in canonical form (lower-case ASCII; a
// non-canonical name is refused, never folded), and `pki revoke NAME` revokes
// every serial the record and the devices/ directory hold for NAME.
import COpenSSL
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension PKI {
    /// What `issue` did: the new certificate's serial and the serials of earlier
    /// certificates of the same name it revoked (with `force`).
    public struct Issued: Equatable {
        public var serial: String
        public var revoked: [String]
    }

    /// Issues a device (client) certificate signed by DIR/ca.crt + DIR/ca.key:
    /// DIR/devices/NAME.crt (0644), NAME.key (0600) and NAME.pem (certificate then key, 0600),
    /// and records its serial in DIR/issued.txt.
    /// NAME must be canonical (lower-case: `.notCanonical`) and not reserved (localhost,
    /// the gateway's names: `.reservedName`). Names are case-insensitive: files of NAME in
    /// any case count as existing (`.alreadyExists` without `force`). With `force`, every
    /// unrevoked serial issued to NAME before is revoked (DIR/revoked.txt, DIR/crl.pem):
    /// a replaced certificate must not keep working where the old one was copied.
    /// `notBeforeOffsetDays` shifts the validity window (negative: in the past), for tests.
    @discardableResult
    public static func issue(directory: String, name: String, days: Int = 825,
                             notBeforeOffsetDays: Int = 0, force: Bool = false,
                             crlDays: Int = 30) throws(PKIError) -> Issued {
        guard isValidDeviceName(name) else { throw .invalidName(name) }
        guard isCanonicalDeviceName(name) else { throw .notCanonical(name) }
        try checkDays(days, "days")
        try checkDays(crlDays, "CRL days")
        try checkOffset(notBeforeOffsetDays)
        let dir = normalized(directory)
        let (caCert, caKey) = try loadCA(dir)
        defer { X509_free(caCert); EVP_PKEY_free(caKey) }
        try checkNotReserved(name, dir: dir)
        let lock = try lockDirectory(dir)
        defer { close(lock) }

        let existing = deviceFiles(dir, name: name)
        if !force, let path = existing.first {
            throw .alreadyExists(path)
        }
        if !force {
            // The files may be gone while a certificate issued for NAME is still
            // valid: a second one must not be issued silently.
            let revokedSerials = try readRevocationList(join(dir, "revoked.txt")).entries.map(\.serial)
            let live = try issuedSerials(dir, name: name, caCert: caCert).filter { !revokedSerials.contains($0) }
            if !live.isEmpty { throw .stillIssued(name, serials: live) }
        }
        var revoked: [String] = []
        if force {
            let previous = try issuedSerials(dir, name: name, caCert: caCert)
            revoked = try revokeLocked(dir: dir, previous.map { RevokedEntry(serial: $0, name: name) },
                                       caCert: caCert, caKey: caKey, days: crlDays, writeUnchanged: false)
        }
        let serial = try issueLeaf(dir: dir, ca: (caCert, caKey), subdirectory: "devices", name: name,
                                   extensions: deviceExtensions(name: name),
                                   days: days, notBeforeOffsetDays: notBeforeOffsetDays,
                                   writeBundle: true, force: force)
        let indexPath = join(dir, "issued.txt")
        try appendEntries(indexPath, [RevokedEntry(serial: serial, name: name)],
                          to: readRevocationList(indexPath).bytes)
        return Issued(serial: serial, revoked: revoked)
    }

    // MARK: - Names

    /// A-Z to a-z, nothing else (Unicode lower-casing maps some non-ASCII to ASCII:
    /// U+212A KELVIN SIGN is "k").
    public static func asciiLowercased(_ s: String) -> String {
        String(decoding: s.utf8.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self)
    }

    /// The device a name stands for: the name lower-cased, nil when it is not a device
    /// name (`isValidDeviceName`: ASCII hostname, no trailing dot, not an IPv4 address).
    /// Validated before lower-casing. `pki` and the gateway both map names with this.
    public static func canonicalDeviceName(_ s: String) -> String? {
        isValidDeviceName(s) ? asciiLowercased(s) : nil
    }

    /// A name already in canonical form: what `pki issue` writes into a CN and the only
    /// CN the gateway accepts ("DEV1.EXAMPLE" would otherwise be a second dev1.example).
    public static func isCanonicalDeviceName(_ s: String) -> Bool {
        canonicalDeviceName(s) == s
    }

    /// localhost and the names under .localhost (RFC 6761 §6.3): users' requests for
    /// them are meant for the gateway's machine, never a device. `name` is canonical.
    public static func isLocalhostName(_ name: String) -> Bool {
        name == "localhost" || name.hasSuffix(".localhost")
    }

    /// The hostnames a certificate is for: its CN and DNS subject alternative names,
    /// canonical (lower-cased), without those that are not device-like hostnames
    /// (IP addresses, wildcards). Empty when `pem` holds no certificate.
    public static func certificateHostnames(pem: [UInt8]) -> [String] {
        let cert: OpaquePointer? = pem.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_X509(bio, nil, nil, nil)
        }
        guard let cert else {
            ERR_clear_error()
            return []
        }
        defer { X509_free(cert) }
        var texts: [String] = []
        if let subject = X509_get_subject_name(cert) {
            var idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)
            while idx >= 0 {
                if let entry = X509_NAME_get_entry(subject, idx), let data = X509_NAME_ENTRY_get_data(entry),
                   let text = asn1Text(data) {
                    texts.append(text)
                }
                idx = X509_NAME_get_index_by_NID(subject, NID_commonName, idx)
            }
        }
        if let raw = X509_get_ext_d2i(cert, NID_subject_alt_name, nil, nil) {
            let names = OpaquePointer(raw)
            defer { rh_GENERAL_NAMES_free(names) }
            for i in 0..<rh_sk_GENERAL_NAME_num(names) {
                if let dns = rh_GENERAL_NAMES_dns(names, i), let text = asn1Text(UnsafeMutablePointer(mutating: dns)) {
                    texts.append(text)
                }
            }
        }
        ERR_clear_error()
        var out: [String] = []
        for text in texts {
            if let name = canonicalDeviceName(text), !out.contains(name) { out.append(name) }
        }
        return out
    }

    /// `certificateHostnames` of the first certificate in the PEM file at `path`
    /// (empty when it cannot be read).
    public static func certificateHostnames(file path: String) -> [String] {
        guard let bytes = try? readFile(path) else { return [] }
        return certificateHostnames(pem: bytes)
    }

    static func asn1Text(_ data: UnsafeMutablePointer<ASN1_STRING>) -> String? {
        var utf8: UnsafeMutablePointer<UInt8>?
        let len = ASN1_STRING_to_UTF8(&utf8, data)
        guard len > 0, let utf8 else { return nil }
        defer { rh_OPENSSL_free(utf8) }
        let bytes = UnsafeBufferPointer(start: utf8, count: Int(len))
        return bytes.contains(0) ? nil : String(decoding: bytes, as: UTF8.self)
    }

    /// Refuses a device name that the gateway of DIR answers to itself: localhost,
    /// or a name of DIR/gateway.crt or DIR/servers/*.crt (CN or DNS SAN).
    static func checkNotReserved(_ name: String, dir: String) throws(PKIError) {
        if isLocalhostName(name) {
            throw .reservedName(name, reason: "users' requests for localhost are for the gateway's machine")
        }
        let servers = join(dir, "servers")
        let files = [join(dir, "gateway.crt")]
            + directoryEntries(servers).filter { $0.hasSuffix(".crt") }.map { servers + "/" + $0 }
        for file in files where certificateHostnames(file: file).contains(name) {
            throw .reservedName(name, reason: "it is a name of the gateway's certificate \(file)")
        }
    }

    // MARK: - Certificates issued per name

    /// The names in `dir` (not "." or ".."); empty when it cannot be read.
    static func directoryEntries(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let entry = readdir(d) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { out.append(name) }
        }
        return out.sorted()
    }

    /// Files of DIR/devices for device `name` (canonical) in any letter case, e.g.
    /// DEV1.EXAMPLE.crt left by an earlier version, with one of `suffixes`.
    static func deviceFiles(_ dir: String, name: String, suffixes: [String] = [".key", ".crt", ".pem"]) -> [String] {
        let devices = join(dir, "devices")
        var out: [String] = []
        for suffix in suffixes {
            for file in directoryEntries(devices) where file.hasSuffix(suffix)
                && asciiLowercased(String(file.dropLast(suffix.utf8.count))) == name {
                out.append(devices + "/" + file)
            }
        }
        return out
    }

    /// Every serial issued to device `name` (canonical), as far as DIR knows: the
    /// entries of DIR/issued.txt and the certificates DIR/devices holds for it.
    static func issuedSerials(_ dir: String, name: String, caCert: OpaquePointer) throws(PKIError) -> [String] {
        var serials = try readRevocationList(join(dir, "issued.txt")).entries
            .filter { canonicalDeviceName($0.name) == name }.map(\.serial)
        for path in deviceFiles(dir, name: name, suffixes: [".crt"]) {
            let serial = try deviceSerial(path, caCert: caCert, dir: dir)
            if !serials.contains(serial) { serials.append(serial) }
        }
        return serials
    }

    /// The device name DIR/issued.txt records for `serial`, if any.
    static func issuedName(_ dir: String, serial: String) throws(PKIError) -> String? {
        try readRevocationList(join(dir, "issued.txt")).entries.first { $0.serial == serial }?.name
    }

    /// Appends "serial<TAB>name" lines to the list at `path` (revoked.txt, issued.txt).
    static func appendEntries(_ path: String, _ entries: [RevokedEntry], to bytes: [UInt8]) throws(PKIError) {
        guard !entries.isEmpty else { return }
        var contents = bytes
        if let last = contents.last, last != UInt8(ascii: "\n") { contents.append(UInt8(ascii: "\n")) }
        for entry in entries { contents += Array((entry.serial + "\t" + entry.name + "\n").utf8) }
        try writeFile(path, contents, mode: certMode, replace: true)
    }
}
