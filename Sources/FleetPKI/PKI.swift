// Certificate commands of fleet-gateway: a fleet CA, the gateway's server
// certificate and per-device client certificates, made with the OpenSSL 3 C API.
//
// Keys are EC P-256, written as unencrypted PKCS#8 PEM (0600); certificates are
// X.509 v3 signed with ECDSA-SHA256 (0644). Every file is written atomically:
// a temporary file created in the same directory with its final mode, then
// renamed (or hard-linked, when an existing file must not be replaced).
import COpenSSL
import TLS
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

public enum PKI {
    static let keyMode: mode_t = 0o600
    static let certMode: mode_t = 0o644
    static let directoryMode: mode_t = 0o700
    /// Longest validity accepted (100 years), which keeps second counts far from overflow.
    static let maxDays = 36_500

    /// Creates DIR (0700) with a fleet CA and a gateway certificate.
    /// Files: ca.crt, ca.key, gateway.crt (just the leaf), gateway.key. Keys 0600, certs 0644.
    /// With `issuingCA`, two tiers (PKIIssuingCA.swift): root.crt and root.key (a root CA
    /// valid `rootDays`, needed by no command afterwards: it may leave the machine), ca.key
    /// the issuing CA's key, ca.crt the chain (issuing CA, then root), gateway.crt the
    /// leaf then the issuing CA.
    /// Refuses (throws `.alreadyExists`) if DIR already contains ca.key unless `force`.
    public static func initialize(directory: String, gatewayName: String, extraSANs: [String] = [],
                                  days: Int = 825, caDays: Int = 3650,
                                  fleetName: String = "ReverseHTTP", force: Bool = false,
                                  issuingCA: Bool = false, rootDays: Int = 7300) throws(PKIError) {
        try checkDays(days, "days")
        try checkDays(caDays, "CA days")
        if issuingCA {
            return try initializeTwoTier(directory: directory, gatewayName: gatewayName, extraSANs: extraSANs, days: days,
                                         caDays: caDays, rootDays: rootDays, fleetName: fleetName, force: force)
        }
        guard isValidLabelText(fleetName) else { throw .invalidName(fleetName) }
        let sans = try subjectAltNames(primary: gatewayName, extra: extraSANs)

        let dir = normalized(directory)
        let caKeyPath = join(dir, "ca.key")
        if !force, try exists(caKeyPath) { throw .alreadyExists(caKeyPath) }

        // All cryptography first, in memory; files only once everything succeeded.
        let caKey = try generateKey()
        defer { EVP_PKEY_free(caKey) }
        let caCert = try makeCertificate(
            commonName: fleetName + " Fleet CA", subjectKey: caKey, issuer: nil,
            days: caDays, notBeforeOffsetDays: 0,
            extensions: [
                (NID_basic_constraints, "critical,CA:TRUE"),
                (NID_key_usage, "critical,keyCertSign,cRLSign"),
                (NID_subject_key_identifier, "hash"),
            ])
        defer { X509_free(caCert) }

        let gatewayKey = try generateKey()
        defer { EVP_PKEY_free(gatewayKey) }
        let gatewayCert = try makeCertificate(
            commonName: gatewayName, subjectKey: gatewayKey, issuer: (caCert, caKey),
            days: days, notBeforeOffsetDays: 0,
            extensions: serverExtensions(sans: sans))
        defer { X509_free(gatewayCert) }

        var caKeyPEM = try keyPEM(caKey)
        defer { wipe(&caKeyPEM) }
        let caCertPEM = try certificatePEM(caCert)
        var gatewayKeyPEM = try keyPEM(gatewayKey)
        defer { wipe(&gatewayKeyPEM) }
        let gatewayCertPEM = try certificatePEM(gatewayCert)

        try makeDirectory(dir)
        // ca.key first, without replacing one that appeared meanwhile; it is removed
        // again if a later write fails, so a retry is not refused.
        try writeFile(caKeyPath, caKeyPEM, mode: keyMode, replace: force)
        do throws(PKIError) {
            try writeFile(join(dir, "ca.crt"), caCertPEM, mode: certMode, replace: true)
            try writeFile(join(dir, "gateway.key"), gatewayKeyPEM, mode: keyMode, replace: true)
            try writeFile(join(dir, "gateway.crt"), gatewayCertPEM, mode: certMode, replace: true)
        } catch {
            if !force { unlink(caKeyPath) }
            throw error
        }
    }

    /// Like `issue`, but a server certificate (serverAuth, SANs as in `initialize`),
    /// written as DIR/servers/NAME.{crt,key}.
    public static func issueServer(directory: String, name: String, extraSANs: [String] = [],
                                   days: Int = 825, force: Bool = false) throws(PKIError) {
        let sans = try subjectAltNames(primary: name, extra: extraSANs)
        try checkDays(days, "days")
        let dir = normalized(directory)
        let (caCert, caKey) = try loadCA(dir)
        defer { X509_free(caCert); EVP_PKEY_free(caKey) }
        if !force, try exists(join(dir, "servers") + "/" + name + ".key") {
            throw .alreadyExists(join(dir, "servers") + "/" + name + ".key")
        }
        try issueLeaf(dir: dir, ca: (caCert, caKey), subdirectory: "servers", name: name,
                      extensions: serverExtensions(sans: sans),
                      days: days, notBeforeOffsetDays: 0, writeBundle: false, force: force)
    }

    /// A name a device can have (its certificate CN, the hostname it is routed by):
    /// a hostname whose last label is not all digits, so never an IPv4 address
    /// ("10.0.0.1", "127.1"): RFC 1123 §2.1 and RFC 3696 §2, top-level labels are
    /// not numeric. A device named like an address would take the requests users
    /// send to the gateway by its address.
    public static func isValidDeviceName(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { isValidDeviceName($0) }
    }

    /// `isValidDeviceName` on UTF-8 bytes (the gateway routes every request by one).
    public static func isValidDeviceName(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard isValidHostname(bytes) else { return false }
        var i = bytes.count  // the last label is not all digits (not an IPv4 address)
        while i > 0 && bytes[i - 1] != UInt8(ascii: ".") {
            if !(bytes[i - 1] >= UInt8(ascii: "0") && bytes[i - 1] <= UInt8(ascii: "9")) { return true }
            i -= 1
        }
        return false
    }

    /// A DNS hostname: dot-separated labels of 1...63 characters from [A-Za-z0-9-],
    /// not starting or ending with '-', at most 253 characters, no trailing dot, no wildcard.
    public static func isValidHostname(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { isValidHostname($0) }
    }

    public static func isValidHostname(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard !bytes.isEmpty, bytes.count <= 253 else { return false }
        var start = 0
        while start <= bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: ".") { end += 1 }
            let count = end - start
            guard count >= 1 && count <= 63,
                  bytes[start] != UInt8(ascii: "-"), bytes[end - 1] != UInt8(ascii: "-") else { return false }
            for i in start..<end {
                switch bytes[i] {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                     UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"):
                    continue
                default:
                    return false
                }
            }
            start = end + 1
        }
        return true
    }

    // MARK: - Issuing

    static func deviceExtensions(name: String) -> [(Int32, String)] {
        [
            (NID_basic_constraints, "CA:FALSE"),
            (NID_key_usage, "critical,digitalSignature"),
            (NID_ext_key_usage, "clientAuth"),
            (NID_subject_key_identifier, "hash"),
            (NID_authority_key_identifier, "keyid:always"),
            (NID_subject_alt_name, "DNS:" + name),
        ]
    }

    static func serverExtensions(sans: [String]) -> [(Int32, String)] {
        [
            (NID_basic_constraints, "CA:FALSE"),
            (NID_key_usage, "critical,digitalSignature"),
            (NID_ext_key_usage, "serverAuth"),
            (NID_subject_key_identifier, "hash"),
            (NID_authority_key_identifier, "keyid:always"),
            (NID_subject_alt_name, sans.joined(separator: ",")),
        ]
    }

    /// Makes and writes DIR/SUBDIRECTORY/NAME.{key,crt[,pem]}; returns the serial.
    /// The caller checked whether the files may be replaced.
    @discardableResult
    static func issueLeaf(dir: String, ca: (cert: OpaquePointer, key: OpaquePointer), subdirectory: String,
                          name: String, organizationalUnit: String? = nil, extensions: [(Int32, String)],
                          days: Int, notBeforeOffsetDays: Int,
                          writeBundle: Bool, force: Bool) throws(PKIError) -> String {
        let outDir = join(dir, subdirectory)
        let keyPath = outDir + "/" + name + ".key"
        let key = try generateKey()
        defer { EVP_PKEY_free(key) }
        let cert = try makeCertificate(commonName: name, organizationalUnit: organizationalUnit, subjectKey: key, issuer: ca,
                                       days: days, notBeforeOffsetDays: notBeforeOffsetDays,
                                       extensions: extensions)
        defer { X509_free(cert) }
        var pemKey = try keyPEM(key)
        defer { wipe(&pemKey) }
        let pemCert = try certificatePEM(cert) + chainAfterLeaf(ca.cert)
        let serial = try serialHex(cert, what: name)

        try makeDirectory(outDir)
        try writeFile(keyPath, pemKey, mode: keyMode, replace: force)
        do throws(PKIError) {
            try writeFile(outDir + "/" + name + ".crt", pemCert, mode: certMode, replace: true)
            if writeBundle {
                var bundle = pemCert + pemKey
                defer { wipe(&bundle) }
                try writeFile(outDir + "/" + name + ".pem", bundle, mode: keyMode, replace: true)
            }
        } catch {
            if !force { unlink(keyPath) }
            throw error
        }
        return serial
    }

    /// "DNS:primary,IP:...,DNS:..." entries for a server certificate, deduplicated.
    static func subjectAltNames(primary: String, extra: [String]) throws(PKIError) -> [String] {
        var out: [String] = []
        for name in [primary] + extra {
            let entry: String
            if isIPAddress(name) {
                entry = "IP:" + name
            } else if isValidHostname(name) {
                entry = "DNS:" + name
            } else {
                throw .invalidName(name)
            }
            if !out.contains(where: { $0.lowercased() == entry.lowercased() }) { out.append(entry) }
        }
        return out
    }

    static func isIPAddress(_ s: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, s, &v4) == 1 || inet_pton(AF_INET6, s, &v6) == 1
    }

    /// Printable text for a CN: non-empty, no control characters.
    static func isValidLabelText(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 200 && !s.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f }
    }

    static func checkDays(_ days: Int, _ what: String) throws(PKIError) {
        guard (1...maxDays).contains(days) else {
            throw .invalidArgument("\(what) must be between 1 and \(maxDays), got \(days)")
        }
    }

    static func checkOffset(_ offset: Int) throws(PKIError) {
        guard (-maxDays...maxDays).contains(offset) else {
            throw .invalidArgument("validity offset must be between -\(maxDays) and \(maxDays) days, got \(offset)")
        }
    }

    // MARK: - OpenSSL

    static func failure(_ operation: String) -> PKIError {
        .openssl(OpenSSLError.drain(operation))
    }

    /// A fresh EC P-256 key. The caller frees it with EVP_PKEY_free.
    static func generateKey() throws(PKIError) -> OpaquePointer {
        guard let ctx = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else {
            throw failure("EVP_PKEY_CTX_new_from_name(EC)")
        }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_keygen_init(ctx) == 1 else { throw failure("EVP_PKEY_keygen_init") }
        guard EVP_PKEY_CTX_set_group_name(ctx, "P-256") == 1 else {
            throw failure("EVP_PKEY_CTX_set_group_name(P-256)")
        }
        var key: OpaquePointer? = nil
        guard EVP_PKEY_generate(ctx, &key) == 1, let key else { throw failure("generate EC P-256 key") }
        return key
    }

    /// Builds and signs an X.509 v3 certificate. `issuer` nil means self-signed with
    /// `subjectKey`. Extensions are added in order (subjectKeyIdentifier before
    /// authorityKeyIdentifier). The caller frees the result with X509_free.
    static func makeCertificate(commonName: String, organizationalUnit: String? = nil, subjectKey: OpaquePointer,
                                issuer: (cert: OpaquePointer, key: OpaquePointer)?,
                                days: Int, notBeforeOffsetDays: Int, validitySeconds: Int? = nil,
                                extensions: [(Int32, String)]) throws(PKIError) -> OpaquePointer {
        guard let x = X509_new() else { throw failure("X509_new") }
        var keep = false
        defer { if !keep { X509_free(x) } }

        guard X509_set_version(x, 2) == 1 else { throw failure("X509_set_version") }
        try setRandomSerial(x)

        let start = notBeforeOffsetDays * 86_400
        guard X509_gmtime_adj(X509_getm_notBefore(x), start - 300) != nil,
              X509_gmtime_adj(X509_getm_notAfter(x), start + (validitySeconds ?? days * 86_400)) != nil else {
            throw failure("set certificate validity")
        }

        guard let subject = X509_get_subject_name(x) else { throw failure("X509_get_subject_name") }
        // UTF8String, set directly: the MBSTRING path would cap CN at 64 bytes,
        // shorter than the 253 a device hostname may have.
        if let ou = organizationalUnit {
            let bytes = Array(ou.utf8)
            guard X509_NAME_add_entry_by_txt(subject, "OU", V_ASN1_UTF8STRING, bytes, Int32(bytes.count), -1, 0) == 1 else {
                throw failure("set subject OU \"\(ou)\"")
            }
        }
        let cn = Array(commonName.utf8)
        guard X509_NAME_add_entry_by_txt(subject, "CN", V_ASN1_UTF8STRING, cn, Int32(cn.count), -1, 0) == 1 else {
            throw failure("set subject CN \"\(commonName)\"")
        }
        let issuerName = issuer.map { X509_get_subject_name($0.cert) } ?? subject
        guard X509_set_issuer_name(x, issuerName) == 1 else { throw failure("X509_set_issuer_name") }
        guard X509_set_pubkey(x, subjectKey) == 1 else { throw failure("X509_set_pubkey") }

        var ctx = X509V3_CTX()
        X509V3_set_ctx(&ctx, issuer?.cert ?? x, x, nil, nil, 0)
        if issuer == nil, X509V3_set_issuer_pkey(&ctx, subjectKey) != 1 {
            throw failure("X509V3_set_issuer_pkey")
        }
        for (nid, value) in extensions {
            guard let ext = X509V3_EXT_conf_nid(nil, &ctx, nid, value) else {
                throw failure("build extension \(String(cString: OBJ_nid2sn(nid))) = \(value)")
            }
            defer { X509_EXTENSION_free(ext) }
            guard X509_add_ext(x, ext, -1) == 1 else { throw failure("X509_add_ext") }
        }

        guard X509_sign(x, issuer?.key ?? subjectKey, EVP_sha256()) > 0 else {
            throw failure("sign certificate \"\(commonName)\"")
        }
        keep = true
        return x
    }

    /// 16 random bytes as a positive serial (top bit clear, first byte non-zero,
    /// so the DER INTEGER is exactly 16 bytes).
    static func setRandomSerial(_ x: OpaquePointer) throws(PKIError) {
        var bytes = [UInt8](repeating: 0, count: 16)
        guard RAND_bytes(&bytes, Int32(bytes.count)) == 1 else { throw failure("RAND_bytes") }
        bytes[0] &= 0x7f
        if bytes[0] == 0 { bytes[0] = 0x40 }
        guard let bn = BN_bin2bn(bytes, Int32(bytes.count), nil) else { throw failure("BN_bin2bn") }
        defer { BN_free(bn) }
        guard BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != nil else {
            throw failure("set serial number")
        }
    }

    static func certificatePEM(_ x: OpaquePointer) throws(PKIError) -> [UInt8] {
        try pem(secure: false, "PEM_write_bio_X509") { PEM_write_bio_X509($0, x) }
    }

    /// Unencrypted PKCS#8 ("BEGIN PRIVATE KEY").
    static func keyPEM(_ key: OpaquePointer) throws(PKIError) -> [UInt8] {
        try pem(secure: true, "PEM_write_bio_PKCS8PrivateKey") {
            PEM_write_bio_PKCS8PrivateKey($0, key, nil, nil, 0, nil, nil)
        }
    }

    static func pem(secure: Bool, _ operation: String, _ write: (OpaquePointer) -> Int32) throws(PKIError) -> [UInt8] {
        guard let bio = BIO_new(secure ? BIO_s_secmem() : BIO_s_mem()) else { throw failure("BIO_new") }
        defer { BIO_free(bio) }
        guard write(bio) == 1 else { throw failure(operation) }
        let count = Int(rh_BIO_pending(bio))
        var out = [UInt8](repeating: 0, count: count)
        guard count > 0, BIO_read(bio, &out, Int32(count)) == Int32(count) else { throw failure(operation) }
        return out
    }

    /// Reads and checks DIR/ca.crt and DIR/ca.key. The caller frees both.
    static func loadCA(_ dir: String) throws(PKIError) -> (cert: OpaquePointer, key: OpaquePointer) {
        let certPath = join(dir, "ca.crt")
        let keyPath = join(dir, "ca.key")
        let certBytes: [UInt8]
        var keyBytes: [UInt8]
        do throws(PKIError) {
            certBytes = try readFile(certPath)
            keyBytes = try readFile(keyPath)
        } catch {
            if case .io(_, let code) = error, code == ENOENT { throw .missingCA(dir) }
            throw error
        }
        defer { wipe(&keyBytes) }

        let cert: OpaquePointer? = certBytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_X509(bio, nil, nil, nil)
        }
        guard let cert else { throw failure("read CA certificate \(certPath)") }
        var keep = false
        defer { if !keep { X509_free(cert) } }

        // A password callback that declines, so an encrypted key fails instead of prompting.
        let noPassword: @convention(c) (UnsafeMutablePointer<CChar>?, Int32, Int32, UnsafeMutableRawPointer?) -> Int32 = { _, _, _, _ in 0 }
        let key: OpaquePointer? = keyBytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, noPassword, nil)
        }
        guard let key else { throw failure("read CA key \(keyPath) (must be an unencrypted PEM key)") }
        defer { if !keep { EVP_PKEY_free(key) } }

        guard X509_check_ca(cert) != 0 else {
            throw .openssl(OpenSSLError("\(certPath) is not a CA certificate", reasons: OpenSSLError.drainQueue()))
        }
        guard X509_check_private_key(cert, key) == 1 else {
            throw failure("\(keyPath) does not belong to \(certPath)")
        }
        keep = true
        return (cert, key)
    }

    // MARK: - Files

    /// DIR without trailing slashes ("/" stays "/"; "" is ".").
    static func normalized(_ path: String) -> String {
        var p = path.isEmpty ? "." : path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        return p
    }

    static func join(_ dir: String, _ name: String) -> String {
        dir == "/" ? "/" + name : dir + "/" + name
    }

    static func exists(_ path: String) throws(PKIError) -> Bool {
        var st = stat()
        if lstat(path, &st) == 0 { return true }
        let code = errno
        if code == ENOENT || code == ENOTDIR { return false }
        throw .io(path, errno: code)
    }

    /// Creates `path` (and missing parents) and sets it to 0700.
    static func makeDirectory(_ path: String) throws(PKIError) {
        var st = stat()
        if stat(path, &st) != 0 {
            guard errno == ENOENT else { throw .io(path, errno: errno) }
            if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
                let parent = String(path[..<slash])
                var pst = stat()
                if stat(parent, &pst) != 0 {
                    try makeParents(parent)
                }
            }
            if mkdir(path, directoryMode) != 0 && errno != EEXIST { throw .io(path, errno: errno) }
            guard stat(path, &st) == 0 else { throw .io(path, errno: errno) }
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw .io(path, errno: ENOTDIR) }
        if (st.st_mode & 0o7777) != directoryMode, chmod(path, directoryMode) != 0 {
            throw .io(path, errno: errno)
        }
    }

    /// mkdir -p for the parents of the PKI directory (ordinary 0755 less umask).
    static func makeParents(_ path: String) throws(PKIError) {
        var st = stat()
        if stat(path, &st) == 0 { return }
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            try makeParents(String(path[..<slash]))
        }
        if mkdir(path, 0o755) != 0 && errno != EEXIST { throw .io(path, errno: errno) }
    }

    /// The file's bytes, at most `limit` (`.io(path, EFBIG)` beyond).
    public static func readFile(_ path: String, limit: Int = 1 << 20) throws(PKIError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path, errno: errno) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path, errno: errno)
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
            guard out.count <= limit else { throw .io(path, errno: EFBIG) }
        }
        wipe(&chunk)
        return out
    }

    /// Replaces `path` with `bytes` atomically (a temporary file, fsync, rename), `mode`:
    /// for the gateway's own state files in the PKI directory.
    public static func replaceFile(_ path: String, _ bytes: [UInt8], mode: mode_t) throws(PKIError) {
        try writeFile(path, bytes, mode: mode, replace: true)
    }

    /// Writes `bytes` to `path` atomically with `mode`. With `replace` false, an
    /// existing file is never replaced (`.alreadyExists`).
    static func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t, replace: Bool) throws(PKIError) {
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        // Short, so that a final name near NAME_MAX still gets a temporary name.
        let temp = join(dir, ".pki-" + String(UInt64.random(in: 0...UInt64.max), radix: 16) + ".tmp")

        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        // Errors name the final path: the temporary one means nothing to the operator.
        guard fd >= 0 else { throw .io(path, errno: errno) }
        do throws(PKIError) {
            try writeContents(fd, bytes, mode: mode, path: path)
        } catch {
            close(fd)
            unlink(temp)
            throw error
        }
        if close(fd) != 0 {
            let code = errno
            unlink(temp)
            throw .io(path, errno: code)
        }

        if replace || link(temp, path) != 0 {
            let code = replace ? 0 : errno
            // File systems without hard links: check, then rename.
            let noLinks = code == EPERM || code == ENOTSUP || code == EOPNOTSUPP || code == EMLINK
            if !replace && !noLinks {
                unlink(temp)
                throw code == EEXIST ? .alreadyExists(path) : .io(path, errno: code)
            }
            if !replace, (try? exists(path)) != false {
                unlink(temp)
                throw .alreadyExists(path)
            }
            if rename(temp, path) != 0 {
                let code = errno
                unlink(temp)
                throw .io(path, errno: code)
            }
        } else {
            unlink(temp)
        }
        // Make the new directory entry durable too (best effort).
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            _ = fsync(dfd)
            close(dfd)
        }
    }

    static func writeContents(_ fd: Int32, _ bytes: [UInt8], mode: mode_t, path: String) throws(PKIError) {
        // The umask may have cleared bits of `mode` (0644 under umask 077): set it exactly.
        guard fchmod(fd, mode) == 0 else { throw .io(path, errno: errno) }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path, errno: errno)
            }
            offset += n
        }
        guard fsync(fd) == 0 else { throw .io(path, errno: errno) }
    }

    /// Best-effort overwrite of key material before the buffer is released.
    static func wipe(_ bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { raw in
            if let base = raw.baseAddress { OPENSSL_cleanse(base, raw.count) }
        }
    }
}
