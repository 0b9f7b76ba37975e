// TLSConnection owns one SSL between a memory BIO, which the engine feeds with the
// ciphertext read from the socket, and a write BIO that appends the ciphertext to
// write straight into a ByteQueue (the transport's output queue, or its own in
// tests): TLS does no I/O and runs the same in memory tests and on sockets, and a
// record is copied once, from OpenSSL's buffer into the queue the socket drains.
import Bytes
import COpenSSL

public enum TLSError: Error, CustomStringConvertible {
    /// The handshake failed; `verify` names a certificate problem when there was one.
    case handshake(OpenSSLError, verify: String?)
    case protocolError(OpenSSLError)

    public var description: String {
        switch self {
        case .handshake(let e, let verify):
            if let verify { return "TLS handshake failed: " + verify + " (" + e.description + ")" }
            return "TLS handshake failed: " + e.description
        case .protocolError(let e):
            return "TLS error: " + e.description
        }
    }
}

public final class TLSConnection {
    public enum Progress: Equatable {
        /// Needs more ciphertext from the peer (or has ciphertext to send first).
        case wantMore
        /// Handshake done.
        case established
    }

    public enum ReadResult {
        case data(Int)
        case wantMore
        /// The peer sent close_notify.
        case closed
    }

    private let ssl: OpaquePointer
    private var rbio: OpaquePointer
    /// Ciphertext waiting to be sent to the peer.
    public let output: ByteQueue
    public let context: TLSContext
    public private(set) var isEstablished = false

    /// `serverName` (client role): sent as SNI unless an IP address, and checked against
    /// the server certificate's names (DNS or IP).
    /// `identity`: the certificate and key this connection presents instead of the context's.
    /// `output`: where the ciphertext to send goes (a transport passes its output queue).
    public init(context: TLSContext, serverName: String? = nil, identity: TLSIdentity? = nil,
                output: ByteQueue = ByteQueue()) throws(OpenSSLError) {
        self.context = context
        self.output = output
        ERR_clear_error()
        guard let ssl = SSL_new(context.ctx) else { throw OpenSSLError.drain("SSL_new") }
        guard let r = BIO_new(BIO_s_mem()), let method = queueBIOMethod, let w = BIO_new(method) else {
            SSL_free(ssl)
            throw OpenSSLError.drain("BIO_new")
        }
        // The queue outlives the BIO: this connection holds both, and the SSL frees the BIO.
        BIO_set_data(w, Unmanaged.passUnretained(output).toOpaque())
        BIO_set_init(w, 1)
        rh_BIO_set_mem_eof_return(r, -1)
        SSL_set_bio(ssl, r, w)  // the SSL owns both BIOs from here on
        self.ssl = ssl
        rbio = r
        if let identity {
            guard SSL_use_certificate(ssl, identity.certificate) == 1, SSL_use_PrivateKey(ssl, identity.key) == 1 else {
                throw OpenSSLError.drain("use the connection's certificate and key")
            }
        }
        if context.configuration.role == .client {
            SSL_set_connect_state(ssl)
            if let name = serverName {
                if TLSConnection.isIPAddress(name) {
                    let param = SSL_get0_param(ssl)
                    guard X509_VERIFY_PARAM_set1_ip_asc(param, name) == 1 else {
                        throw OpenSSLError.drain("set expected server address " + name)
                    }
                } else {
                    guard rh_SSL_set_tlsext_host_name(ssl, name) == 1, SSL_set1_host(ssl, name) == 1 else {
                        throw OpenSSLError.drain("set expected server name " + name)
                    }
                }
            }
        } else {
            SSL_set_accept_state(ssl)
        }
    }

    deinit { SSL_free(ssl) }

    static func isIPAddress(_ s: String) -> Bool {
        var colon = false
        var onlyDigitsDots = true
        for b in s.utf8 {
            if b == UInt8(ascii: ":") { colon = true }
            if !(b == UInt8(ascii: ".") || (b >= 48 && b <= 57)) { onlyDigitsDots = false }
        }
        return colon || onlyDigitsDots
    }

    /// Hands ciphertext received from the peer to OpenSSL.
    public func feed(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        _ = BIO_write(rbio, bytes.baseAddress, Int32(bytes.count))
    }

    public func feed(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { feed($0) }
    }

    /// Moves the ciphertext waiting to be sent into `out` (memory tests).
    public func takeOutput(into out: inout [UInt8]) { output.take(into: &out) }

    /// Advances the handshake with what has been fed so far.
    public func handshake() throws(TLSError) -> Progress {
        if isEstablished { return .established }
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 {
            isEstablished = true
            return .established
        }
        let err = SSL_get_error(ssl, rc)
        if err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE { return .wantMore }
        let verify = SSL_get_verify_result(ssl)
        let verifyText: String? = verify == Int(X509_V_OK) ? nil : String(cString: X509_verify_cert_error_string(verify))
        throw .handshake(OpenSSLError.drain("handshake"), verify: verifyText)
    }

    /// Decrypts into `buffer`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TLSError) -> ReadResult {
        // Nothing to decrypt: asking OpenSSL anyway would allocate its 16 KB record
        // buffer and keep it while the connection idles.
        if rh_BIO_pending(rbio) == 0 && SSL_has_pending(ssl) == 0 { return .wantMore }
        ERR_clear_error()
        let n = SSL_read(ssl, buffer.baseAddress, Int32(buffer.count))
        if n > 0 { return .data(Int(n)) }
        let err = SSL_get_error(ssl, n)
        if err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE { return .wantMore }
        if err == SSL_ERROR_ZERO_RETURN { return .closed }
        throw .protocolError(OpenSSLError.drain("read"))
    }

    /// Encrypts all of `bytes` (memory BIOs always take everything).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(TLSError) {
        var off = 0
        var guardCount = 0
        while off < bytes.count {
            guardCount += 1
            if guardCount > 1_000_000 { throw .protocolError(OpenSSLError("write made no progress", reasons: [])) }
            ERR_clear_error()
            let chunk = min(bytes.count - off, 1 << 20)
            let n = SSL_write(ssl, bytes.baseAddress! + off, Int32(chunk))
            if n <= 0 { throw .protocolError(OpenSSLError.drain("write")) }
            off += Int(n)
        }
    }

    /// Gives back what an idle connection does not need: OpenSSL's record buffers
    /// when empty, the read BIO once drained if it grew past `keep` bytes (a BIO
    /// keeps its largest size: the handshake's few KB, or a burst's more), and the
    /// output queue when empty.
    public func releaseIdleBuffers(keep: Int = 512) {
        _ = SSL_free_buffers(ssl)
        if rh_BIO_pending(rbio) == 0 && rh_BIO_mem_capacity(rbio) > keep, let r = BIO_new(BIO_s_mem()) {
            rh_BIO_set_mem_eof_return(r, -1)
            SSL_set0_rbio(ssl, r)  // frees the old one
            rbio = r
        }
        output.releaseIfEmpty()
    }

    /// Queues close_notify.
    public func close() {
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    /// The protocol the server picked with ALPN, if any.
    public var alpnProtocol: String? {
        var p: UnsafePointer<UInt8>?
        var len: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &p, &len)
        guard let p, len > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: p, count: Int(len)), as: UTF8.self)
    }

    public var protocolVersion: String { String(cString: SSL_get_version(ssl)) }

    /// Why the peer's certificate chain fails verification against `context`'s trust
    /// store (its CA and CRL, as reloaded), or nil when it verifies.
    public func peerVerifyError(against context: TLSContext) -> String? {
        guard let cert = SSL_get1_peer_certificate(ssl) else { return "no peer certificate" }
        defer { X509_free(cert) }
        guard let store = SSL_CTX_get_cert_store(context.ctx), let vctx = X509_STORE_CTX_new() else { return "no trust store" }
        defer { X509_STORE_CTX_free(vctx) }
        guard X509_STORE_CTX_init(vctx, store, cert, SSL_get_peer_cert_chain(ssl)) == 1 else { return "cannot verify" }
        _ = X509_STORE_CTX_set_purpose(vctx, X509_PURPOSE_SSL_CLIENT)
        if X509_verify_cert(vctx) == 1 { return nil }
        let err = X509_STORE_CTX_get_error(vctx)
        ERR_clear_error()
        return String(cString: X509_verify_cert_error_string(Int(err)))
    }

    /// Seconds until the peer certificate expires (negative once expired); nil without one.
    public var peerCertificateSecondsLeft: Int? {
        guard let cert = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(cert) }
        guard let notAfter = X509_get0_notAfter(cert) else { return nil }
        var days: Int32 = 0
        var secs: Int32 = 0
        guard ASN1_TIME_diff(&days, &secs, nil, notAfter) == 1 else { return nil }
        return Int(days) * 86_400 + Int(secs)
    }

    /// Whether the peer sent a certificate and its chain verified (against the trust
    /// file and CRL of the context at handshake time).
    public var peerCertificateVerified: Bool {
        guard let cert = SSL_get1_peer_certificate(ssl) else { return false }
        X509_free(cert)
        return SSL_get_verify_result(ssl) == Int(X509_V_OK)
    }

    /// The verified peer certificate, DER (nil without one): what EST's
    /// /simplereenroll compares the request with.
    public var peerCertificateDER: [UInt8]? {
        guard let cert = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(cert) }
        guard SSL_get_verify_result(ssl) == Int(X509_V_OK) else { return nil }
        let n = i2d_X509(cert, nil)
        guard n > 0 else { return nil }
        var out = [UInt8](repeating: 0, count: Int(n))
        let written = out.withUnsafeMutableBufferPointer { b -> Int32 in
            var o: UnsafeMutablePointer<UInt8>? = b.baseAddress
            return i2d_X509(cert, &o)
        }
        return written == n ? out : nil
    }

    /// Whether the verified peer certificate's subject has an OU (organizational unit)
    /// equal to `unit`, e.g. "reversehttp-user" (PKI.userMarker). False without a verified certificate.
    public func peerHasOrganizationalUnit(_ unit: String) -> Bool {
        guard let cert = SSL_get1_peer_certificate(ssl) else { return false }
        defer { X509_free(cert) }
        guard SSL_get_verify_result(ssl) == Int(X509_V_OK), let name = X509_get_subject_name(cert) else { return false }
        let want = Array(unit.utf8)
        var idx = X509_NAME_get_index_by_NID(name, NID_organizationalUnitName, -1)
        var guardCount = 0
        while idx >= 0 && guardCount < 64 {
            guardCount += 1
            if let entry = X509_NAME_get_entry(name, idx), let data = X509_NAME_ENTRY_get_data(entry),
               TLSConnection.asn1Equals(data, want) {
                return true
            }
            idx = X509_NAME_get_index_by_NID(name, NID_organizationalUnitName, idx)
        }
        return false
    }

    static func asn1Equals(_ data: UnsafeMutablePointer<ASN1_STRING>, _ want: [UInt8]) -> Bool {
        var utf8: UnsafeMutablePointer<UInt8>?
        let len = ASN1_STRING_to_UTF8(&utf8, data)
        guard len >= 0, let utf8 else { return false }
        defer { rh_OPENSSL_free(utf8) }
        guard Int(len) == want.count else { return false }
        for i in 0..<want.count where utf8[i] != want[i] { return false }
        return true
    }

    /// The peer certificate's notAfter in Unix seconds (nil without one).
    public var peerCertificateNotAfter: Int64? {
        guard let cert = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(cert) }
        guard let notAfter = X509_get0_notAfter(cert), let epoch = ASN1_TIME_set(nil, 0) else { return nil }
        defer { ASN1_STRING_free(epoch) }
        var days: Int32 = 0
        var secs: Int32 = 0
        guard ASN1_TIME_diff(&days, &secs, epoch, notAfter) == 1 else { return nil }
        return Int64(days) * 86_400 + Int64(secs)
    }

    /// Subject common name of the verified peer certificate (nil without one).
    public var peerCommonName: String? {
        guard let cert = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(cert) }
        guard SSL_get_verify_result(ssl) == Int(X509_V_OK) else { return nil }
        guard let name = X509_get_subject_name(cert) else { return nil }
        let idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1)
        guard idx >= 0 else { return nil }
        // A second CN makes the identity ambiguous: refuse it.
        if X509_NAME_get_index_by_NID(name, NID_commonName, idx) >= 0 { return nil }
        guard let entry = X509_NAME_get_entry(name, idx), let data = X509_NAME_ENTRY_get_data(entry) else { return nil }
        var utf8: UnsafeMutablePointer<UInt8>?
        let len = ASN1_STRING_to_UTF8(&utf8, data)
        guard len > 0, let utf8 else { return nil }
        defer { rh_OPENSSL_free(utf8) }
        let bytes = UnsafeBufferPointer(start: utf8, count: Int(len))
        if bytes.contains(0) { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The write BIO's method: every write appends to the ByteQueue in the BIO's data
/// (always all of it: a queue takes everything, like a memory BIO); a flush is a
/// no-op. C callbacks are thunks that unwrap the queue and call one method.
nonisolated(unsafe) private let queueBIOMethod: OpaquePointer? = {
    guard let m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "reversehttp-queue") else { return nil }
    _ = BIO_meth_set_write(m) { bio, data, len in
        guard let bio, let data, len > 0, let queue = BIO_get_data(bio) else { return 0 }
        Unmanaged<ByteQueue>.fromOpaque(queue).takeUnretainedValue()
            .append(UnsafeRawBufferPointer(start: data, count: Int(len)))
        return len
    }
    _ = BIO_meth_set_ctrl(m) { _, cmd, _, _ in
        // SSL flushes its write BIO after each flight; nothing else is asked of it.
        cmd == BIO_CTRL_FLUSH ? 1 : 0
    }
    return m
}()
