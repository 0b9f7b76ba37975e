// IssuedReplays: what makes /simpleenroll idempotent for a device whose answer
// was lost (issue 17, enrollment storms). The gateway uses a one-time token
// durably, signs, and answers; if the answer reaches the device after its EST
// timeout, the device asks again with the same token. It keeps its key across
// the retries of one enrollment (AgentKit/Enrollment), so the request carries
// the same public key: the same token, the same name and the same key's SHA-256
// get the certificate issued the first time, sent again. Another key or another
// name with the used token stays refused (401 "already used"), and so does
// everything once the token's own expiry has passed.
//
// Kept in memory only, at most `capacity` certificates (the oldest go first,
// expired ones before them): a gateway restart forgets them, and a device
// whose answer was lost across the restart needs a new token, as before.
import FleetPKI

struct IssuedReplays {
    struct Entry {
        let name: String
        /// SHA-256 of the request's SubjectPublicKeyInfo (CertificateRequest.publicKeyFingerprint).
        let keyFingerprint: [UInt8]
        let serial: String
        let certificateDER: [UInt8]
        /// The token's expiry, Unix seconds: no replay from then on.
        let expires: Int64
    }

    static let defaultCapacity = 10_000

    let capacity: Int
    /// By the SHA-256 of the token's secret.
    private var entries: [[UInt8]: Entry] = [:]
    /// Insertion order, for dropping the oldest.
    private var order: [[UInt8]] = []
    private var head = 0

    init(capacity: Int = IssuedReplays.defaultCapacity) {
        self.capacity = max(1, capacity)
    }

    var count: Int { entries.count }

    /// Remembers the certificate issued for the token with hash `tokenHash`.
    mutating func record(tokenHash: [UInt8], _ entry: Entry, now: Int64) {
        guard entry.expires > now else { return }
        if entries.count >= capacity { dropExpired(now: now) }
        while entries.count >= capacity, head < order.count {
            entries[order[head]] = nil
            head += 1
        }
        if entries.updateValue(entry, forKey: tokenHash) == nil { order.append(tokenHash) }
        if head > 1024 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }

    /// The certificate to send again: the token was used by `name` with this key and has not expired.
    func replay(tokenHash: [UInt8], name: String, keyFingerprint: [UInt8], now: Int64) -> Entry? {
        guard let e = entries[tokenHash], now < e.expires, e.name == name, e.keyFingerprint == keyFingerprint else { return nil }
        return e
    }

    private mutating func dropExpired(now: Int64) {
        let before = entries.count
        entries = entries.filter { $0.value.expires > now }
        guard entries.count != before else { return }
        order = order[head...].filter { entries[$0] != nil }
        head = 0
    }
}
