import COpenSSL

/// `count` bytes from OpenSSL's CSPRNG.
public func randomBytes(_ count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    let ok = out.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(count)) }
    precondition(ok == 1, "RAND_bytes failed")
    return out
}

/// SHA-1 of `bytes` (WebSocket accept keys; not for anything secret).
public func sha1(_ bytes: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 20)
    bytes.withUnsafeBufferPointer { p in out.withUnsafeMutableBufferPointer { o in _ = SHA1(p.baseAddress, p.count, o.baseAddress) } }
    return out
}

/// SHA-256 of `bytes` (token secrets are looked up by it).
public func sha256(_ bytes: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 32)
    bytes.withUnsafeBufferPointer { p in out.withUnsafeMutableBufferPointer { o in _ = SHA256(p.baseAddress, p.count, o.baseAddress) } }
    return out
}

/// Whether `a` and `b` hold the same bytes, in a time that depends on their length
/// only (CRYPTO_memcmp), not on where they first differ.
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    if a.isEmpty { return true }
    return a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in CRYPTO_memcmp(pa.baseAddress, pb.baseAddress, a.count) == 0 } }
}
