// ConnectionBudget counts users' connections (every accepted socket on the public
// listener, TLS handshakes and protocol sniffing included), in all and per source
// address, so that users can never take the descriptors that devices re-dialing and
// the admin listener need: the cap is the open-file limit minus a reserve, and
// device connections are not counted here. Under pressure, idle connections get a
// shorter idle timeout (HAProxy and nginx do the same with their idle pools).
//   below 50% of the cap   idle_timeout_ms
//   from 50%               at most 10 s
//   from 75%               at most 1 s
// At the cap the gateway closes the oldest idle user connection for a newcomer, or
// refuses it (accept, close) when none is idle; over the per-address cap it refuses.
// An "address" is an IPv4 address or an IPv6 /64 (one host usually holds a whole
// /64); a proxy listed in `trusted_proxies` has no per-address share.
import FleetAccess

struct ConnectionBudget {
    enum Verdict: Equatable { case admit, full, addressFull }

    /// Descriptors kept for devices, the admin listener, logs and config files.
    static func reserve(fileLimit: Int) -> Int { max(128, fileLimit / 4) }

    /// Descriptors the gateway holds besides connections: listeners, epoll, signals,
    /// timers, logs (counted generously).
    static let baseDescriptors = 16
    /// Descriptors always left for the admin listener and the gateway's own files:
    /// device-listener connections still in their handshake (strangers until their
    /// certificate is checked) make room below this (Gateway.makeRoomForDeviceHandshake).
    static let adminMargin = 64

    let limit: Int
    let perAddress: Int
    private(set) var total = 0
    private var byAddress: [String: Int] = [:]

    /// `limit`/`perAddress` 0: derived from the open-file limit (the cap is the limit
    /// minus `reserve`, at least 16; an address may hold a 16th of it, at least 64).
    init(fileLimit: Int, limit: Int = 0, perAddress: Int = 0) {
        let l = limit > 0 ? limit : max(16, fileLimit - ConnectionBudget.reserve(fileLimit: fileLimit))
        self.limit = l
        self.perAddress = perAddress > 0 ? perAddress : min(l, max(64, l / 16))
    }

    func connections(from address: String) -> Int { byAddress[ConnectionBudget.share(address)] ?? 0 }

    /// Whether one more connection from `address` fits (`shared`: false for a trusted
    /// proxy, which speaks for many users).
    func verdict(_ address: String, shared: Bool = true) -> Verdict {
        if shared && connections(from: address) >= perAddress { return .addressFull }
        return total >= limit ? .full : .admit
    }

    mutating func add(_ address: String) {
        total += 1
        byAddress[ConnectionBudget.share(address), default: 0] += 1
    }

    mutating func remove(_ address: String) {
        let key = ConnectionBudget.share(address)
        guard let n = byAddress[key], n > 0 else { return }
        total -= 1
        byAddress[key] = n == 1 ? nil : n - 1
    }

    /// What one per-address share is counted under: the IPv4 address, or the /64 of
    /// an IPv6 address (an IPv4-mapped one counts as its IPv4 address).
    static func share(_ address: String) -> String {
        guard address.utf8.contains(0x3A), let bytes = AddressLiteral.parse(address).map(AddressLiteral.unmapped) else { return address }
        guard bytes.count == 16 else { return bytes.map { String($0) }.joined(separator: ".") }
        let hex: [Character] = Array("0123456789abcdef")
        var key = ""
        for b in bytes[0..<8] {
            key.append(hex[Int(b >> 4)])
            key.append(hex[Int(b & 15)])
        }
        return key + "::/64"
    }

    /// The idle timeout for a connection that becomes idle now.
    func idleTimeout(base: Int) -> Int {
        if total * 4 >= limit * 3 { return min(base, 1_000) }
        if total * 2 >= limit { return min(base, 10_000) }
        return base
    }
}
