// RequestQueue decides where a request goes when it is routed, and holds it when
// its device cannot take it right now, instead of a needless 503 (HAProxy
// answers 503 at once). It returns a decision that the Exchange carries out:
//  - dispatch: a connection of the device can take a stream now (the one with
//    the fewest in flight), and nothing waits ahead of this request;
//  - wait: every connection of the device is at its MAX_CONCURRENT_STREAMS (wait
//    at most `queue_timeout_ms`, at most `queue_max` per device, for a stream to
//    end), or the device lost its last connection less than a minute ago (wait
//    `grace_ms` in case it is re-dialing);
//  - reject: 503 with Retry-After: the device is known to be down (health checks
//    failing), no device for the host was connected lately, the device's queue
//    is full, or the wait ended with no connection.
// Requests leave in arrival order as soon as a connection can take one
// (`deviceAvailable`). The queue does no I/O and arms no timer: it reads the
// injected clock (for the grace window), the settings, a DeviceDirectory and a
// DeviceHealthView, so its rules are tested with fakes and a ManualClock.
import EventLoop
import HTTPCore

/// What to do with a request now; Exchange carries it out.
enum QueueDecision<Target> {
    /// Send it on this connection now.
    case dispatch(Target)
    /// It is queued: it waits at most this long (then `RequestQueue.waitEnded`);
    /// a connection that frees up sends it earlier.
    case wait(milliseconds: Int)
    /// Answer now with `status` and `reason`, with a Retry-After when `retryAfter`.
    case reject(status: Int, reason: String, retryAfter: Bool)
}

/// A request that can wait in the queue: it is sent from there (`deviceAvailable`).
protocol QueuedRequest: AnyObject {
    associatedtype Connection
    /// Sends the request on `connection`; false when that connection refused the
    /// stream (the request then keeps its place in the queue, and its deadline).
    func dispatchFromQueue(to connection: Connection) -> Bool
}

/// Whether a device's health checks fail (HealthChecker).
protocol DeviceHealthView: AnyObject {
    /// Since when (loop clock) the device has been `down`; nil unless it is.
    func downSince(hostname: String) -> UInt64?
}

final class RequestQueue<Waiter: QueuedRequest, Directory: DeviceDirectory> where Waiter.Connection == Directory.Connection {
    typealias Decision = QueueDecision<Directory.Connection>

    private let clock: Clock
    private let settings: CurrentConfig
    private let directory: Directory
    private let health: DeviceHealthView
    private var waiting: [String: [Waiter]] = [:]
    /// When devices lost their last connection, for the grace period.
    private var gone: [String: UInt64] = [:]
    static var regraceWindowNs: UInt64 { 60_000_000_000 }
    /// Requests waiting, all devices.
    private(set) var count = 0

    init(clock: Clock, settings: CurrentConfig, directory: Directory, health: DeviceHealthView) {
        self.clock = clock
        self.settings = settings
        self.directory = directory
        self.health = health
    }

    func count(hostname: String) -> Int { waiting[hostname]?.count ?? 0 }

    /// Where a request for `host` goes now. `.wait` means it is queued.
    func route(_ w: Waiter, hostname host: String) -> Decision {
        if let since = health.downSince(hostname: host) {
            return .reject(status: 503, reason: "device for host " + host + " is down: its health checks fail (since "
                           + String((clock.now() &- since) / 1_000_000_000) + " s)", retryAfter: true)
        }
        if (waiting[host]?.isEmpty ?? true), let dev = directory.pick(hostname: host) {
            return .dispatch(dev)
        }
        return enqueue(w, hostname: host)
    }

    /// The connection `route` chose refused the stream (it is going away): the
    /// request is treated as if no connection could take it.
    func streamRefused(_ w: Waiter, hostname host: String) -> Decision { enqueue(w, hostname: host) }

    private func enqueue(_ w: Waiter, hostname host: String) -> Decision {
        let connected = directory.isConnected(hostname: host)
        if !connected && !recentlyGone(host) {
            return .reject(status: 503, reason: "no device is connected for host " + host, retryAfter: true)
        }
        let config = settings.value
        guard count(hostname: host) < config.queueMax else {
            return .reject(status: 503, reason: "device for host " + host + " is busy: " + String(config.queueMax)
                           + " requests are already waiting for it", retryAfter: true)
        }
        waiting[host, default: []].append(w)
        count += 1
        return .wait(milliseconds: connected ? config.queueTimeoutMs : config.graceMs)
    }

    /// `w` waited `waitedMs` (its `.wait`) and no connection took it: it leaves the
    /// queue, with its answer.
    func waitEnded(_ w: Waiter, hostname host: String, waitedMs: Int) -> Decision {
        remove(w, hostname: host)
        let busy = directory.isConnected(hostname: host)
        return .reject(status: 503, reason: busy ? "device for host " + host + " is busy: no connection could take the request within "
                                                   + String(waitedMs) + " ms"
                                                 : "no device is connected for host " + host, retryAfter: true)
    }

    /// A connection of `hostname` came up or finished a stream: send what waits.
    func deviceAvailable(hostname: String) {
        var rounds = 0
        while rounds < 10_000, let w = waiting[hostname]?.first, let dev = directory.pick(hostname: hostname) {
            rounds += 1
            // Off the list before dispatching: a dispatch can re-enter this queue.
            waiting[hostname]?.removeFirst()
            if waiting[hostname]?.isEmpty == true { waiting[hostname] = nil }
            count -= 1
            if !w.dispatchFromQueue(to: dev) {
                waiting[hostname, default: []].insert(w, at: 0)  // keeps its place and its deadline
                count += 1
                break
            }
        }
    }

    /// `hostname` lost its last connection: requests for it wait `grace_ms` for a
    /// while, in case it comes back.
    func deviceGone(hostname: String) {
        let now = clock.now()
        if gone.count > 100_000 { gone = gone.filter { now &- $0.value < RequestQueue.regraceWindowNs } }
        gone[hostname] = now
    }

    private func recentlyGone(_ hostname: String) -> Bool {
        guard let t = gone[hostname] else { return false }
        if clock.now() &- t < RequestQueue.regraceWindowNs { return true }
        gone[hostname] = nil
        return false
    }

    /// `w` finished while waiting (the user left, or it was answered): out of the queue.
    func remove(_ w: Waiter, hostname: String) {
        guard var list = waiting[hostname], let i = list.firstIndex(where: { $0 === w }) else { return }
        list.remove(at: i)
        count -= 1
        waiting[hostname] = list.isEmpty ? nil : list
    }
}

/// Whether a request not yet answered goes again after its stream ended (RFC 9113
/// §8.7): REFUSED_STREAM means the device did not process it; a lost connection
/// leaves that unknown, so only requests that are safe to repeat and were sent
/// whole in their HEADERS go again. Never a WebSocket, never once body bytes left,
/// and at most `maxRetries` times.
enum RetryRule {
    static let maxRetries = 2
    static let refusedStream: UInt32 = 7

    static func mayRetry(method: String, hasBody: Bool, bodySent: Bool, webSocket: Bool,
                         errorCode: UInt32, connectionLost: Bool, retries: Int) -> Bool {
        let refused = errorCode == refusedStream
        let repeatable = HTTPMethod.isIdempotent(method) && !hasBody
        return retries < maxRetries && !webSocket && !bodySent && (refused || (connectionLost && repeatable))
    }
}
