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
