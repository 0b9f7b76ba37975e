// One simulated device: its own name, certificate and faults, driving the real
// agent engine (Agent, Dialer, TLS, HTTP/2, liveness) with the simulated API
// served in-process.
import EventLoop
import TLS
import AgentKit

public final class VirtualDevice {
    public let name: String
    let index: Int
    let agent: Agent
    let stats: FleetStats
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

    init(name: String, index: Int, config: AgentConfig, loop: EventLoop, logger: Logger, tls: TLSContext?,
         identity: TLSIdentity?, faults: [FaultSpec], stats: FleetStats) {
        self.name = name
        self.index = index
        self.stats = stats
        self.faults = faults
        weak var device: VirtualDevice?
        agent = Agent(config: config, loop: loop, logger: logger, tls: tls, identity: identity) { request in
            if let device { SimulatedAPI.serve(request, device: device) } else { request.reset(errorCode: 7) }
        }
        device = self
    }

    /// The agent's dialers (a simulated device never reloads, so they stay the same;
    /// kept here because a stopped agent lets go of them).
    private var dialers: [Dialer] = []
    /// Total dials, and connections that came up, over every slot.
    var dialCount: Int { dialers.reduce(0) { $0 + $1.dialCount } }
    var connectCount: Int { dialers.reduce(0) { $0 + $1.connectCount } }

    /// `onChange(before, after)` reports each change in the number of connections up.
    func start(onChange: @escaping (Int, Int) -> Void) {
        for spec in faults where spec.kind.atIssue { stats.injected(spec.kind) }
        agent.start {
            let before = self.connected
            self.connected = self.agent.connectedCount
            guard self.connected != before else { return }
            onChange(before, self.connected)
            if self.connected > before {
                if self.flapping { self.flap() }
                self.applyWaiting()
            }
        }
        dialers = agent.dialers
        for spec in faults where !spec.kind.atIssue { schedule(spec) }
    }

    func stop(done: @escaping () -> Void) {
        stopped = true
        flapping = false
        waiting.removeAll()
        for d in dialers { d.faults?.setFrozen(false) }  // a frozen connection could not drain
        agent.loop.cancel(flapTimer)
        flapTimer = nil
        for t in timers { agent.loop.cancel(t) }
        timers.removeAll()
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
        flapTimer = agent.loop.schedule(afterMilliseconds: upMs) {
            self.flapTimer = nil
            guard self.flapping else { return }
            for d in self.dialers { d.faults?.drop() }
        }
    }

    private func after(seconds: Double, _ work: @escaping () -> Void) {
        let id = agent.loop.schedule(afterMilliseconds: Int(seconds * 1000)) { work() }
        timers.append(id)
        // A repeating fault adds one timer per round; the oldest have fired long ago.
        if timers.count > 64 { timers.removeFirst(timers.count - 64) }
    }
}
