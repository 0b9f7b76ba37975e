// CertificateRenewal decides when the agent re-enrolls: at about two thirds of
// its certificate's life, moved by up to ±5 % of the life (drawn once per
// certificate from the agent's random source) so that a fleet enrolled at once
// does not renew at once. Timers wait at most an hour and then look again, so a
// wall clock that jumps (NTP after boot) or a suspended board only delays the
// decision by that much. A failed attempt backs off (Backoff, up to 5 min) and
// tries again, also after expiry (the server then refuses; the log says so).
// The attempt and what follows a success are injected: tests run it on a
// ManualClock without sockets.
import EventLoop
import TLS

public final class CertificateRenewal {
    /// The longest timer; the schedule is looked at again after it.
    public static let recheckMs = 3_600_000

    let loop: EventLoop
    let logger: Logger
    let device: String
    /// Unix seconds now.
    let wallClock: () -> Int64
    /// The current certificate (nil: unreadable).
    var certificate: () -> CertificateInfo?
    /// One renewal of this certificate; its callback gets nil on success or why not.
    var attempt: (CertificateInfo, @escaping (String?) -> Void) -> Void
    /// After a success (the agent rolls its connections).
    var renewed: () -> Void
    private var jitter: Jitter
    private var backoff = Backoff(baseMs: 1_000, capMs: 300_000)
    private var timer: TimerID?
    private var stopped = false
    private var running = false
    private var lastProblem = ""
    /// The jitter drawn for the certificate ending at `jitterFor`.
    private var jitterFor: Int64 = 0
    private var jitterSeconds: Int64 = 0
    public private(set) var renewals = 0

    public init(loop: EventLoop, logger: Logger, device: String, seed: UInt64, wallClock: @escaping () -> Int64,
                certificate: @escaping () -> CertificateInfo?, attempt: @escaping (CertificateInfo, @escaping (String?) -> Void) -> Void,
                renewed: @escaping () -> Void) {
        self.loop = loop
        self.logger = logger
        self.device = device
        self.wallClock = wallClock
        self.certificate = certificate
        self.attempt = attempt
        self.renewed = renewed
        jitter = Jitter(seed: seed)
    }

    var ctx: LogContext { LogContext(device: device) }

    public func start() { check() }

    public func stop() {
        stopped = true
        loop.cancel(timer)
        timer = nil
        attempt = { _, _ in }
        renewed = {}
        certificate = { nil }
    }

    /// When the certificate `info` is renewed (Unix seconds), with this agent's jitter.
    public func renewalTime(_ info: CertificateInfo) -> Int64 {
        let life = max(0, info.notAfter - info.notBefore)
        if jitterFor != info.notAfter {
            jitterFor = info.notAfter
            let spread = life / 10
            jitterSeconds = spread > 0 ? Int64(jitter.next(upTo: Int(spread))) - spread / 2 : 0
        }
        return info.renewalTime(perMille: 667, jitter: jitterSeconds)
    }

    /// Milliseconds to wait from `now` until `at`, at most `recheckMs`.
    public static func delayMs(until at: Int64, now: Int64) -> Int {
        let seconds = max(0, at - now)
        return seconds >= Int64(recheckMs / 1000) ? recheckMs : Int(seconds) * 1000
    }

    private func check() {
        guard !stopped, !running else { return }
        guard let info = certificate() else {
            problem("cannot read the certificate to schedule its renewal")
            schedule(CertificateRenewal.recheckMs)
            return
        }
        let at = renewalTime(info)
        let now = wallClock()
        if now >= at {
            renewNow(info)
        } else {
            schedule(CertificateRenewal.delayMs(until: at, now: now))
        }
    }

    private func schedule(_ ms: Int) {
        loop.cancel(timer)
        timer = loop.schedule(afterMilliseconds: ms) {
            self.timer = nil
            self.check()
        }
    }

    private func renewNow(_ info: CertificateInfo) {
        running = true
        logger.info("renewing the certificate", ctx)
        attempt(info) { error in
            self.running = false
            guard !self.stopped else { return }
            if let error {
                let expired = self.wallClock() >= info.notAfter ? " (the certificate has expired)" : ""
                self.problem("certificate renewal failed: " + error + expired)
                self.schedule(max(100, self.backoff.nextDelayMs { self.jitter.next(upTo: $0) }))
                return
            }
            self.backoff.reset()
            self.lastProblem = ""
            self.renewals += 1
            self.logger.notice("certificate renewed", self.ctx)
            self.renewed()
            self.check()
        }
    }

    private func problem(_ p: String) {
        if p != lastProblem {
            logger.warning(p + " (retrying with backoff)", ctx)
            lastProblem = p
        } else {
            logger.debug("again: " + p, ctx)
        }
    }
}
