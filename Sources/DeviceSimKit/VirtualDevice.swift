// One simulated device: its own name, certificate and faults, driving the real
// agent engine (Agent, Dialer, TLS, HTTP/2, liveness) with the simulated API
// served in-process. A device that enrolls (--enroll-token-dir) first runs the
// agent's Enrollment (EST, its token file, its key and certificate files), then
// the Agent on what it wrote, which renews it as a board's agent does.
import EventLoop
import TLS
import AgentKit

public final class VirtualDevice {
    public let name: String
    let index: Int
    /// Nil until the device has its certificate (while it enrolls).
    private(set) var agent: Agent?
    let stats: FleetStats
    let loop: EventLoop
    private let logger: Logger
    private let config: AgentConfig
    private let faults: [FaultSpec]
    private var timers: [TimerID] = []
    /// Connections of this device that are up now.
    public private(set) var connected = 0
    /// The slow fault: each response starts this late.
    var slowMs = 0
    /// The garbage fault: responses are invalid HTTP/2.
    var garbage = false
    private var flapping = false
    private var stopped = false
    /// Set while the device gets its first certificate over EST.
    private var enrollment: Enrollment?
    /// Called once when the device has enrolled (not when it had a certificate already).
    var onEnrolled: (() -> Void)?

    init(name: String, index: Int, config: AgentConfig, loop: EventLoop, logger: Logger, tls: TLSContext?,
         identity: TLSIdentity?, faults: [FaultSpec], stats: FleetStats) {
        self.name = name
        self.index = index
        self.stats = stats
        self.faults = faults
        self.loop = loop
        self.logger = logger
        self.config = config
        if config.enrollTokenFile == nil { agent = makeAgent(tls: tls, identity: identity) }
    }

    /// The agent, serving the simulated API in-process.
    private func makeAgent(tls: TLSContext?, identity: TLSIdentity?) -> Agent {
        weak var device: VirtualDevice?
        device = self
        return Agent(config: config, loop: loop, logger: logger, tls: tls, identity: identity) { request in
            if let device { SimulatedAPI.serve(request, device: device) } else { request.reset(errorCode: 7) }
        }
    }

    /// The agent's dialers (kept here because a stopped agent lets go of them). A
    /// simulated device never reloads; an enrolled one rolls to new dialers when it
    /// renews its certificate, and the counts of the replaced ones are kept.
    private var dialers: [Dialer] = []
    private var replacedDials = 0
    private var replacedConnects = 0
    /// Total dials, and connections that came up, over every slot.
    var dialCount: Int { dialers.reduce(replacedDials) { $0 + $1.dialCount } }
    var connectCount: Int { dialers.reduce(replacedConnects) { $0 + $1.connectCount } }

    /// `onChange(before, after)` reports each change in the number of connections up.
    func start(onChange: @escaping (Int, Int) -> Void) {
        for spec in faults where spec.kind.atIssue { stats.injected(spec.kind) }
        for spec in faults where !spec.kind.atIssue { schedule(spec) }
        guard config.needsEnrollment else { return run(onChange) }
        // The agent's own enrollment (EST), then the agent on the certificate it wrote.
        let e = Enrollment(config: config, loop: loop, logger: logger,
                           seed: loop.now ^ (UInt64(index) &* 0x9E37_79B9_7F4A_7C15))
        let started = loop.now
        var failures = 0
        e.onFailure = { why in
            failures += 1
            self.stats.enrollment.failed(why, first: failures == 1)
        }
        enrollment = e
        e.enroll {
            self.enrollment = nil
            guard !self.stopped else { return }
            self.stats.enrollment.succeeded(afterMs: Int((self.loop.now - started) / 1_000_000))
            self.onEnrolled?()
            self.onEnrolled = nil
            self.run(onChange)
        }
    }

    /// Starts the agent (made now for a device that enrolls: on its own TLS context,
    /// from its certificate and key files, renewing as the agent does).
    private func run(_ onChange: @escaping (Int, Int) -> Void) {
        if agent == nil {
            do throws(OpenSSLError) {
                agent = makeAgent(tls: try TLSContext(config.tlsConfiguration()), identity: nil)
            } catch {
                logger.error("the enrolled certificate does not load: " + error.description, LogContext(device: name))
                stats.enrollment.failed("the enrolled certificate does not load: " + error.description, first: true)
                return
            }
        }
        let agent = agent!
        let renews = config.renew && config.enrollTokenFile != nil
        agent.start {
            self.update(onChange)
            // A renewal's roll retires the old dialer (which reports) before the new
            // one takes its slot: count again once the agent is done.
            if renews { self.loop.execute { self.update(onChange) } }
        }
        dialers = agent.dialers
    }

    private func update(_ onChange: (Int, Int) -> Void) {
        trackDialers()
        let before = connected
        connected = agent?.connectedCount ?? 0
        guard connected != before else { return }
        onChange(before, connected)
        if connected > before {
            if flapping { flap() }
            applyWaiting()
        }
    }

    /// Follows the agent's dialers across a renewal's roll.
    private func trackDialers() {
        guard !stopped, let agent, agent.dialers.count != dialers.count || !zip(agent.dialers, dialers).allSatisfy({ $0 === $1 }) else { return }
        for d in dialers where !agent.dialers.contains(where: { $0 === d }) {
            replacedDials += d.dialCount
            replacedConnects += d.connectCount
        }
        dialers = agent.dialers
    }

    /// Certificates this device's agent renewed.
    var renewals: Int { agent?.renewal?.renewals ?? 0 }

    func stop(done: @escaping () -> Void) {
        stopped = true
        flapping = false
        waiting.removeAll()
        for d in dialers { d.faults?.setFrozen(false) }  // a frozen connection could not drain
        loop.cancel(flapTimer)
        flapTimer = nil
        for t in timers { loop.cancel(t) }
        timers.removeAll()
        enrollment?.cancel()
        enrollment = nil
        onEnrolled = nil
        guard let agent else { return done() }
        agent.stop(done: done)
    }

    // MARK: Faults

    private func schedule(_ spec: FaultSpec) {
        after(seconds: spec.at) { self.begin(spec) }
    }

    /// Connection faults due while no connection is up, applied when one comes up.
    private var waiting: [FaultSpec] = []

    private func begin(_ spec: FaultSpec) {
        guard !stopped else { return }
        if let every = spec.every { after(seconds: every) { self.begin(spec) } }
        if spec.kind.needsConnection && connected == 0 {
            if !waiting.contains(spec) { waiting.append(spec) }
            return
        }
        apply(spec)
    }

    private func applyWaiting() {
        let due = waiting
        waiting.removeAll()
        for spec in due { apply(spec) }
    }

    /// Counted once it has done something.
    private func apply(_ spec: FaultSpec) {
        stats.injected(spec.kind)
        switch spec.kind {
        case .drop:
            for d in dialers { d.faults?.drop() }
        case .corrupt:
            for d in dialers { d.faults?.injectGarbage(Array("this is not HTTP/2\r\n\r\n".utf8) + [0xff, 0, 0, 0x07, 0xff]) }
        case .freeze:
            for d in dialers { d.faults?.setFrozen(true) }
        case .slow:
            slowMs = spec.delayMs
        case .garbage:
            garbage = true
        case .flap:
            flapping = true
            upMs = spec.upMs
            flap()
        case .wrongCA, .expired:
            break
        }
        if let duration = spec.duration { after(seconds: duration) { self.end(spec) } }
    }

    private func end(_ spec: FaultSpec) {
        guard !stopped else { return }
        switch spec.kind {
        case .freeze: for d in dialers { d.faults?.setFrozen(false) }
        case .slow: slowMs = 0
        case .garbage: garbage = false
        case .flap: flapping = false
        default: break
        }
    }

    private var upMs = 1_000
    private var flapTimer: TimerID?

    /// Drops the connections `upMs` after they came up, while flapping.
    private func flap() {
        guard flapTimer == nil, connected > 0 else { return }
        flapTimer = loop.schedule(afterMilliseconds: upMs) {
            self.flapTimer = nil
            guard self.flapping else { return }
            for d in self.dialers { d.faults?.drop() }
        }
    }

    private func after(seconds: Double, _ work: @escaping () -> Void) {
        let id = loop.schedule(afterMilliseconds: Int(seconds * 1000)) { work() }
        timers.append(id)
        // A repeating fault adds one timer per round; the oldest have fired long ago.
        if timers.count > 64 { timers.removeFirst(timers.count - 64) }
    }
}
