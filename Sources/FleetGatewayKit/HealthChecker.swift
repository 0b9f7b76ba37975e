// HealthChecker checks every connected device over its own reversed connections
// (HAProxy's `check-reuse-pool`, without a server line per device): every
// `check_interval_ms` it sends `check_method check_path` to each device and
// counts answers with an expected status (by default anything below 500: a
// device that answers 401 or 404 on `/` is alive) as successes. `check_rise` successes
// in a row make a device `up`, `check_fall` failures in a row make it `down`; a
// device that is down gets 503 at once instead of requests waiting for timeouts.
import EventLoop
import HTTP1

enum HealthState: String {
    case unknown, up, down
}

struct DeviceHealth {
    var state = HealthState.unknown
    /// Monotonic time of the last state change.
    var since: UInt64
    var successes = 0
    var failures = 0
    var lastLatencyMs: Int?
    var checking = false
}

final class HealthChecker: DeviceHealthView {
    private let loop: EventLoop
    private let logger: Logger
    private let settings: CurrentConfig
    private let directory: GatewayDirectory
    private(set) var devices: [String: DeviceHealth] = [:]
    private var timer: TimerID?
    private(set) var results: [String: Int] = ["success": 0, "failure": 0, "timeout": 0]
    /// A device's state became `up`: requests waiting for it may go (RequestQueue).
    var onDeviceUp: ((String) -> Void)?

    init(loop: EventLoop, logger: Logger, settings: CurrentConfig, directory: GatewayDirectory) {
        self.loop = loop
        self.logger = logger
        self.settings = settings
        self.directory = directory
    }

    var config: GatewayConfig { settings.value }

    func start() {
        guard config.checkIntervalMs > 0 else { return }
        schedule()
    }

    func stop() {
        loop.cancel(timer)
        timer = nil
    }

    /// The devices of the round in progress, and how far it has come.
    private var round: [String] = []
    private var roundNext = 0
    private var roundStep = 0

    /// A round is spread over the interval in steps of about 100 ms (HAProxy's
    /// `spread-checks`): 10,000 devices are checked 100 at a time, not all at once.
    private var steps: Int { max(1, min(100, config.checkIntervalMs / 100)) }

    private func schedule() {
        guard config.checkIntervalMs > 0 else { return }
        timer = loop.schedule(afterMilliseconds: max(1, config.checkIntervalMs / steps)) {
            self.schedule()  // first: the cadence does not drift by the time a step takes
            self.step()
        }
    }

    private func step() {
        if roundStep == 0 {
            round = directory.hostnames
            roundNext = 0
        }
        roundStep += 1
        let end = roundStep >= steps ? round.count : min(round.count, round.count * roundStep / steps)
        if roundNext < end { check(round[roundNext..<end]) }
        roundNext = max(roundNext, end)
        if roundStep >= steps {
            roundStep = 0
            round = []
        }
    }

    func downSince(hostname: String) -> UInt64? {
        guard let h = devices[hostname], h.state == .down else { return nil }
        return h.since
    }

    /// A device's first connection came up: its health is unknown until checked.
    func deviceConnected(hostname: String) {
        if devices[hostname] == nil { devices[hostname] = DeviceHealth(since: loop.now) }
    }

    /// A device's last connection went away.
    func deviceGone(hostname: String) { devices[hostname] = nil }

    private func check(_ hostnames: ArraySlice<String>) {
        for hostname in hostnames {
            // The round's list may be up to an interval old: skip devices gone since.
            guard !directory.connections(hostname: hostname).isEmpty else { continue }
            deviceConnected(hostname: hostname)
            guard devices[hostname]?.checking == false, let dev = directory.pick(hostname: hostname) else { continue }
            devices[hostname]?.checking = true
            let check = HealthCheck(checker: self, hostname: hostname, device: dev, started: loop.now)
            var h = HTTPHeaders()
            h.add(":method", config.checkMethod)
            h.add(":scheme", "https")
            h.add(":authority", hostname)
            h.add(":path", config.checkPath)
            h.add("user-agent", "fleet-gateway-health-check")
            guard let stream = dev.submit(check, headers: h, endStream: true) else {
                devices[hostname]?.checking = false
                continue
            }
            check.stream = stream
            check.timer = loop.schedule(afterMilliseconds: config.checkTimeoutMs) {
                check.timer = nil
                check.finish(ok: false, timedOut: true)
            }
        }
    }

    func cancel(_ timer: TimerID?) { loop.cancel(timer) }

    /// One check's result for `hostname` (HealthCheck, and the tests).
    func record(_ hostname: String, ok: Bool, timedOut: Bool, latencyMs: Int) {
        results[ok ? "success" : (timedOut ? "timeout" : "failure"), default: 0] += 1
        guard var h = devices[hostname] else { return }
        h.checking = false
        h.lastLatencyMs = latencyMs
        if ok {
            h.successes += 1
            h.failures = 0
            if h.state != .up && h.successes >= config.checkRise { change(&h, to: .up, hostname) }
        } else {
            h.failures += 1
            h.successes = 0
            if h.state != .down && h.failures >= config.checkFall { change(&h, to: .down, hostname) }
        }
        devices[hostname] = h
    }

    private func change(_ h: inout DeviceHealth, to state: HealthState, _ hostname: String) {
        logger.notice("health: " + hostname + " is " + state.rawValue + " (was " + h.state.rawValue + ")")
        h.state = state
        h.since = loop.now
        if state == .up { onDeviceUp?(hostname) }
    }
}

/// One health-check request on one device connection. Only the status matters:
/// the stream is reset once it is known, so no body is ever read.
final class HealthCheck: DeviceStreamHandler {
    private let checker: HealthChecker
    let hostname: String
    let device: DeviceConnection
    let started: UInt64
    var stream: Int32 = 0
    var timer: TimerID?
    private var done = false

    init(checker: HealthChecker, hostname: String, device: DeviceConnection, started: UInt64) {
        self.checker = checker
        self.hostname = hostname
        self.device = device
        self.started = started
    }

    func deviceHeaders(_ headers: HTTPHeaders, endStream: Bool) {
        guard let s = headers.first(":status"), let status = Int(s) else { return finish(ok: false, timedOut: false) }
        if status < 200 { return }  // interim
        finish(ok: checker.config.checkStatus.contains(status), timedOut: false)
    }

    func deviceBody(_ bytes: [UInt8]) {}
    func deviceEnd() {}
    func deviceStreamClosed(errorCode: UInt32, connectionLost: Bool) { finish(ok: false, timedOut: false) }

    func finish(ok: Bool, timedOut: Bool) {
        guard !done else { return }
        done = true
        checker.cancel(timer)
        timer = nil
        device.cancel(stream: stream)
        checker.record(hostname, ok: ok, timedOut: timedOut, latencyMs: Int((checker.now &- started) / 1_000_000))
    }
}

extension HealthChecker {
    var now: UInt64 { loop.now }
}
