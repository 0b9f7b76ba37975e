// JWTCache remembers verified tokens, so that a client sending the same JWT on
// every request costs one signature check, not one per request. Keyed by the
// SHA-256 of the token (the token itself is not kept). At most `capacity`
// entries; when full, the oldest insertion goes (a ring of slots: O(1) per
// insert, no scan). An entry past its principal's `expires` is never returned.
// Not thread-safe: one per event loop.
import COpenSSL

public final class JWTCache {
    struct Key: Hashable {
        var a: UInt64, b: UInt64, c: UInt64, d: UInt64
    }

    struct Entry {
        var principal: Principal
        /// Its index in `ring`.
        var slot: Int
    }

    public let capacity: Int
    private var entries: [Key: Entry] = [:]
    /// Keys in insertion order, reused round-robin once full.
    private var ring: [Key] = []
    private var next = 0

    public init(capacity: Int = 10_000) {
        self.capacity = max(1, capacity)
    }

    public var count: Int { entries.count }

    /// The principal of a token verified earlier; nil if absent or expired (then dropped).
    public func principal(for token: String, now: Int64) -> Principal? {
        let key = JWTCache.key(token)
        guard let e = entries[key] else { return nil }
        if let exp = e.principal.expires, now >= exp {
            entries[key] = nil
            return nil
        }
        return e.principal
    }

    public func insert(_ token: String, _ p: Principal) {
        let key = JWTCache.key(token)
        if entries[key] != nil {
            entries[key]!.principal = p
            return
        }
        let slot: Int
        if ring.count < capacity {
            slot = ring.count
            ring.append(key)
        } else {
            slot = next
            next = (next + 1) % capacity
            let old = ring[slot]
            // The old key may have been dropped (expired) and inserted again elsewhere.
            if entries[old]?.slot == slot { entries[old] = nil }
            ring[slot] = key
        }
        entries[key] = Entry(principal: p, slot: slot)
    }

    public func removeAll() {
        entries.removeAll()
        ring.removeAll()
        next = 0
    }

    static func key(_ token: String) -> Key {
        var digest = [UInt8](repeating: 0, count: 32)
        var token = token
        token.withUTF8 { t in
            digest.withUnsafeMutableBufferPointer { d in
                _ = EVP_Digest(t.baseAddress, t.count, d.baseAddress, nil, EVP_sha256(), nil)
            }
        }
        func word(_ i: Int) -> UInt64 {
            var v: UInt64 = 0
            for j in 0..<8 { v = v << 8 | UInt64(digest[i * 8 + j]) }
            return v
        }
        return Key(a: word(0), b: word(1), c: word(2), d: word(3))
    }
}
