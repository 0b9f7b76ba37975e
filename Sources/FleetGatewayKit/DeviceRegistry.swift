// The registry of device sessions, keyed by hostname. Today an in-memory map on
// the gateway's loop; behind `DeviceDirectory` so that a directory shared by
// several gateway nodes (etcd, Redis) can take its place later.

protocol DeviceDirectory: AnyObject {
    func add(_ c: DeviceConnection)
    func remove(_ c: DeviceConnection)
    /// The connection that should carry the next request for `hostname`, if any.
    func pick(hostname: String) -> DeviceConnection?
    func connections(hostname: String) -> [DeviceConnection]
    var hostnames: [String] { get }
    var deviceCount: Int { get }
}

final class DeviceRegistry: DeviceDirectory {
    private var byHost: [String: [DeviceConnection]] = [:]

    func add(_ c: DeviceConnection) {
        byHost[c.identity.hostname, default: []].append(c)
    }

    func remove(_ c: DeviceConnection) {
        guard var list = byHost[c.identity.hostname] else { return }
        list.removeAll { $0 === c }
        byHost[c.identity.hostname] = list.isEmpty ? nil : list
    }

    /// Fewest streams in flight among connections that can take one more.
    func pick(hostname: String) -> DeviceConnection? {
        guard let list = byHost[hostname] else { return nil }
        var best: DeviceConnection?
        for c in list where c.canTakeRequest {
            if best == nil || c.inFlight < best!.inFlight { best = c }
        }
        return best
    }

    func connections(hostname: String) -> [DeviceConnection] { byHost[hostname] ?? [] }

    var hostnames: [String] { Array(byHost.keys) }

    var deviceCount: Int { byHost.count }
}
