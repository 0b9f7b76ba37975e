// The gateway's device directory: which connections each device has, keyed by
// the device's identity. Today an in-memory map on the gateway's loop (one
// worker, one node); routing, health checks, the admin API and the access ledger
// all ask it and nothing else, so that a directory over several workers or nodes
// (etcd) can take its place behind `DeviceDirectory` later. Routing
// (RequestQueue) sees a connection only as a `DeviceStreamTarget`, so the rules
// are tested with fakes, without sockets.

/// A device's connection as routing sees it: a DeviceConnection, or a test's fake.
protocol DeviceStreamTarget: AnyObject {
    var identity: DeviceIdentity { get }
    /// When it came up (loop clock): the oldest go first over `max_connections_per_device`.
    var connectedAt: UInt64 { get }
    /// Ready, not going away, and below the device's MAX_CONCURRENT_STREAMS.
    var canTakeStream: Bool { get }
    var streamsInFlight: Int { get }
}

/// Which connections a device has.
protocol DeviceDirectory<Connection>: AnyObject {
    associatedtype Connection: DeviceStreamTarget
    func connections(hostname: String) -> [Connection]
}

extension DeviceDirectory {
    /// The connection that should carry the next request for `hostname`, if any:
    /// fewest streams in flight among those that can take one more.
    func pick(hostname: String) -> Connection? {
        var best: Connection?
        for c in connections(hostname: hostname) where c.canTakeStream {
            if best == nil || c.streamsInFlight < best!.streamsInFlight { best = c }
        }
        return best
    }

    func isConnected(hostname: String) -> Bool { !connections(hostname: hostname).isEmpty }
}

/// The gateway's one device directory: every reversed connection that is ready,
/// by the device's identity (its name and the hostname it serves), oldest first.
/// Routing asks by hostname, the admin API and the access ledger by name.
final class DeviceRegistry<Connection: DeviceStreamTarget>: DeviceDirectory {
    private var byDevice: [DeviceIdentity: [Connection]] = [:]
    /// Which device serves a hostname, and which device has a name (one each:
    /// the hostname template maps names to hostnames one to one).
    private var byHostname: [String: DeviceIdentity] = [:]
    private var byName: [String: DeviceIdentity] = [:]

    func add(_ c: Connection) {
        let id = c.identity
        byDevice[id, default: []].append(c)
        byHostname[id.hostname] = id
        byName[id.name] = id
    }

    func remove(_ c: Connection) {
        let id = c.identity
        guard var list = byDevice[id] else { return }
        list.removeAll { $0 === c }
        guard list.isEmpty else {
            byDevice[id] = list
            return
        }
        byDevice[id] = nil
        if byHostname[id.hostname] == id { byHostname[id.hostname] = nil }
        if byName[id.name] == id { byName[id.name] = nil }
    }

    func connections(hostname: String) -> [Connection] { byHostname[hostname].flatMap { byDevice[$0] } ?? [] }

    /// The connections of the device named `name` (its certificate's CN).
    func connections(device name: String) -> [Connection] { byName[name].flatMap { byDevice[$0] } ?? [] }

    func connections(of device: DeviceIdentity) -> [Connection] { byDevice[device] ?? [] }

    /// Every device with at least one connection.
    var devices: [DeviceIdentity] { Array(byDevice.keys) }

    var hostnames: [String] { Array(byHostname.keys) }

    var deviceCount: Int { byDevice.count }

    /// The connections of `device` beyond the newest `max`, oldest first: they go
    /// (`max_connections_per_device`), so that a rebooted device never finds its
    /// name taken by its own stale connections.
    func surplus(of device: DeviceIdentity, max: Int) -> [Connection] {
        let list = (byDevice[device] ?? []).sorted { $0.connectedAt < $1.connectedAt }
        return list.count > max ? Array(list.prefix(list.count - max)) : []
    }
}
