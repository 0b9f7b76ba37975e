// The registry of device sessions, keyed by hostname. Today an in-memory map on
// the gateway's loop; behind `DeviceDirectory` so that a directory shared by
// several gateway nodes (etcd, Redis) can take its place later. Routing
// (RequestQueue) sees a connection only as a `DeviceStreamTarget`, so the rules
// are tested with fakes, without sockets. Routing
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

final class DeviceRegistry<Connection: DeviceStreamTarget>: DeviceDirectory {
    private var byHost: [String: [Connection]] = [:]

    func add(_ c: Connection) {
        byHost[c.identity.hostname, default: []].append(c)
    }

    func remove(_ c: Connection) {
        guard var list = byHost[c.identity.hostname] else { return }
        list.removeAll { $0 === c }
        byHost[c.identity.hostname] = list.isEmpty ? nil : list
    }

    func connections(hostname: String) -> [Connection] { byHost[hostname] ?? [] }

    var hostnames: [String] { Array(byHost.keys) }

    var deviceCount: Int { byHost.count }
}
