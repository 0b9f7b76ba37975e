// TLSContext owns one SSL_CTX: certificates, trust, protocol versions and ALPN for
// one side of a connection (the agent's client, the gateway's device or public
// listener). Build it once, then make one TLSConnection per accepted or dialed socket.
import CLibc
import COpenSSL

public enum TLSVersion: Equatable {
    case tls12, tls13

    public init?(name: String) {
        switch name {
        case "1.2", "TLSv1.2", "tls1.2": self = .tls12
        case "1.3", "TLSv1.3", "tls1.3": self = .tls13
        default: return nil
        }
    }
}

public struct TLSConfiguration {
    public enum Role { case client, server }

    public var role: Role
    /// PEM certificate chain (leaf first) and its private key; the client's for mTLS.
    public var certificateFile: String?
    public var keyFile: String?
    /// PEM CA bundle that peers must chain to. For a server, setting it requires client
    /// certificates (unless `clientCertificateOptional`).
    public var trustFile: String?
    /// Server with a trust file: ask for a client certificate without requiring one. A
    /// client that sends none is accepted; one that sends a certificate failing
    /// verification (another CA, revoked, expired) is refused.
    public var clientCertificateOptional = false
    /// PEM CRL of the trust file's CA: peers whose certificates it lists are refused.
    public var crlFile: String?
    public var minimumVersion: TLSVersion = .tls13
    /// ALPN protocols, most preferred first ("h2").
    public var alpn: [String] = []
    /// A server whose ALPN list is set refuses clients that offer ALPN without a match.
    public init(role: Role) { self.role = role }
}

public final class TLSContext {
    let ctx: OpaquePointer
    public let configuration: TLSConfiguration
    /// ALPN list in wire format (length-prefixed), kept alive for the server's select callback.
    let alpnWire: [UInt8]
    /// `requireClientCertificate(onlyForALPN:)`'s protocol (empty: not set).
    var certificateOnlyFor: [UInt8] = []

    public init(_ config: TLSConfiguration) throws(OpenSSLError) {
        configuration = config
        ERR_clear_error()
        let method = config.role == .client ? TLS_client_method() : TLS_server_method()
        guard let ctx = SSL_CTX_new(method) else { throw OpenSSLError.drain("SSL_CTX_new") }
        self.ctx = ctx
        var wire: [UInt8] = []
        for p in config.alpn {
            let bytes = Array(p.utf8)
            wire.append(UInt8(bytes.count))
            wire += bytes
        }
        alpnWire = wire

        let minVersion = config.minimumVersion == .tls13 ? rh_TLS1_3_VERSION() : rh_TLS1_2_VERSION()
        _ = rh_SSL_CTX_set_min_proto_version(ctx, minVersion)
        // TLS 1.2: ECDHE with an AEAD cipher only (RFC 9113 §9.2.2 and Appendix A forbid
        // the others under HTTP/2: CBC, SHA-1 MACs, static RSA). TLS 1.3 suites are all AEAD.
        guard SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20") == 1 else {
            throw OpenSSLError.drain("set TLS 1.2 cipher list")
        }
        _ = rh_SSL_CTX_set_mode(ctx, rh_SSL_MODE_RELEASE_BUFFERS())

        if let cert = config.certificateFile {
            guard SSL_CTX_use_certificate_chain_file(ctx, cert) == 1 else {
                throw OpenSSLError.drain("load certificate " + cert)
            }
        }
        if let key = config.keyFile {
            // A private key anyone on the machine can read is not private: refuse it.
            let mode = rh_file_mode(key)
            if mode >= 0 && (mode & 0o004) != 0 {
                throw OpenSSLError("private key " + key + " is readable by others (mode " + octal(mode)
                                   + "); run: chmod 600 " + key, reasons: [])
            }
            guard SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1 else {
                throw OpenSSLError.drain("load private key " + key)
            }
            guard SSL_CTX_check_private_key(ctx) == 1 else {
                throw OpenSSLError.drain("private key " + key + " does not match the certificate")
            }
        }
        if let trust = config.trustFile {
            guard SSL_CTX_load_verify_locations(ctx, trust, nil) == 1 else {
                throw OpenSSLError.drain("load CA file " + trust)
            }
            if let crl = config.crlFile {
                guard let store = SSL_CTX_get_cert_store(ctx), let lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file()),
                      X509_load_crl_file(lookup, crl, X509_FILETYPE_PEM) > 0 else {
                    throw OpenSSLError.drain("load CRL " + crl)
                }
                X509_STORE_set_flags(store, UInt(X509_V_FLAG_CRL_CHECK))
            }
            if config.role == .server {
                // Needed for session resumption with client certificates (OpenSSL refuses
                // to resume without it, and HAProxy's dialer resumes by default).
                let sid: [UInt8] = Array("reversehttp".utf8)
                _ = sid.withUnsafeBufferPointer { SSL_CTX_set_session_id_context(ctx, $0.baseAddress, UInt32($0.count)) }
                if let names = SSL_load_client_CA_file(trust) {
                    SSL_CTX_set_client_CA_list(ctx, names)
                }
                SSL_CTX_set_verify(ctx, config.clientCertificateOptional ? SSL_VERIFY_PEER
                                   : SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
            } else {
                SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            }
        } else if config.role == .client {
            // A client without a trust file would accept any server: refuse to build one.
            throw OpenSSLError("client TLS needs a CA file to verify the server", reasons: [])
        }

        if !wire.isEmpty {
            if config.role == .client {
                let rc = wire.withUnsafeBufferPointer { SSL_CTX_set_alpn_protos(ctx, $0.baseAddress, UInt32($0.count)) }
                guard rc == 0 else { throw OpenSSLError.drain("set ALPN") }
            } else {
                SSL_CTX_set_alpn_select_cb(ctx, tlsALPNSelect, Unmanaged.passUnretained(self).toOpaque())
            }
        }
        ERR_clear_error()
    }

    deinit { SSL_CTX_free(ctx) }

    /// Server with a trust file (client certificates required, as built): require one
    /// only of clients whose ALPN offer selects `proto` (the device listener's reversed
    /// connections, "h2"); ask the others (no ALPN, or another protocol: EST's
    /// "http/1.1") for one without requiring it. Decided per connection from the
    /// ClientHello, before the server asks for a certificate. Only the gateway calls
    /// this (a method, not a configuration field, so that the agent does not link it).
    public func requireClientCertificate(onlyForALPN proto: String) {
        certificateOnlyFor = Array(proto.utf8)
        SSL_CTX_set_client_hello_cb(ctx, tlsClientHello, Unmanaged.passUnretained(self).toOpaque())
    }

    /// Whether a client whose ALPN extension (the ClientHello's, length-prefixed list)
    /// is `offered` must present a certificate: when the protocol it would get is
    /// `certificateOnlyFor` (no ALPN extension: it would get none).
    func requiresClientCertificate(alpnExtension offered: UnsafeBufferPointer<UInt8>?) -> Bool {
        guard let offered, offered.count >= 2 else { return false }
        let listLength = Int(offered[0]) << 8 | Int(offered[1])
        guard listLength == offered.count - 2 else { return true }  // malformed: the strict answer
        let list = UnsafeBufferPointer(rebasing: offered[2...])
        guard let pick = selectALPN(offered: list) else { return true }  // refused later anyway
        guard pick.length == certificateOnlyFor.count else { return false }
        for k in 0..<pick.length where list[pick.offset + k] != certificateOnlyFor[k] { return false }
        return true
    }

    /// Picks our most preferred protocol that the client offered.
    func selectALPN(offered: UnsafeBufferPointer<UInt8>) -> (offset: Int, length: Int)? {
        for ours in configuration.alpn {
            let o = Array(ours.utf8)
            var i = 0
            while i < offered.count {
                let len = Int(offered[i])
                let start = i + 1
                if start + len > offered.count { return nil }
                if len == o.count {
                    var same = true
                    for k in 0..<len where offered[start + k] != o[k] { same = false; break }
                    if same { return (start, len) }
                }
                i = start + len
            }
        }
        return nil
    }
}

func octal(_ v: Int32) -> String {
    var digits = ""
    var n = v
    for _ in 0..<4 {
        digits = String(n & 7) + digits
        n >>= 3
    }
    return digits
}

/// SSL_CTX ClientHello callback (`requireClientCertificate(onlyForALPN:)`): sets this
/// connection's verify mode from its ALPN offer (TLSContext.requiresClientCertificate).
private func tlsClientHello(_ ssl: OpaquePointer?, _ alert: UnsafeMutablePointer<Int32>?, _ arg: UnsafeMutableRawPointer?) -> Int32 {
    guard let ssl, let arg else { return 0 }  // SSL_CLIENT_HELLO_ERROR
    let ctx = Unmanaged<TLSContext>.fromOpaque(arg).takeUnretainedValue()
    var p: UnsafePointer<UInt8>?
    var len = 0
    let present = SSL_client_hello_get0_ext(ssl, 16, &p, &len) == 1  // TLSEXT_TYPE_application_layer_protocol_negotiation
    let offered = present ? p.map { UnsafeBufferPointer(start: $0, count: len) } : nil
    let required = ctx.requiresClientCertificate(alpnExtension: offered)
    SSL_set_verify(ssl, required ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, nil)
    return 1  // SSL_CLIENT_HELLO_SUCCESS
}

/// SSL_CTX ALPN select callback: a thin thunk into TLSContext.selectALPN.
private func tlsALPNSelect(_ ssl: OpaquePointer?, _ out: UnsafeMutablePointer<UnsafePointer<UInt8>?>?,
                           _ outlen: UnsafeMutablePointer<UInt8>?, _ inp: UnsafePointer<UInt8>?,
                           _ inlen: UInt32, _ arg: UnsafeMutableRawPointer?) -> Int32 {
    guard let arg, let inp, let out, let outlen else { return SSL_TLSEXT_ERR_ALERT_FATAL }
    let ctx = Unmanaged<TLSContext>.fromOpaque(arg).takeUnretainedValue()
    let offered = UnsafeBufferPointer(start: inp, count: Int(inlen))
    guard let pick = ctx.selectALPN(offered: offered) else { return SSL_TLSEXT_ERR_ALERT_FATAL }
    out.pointee = inp + pick.offset
    outlen.pointee = UInt8(pick.length)
    return SSL_TLSEXT_ERR_OK
}
