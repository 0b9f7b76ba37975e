// RequestQueue is where a request waits when its device cannot take it right
// now, instead of getting a needless 503 (HAProxy answers 503 at once):
//  - every connection of the device is at its MAX_CONCURRENT_STREAMS: the request
//    waits (at most `queue_timeout_ms`, at most `queue_max` per device) for a
//    stream to end;
//  - the device lost its last connection less than a minute ago: the request
//    waits `grace_ms` in case it is re-dialing, then gets 503 with Retry-After
//    (a host that was not connected lately gets 503 at once);
//  - the device is known to be down (health checks failing): 503 at once.
// Requests leave in arrival order as soon as a connection can take one.
import EventLoop

final class RequestQueue {
    private let loop: EventLoop
    private let settings: CurrentConfig
    private let directory: DeviceRegistry
    private let health: HealthChecker
    private var waiting: [String: [Exchange]] = [:]
    private var timers: [ObjectIdentifier: TimerID] = [:]
    /// When devices lost their last connection, for the grace period.
    private var gone: [String: UInt64] = [:]
    static let regraceWindowNs: UInt64 = 60_000_000_000

    init(loop: EventLoop, settings: CurrentConfig, directory: DeviceRegistry, health: HealthChecker) {
        self.loop = loop
        self.settings = settings
        self.directory = directory
        self.health = health
    }

    var count: Int { timers.count }
    func count(hostname: String) -> Int { waiting[hostname]?.count ?? 0 }

    func route(_ ex: Exchange) {
        let host = ex.hostname
        if let since = health.downSince(hostname: host) {
            ex.reject(503, "device for host " + host + " is down: its health checks fail (since "
                      + String((loop.now - since) / 1_000_000_000) + " s)", retryAfter: true)
            return
        }
        if (waiting[host]?.isEmpty ?? true), let dev = directory.pick(hostname: host), ex.dispatch(to: dev) {
            return
        }
        let connected = !directory.connections(hostname: host).isEmpty
        if !connected && !recentlyGone(host) {
            ex.reject(503, "no device is connected for host " + host, retryAfter: true)
            return
        }
        guard count(hostname: host) < settings.value.queueMax else {
            ex.reject(503, "device for host " + host + " is busy: " + String(settings.value.queueMax)
                      + " requests are already waiting for it", retryAfter: true)
            return
        }
        let waitMs = connected ? settings.value.queueTimeoutMs : settings.value.graceMs
        waiting[host, default: []].append(ex)
        timers[ObjectIdentifier(ex)] = loop.schedule(afterMilliseconds: waitMs) {
            self.timers[ObjectIdentifier(ex)] = nil
            let busy = !self.directory.connections(hostname: host).isEmpty
            ex.reject(503, busy ? "device for host " + host + " is busy: no connection could take the request within "
                                  + String(waitMs) + " ms"
                                : "no device is connected for host " + host, retryAfter: true)
        }
    }

    /// A connection of `hostname` came up or finished a stream: send what waits.
    func deviceAvailable(hostname: String) {
        var rounds = 0
        while rounds < 10_000, let ex = waiting[hostname]?.first, let dev = directory.pick(hostname: hostname) {
            rounds += 1
            // Off the list before dispatching: a dispatch can re-enter this queue.
            waiting[hostname]?.removeFirst()
            if waiting[hostname]?.isEmpty == true { waiting[hostname] = nil }
            if ex.dispatch(to: dev) {
                cancelTimer(ex)
            } else {
                waiting[hostname, default: []].insert(ex, at: 0)  // keeps its timer
                break
            }
        }
    }

    /// `hostname` lost its last connection: requests for it wait `grace_ms` for a
    /// while, in case it comes back.
    func deviceGone(hostname: String) {
        let now = loop.now
        if gone.count > 100_000 { gone = gone.filter { now &- $0.value < RequestQueue.regraceWindowNs } }
        gone[hostname] = now
    }

    private func recentlyGone(_ hostname: String) -> Bool {
        guard let t = gone[hostname] else { return false }
        if loop.now &- t < RequestQueue.regraceWindowNs { return true }
        gone[hostname] = nil
        return false
    }

    /// `ex` finished while waiting (the user left, or it was rejected).
    func remove(_ ex: Exchange) {
        cancelTimer(ex)
        guard var list = waiting[ex.hostname] else { return }
        list.removeAll { $0 === ex }
        waiting[ex.hostname] = list.isEmpty ? nil : list
    }

    private func cancelTimer(_ ex: Exchange) {
        loop.cancel(timers.removeValue(forKey: ObjectIdentifier(ex)))
    }
}
