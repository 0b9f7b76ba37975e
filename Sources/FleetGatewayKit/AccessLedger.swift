// AccessLedger: who last reached each device, for the admin API's
// /devices/NAME "last_access". The request path records every decided request
// (allowed or not); the admin server reads. Bounded: at most `maxDevices`
// entries, one per device name; a new device beyond that evicts an arbitrary one.
import CLibc

final class AccessLedger {
    struct Entry: Equatable {
        /// Principal.displayName, or "" for an anonymous request.
        let user: String
        /// Unix seconds.
        let at: Int
        let status: Int
    }

    static let maxDevices = 100_000
    private let capacity: Int
    private(set) var entries: [String: Entry] = [:]
    /// Unix seconds now (the tests' knob).
    private let clock: () -> Int

    init(capacity: Int = AccessLedger.maxDevices, clock: @escaping () -> Int = { Int(rh_wall_seconds()) }) {
        self.capacity = max(1, capacity)
        self.clock = clock
    }

    /// A request to `device` (its canonical name) by `user` got `status`.
    func recordAccess(device: String, user: String, status: Int) {
        if entries[device] == nil && entries.count >= capacity {
            entries.remove(at: entries.startIndex)
        }
        entries[device] = Entry(user: user, at: clock(), status: status)
    }

    func last(device: String) -> Entry? { entries[device] }

    /// Forgets a device (say one whose metrics and history should go).
    func forget(device: String) { entries[device] = nil }
}
