// HeapTrim gives the heap's free pages back to the kernel once a storm of
// device connections is over. glibc returns free memory only from the top of the
// heap (M_TRIM_THRESHOLD, rh_tune_malloc); the TLS handshakes of a fleet dialing
// in at once leave free chunks all through it, and they stay resident. Measured
// with 10,000 devices (bench/idle_memory.py): 48.9 KiB per idle device before
// malloc_trim(0), 39.7 after. The policy is pure (HeapTrimPolicy: counts in, a
// decision out, tested without a heap); Gateway calls `tick` from a timer and
// trims when it says so.
import CLibc
import EventLoop

struct HeapTrimPolicy {
    /// Device connections opened or closed since the last trim before one is worth it.
    let threshold: Int
    /// At most this many changes in the last period: the storm is over (trimming
    /// while it goes on would only give back pages the next handshakes take again).
    let calm: Int
    private(set) var sinceTrim = 0
    private var inPeriod = 0

    init(threshold: Int = 256, calm: Int = 16) {
        self.threshold = threshold
        self.calm = calm
    }

    mutating func connectionChanged() {
        sinceTrim += 1
        inPeriod += 1
    }

    /// Called once a period: true when the heap should be trimmed now.
    mutating func tick() -> Bool {
        defer { inPeriod = 0 }
        guard sinceTrim >= threshold && inPeriod <= calm else { return false }
        sinceTrim = 0
        return true
    }
}

/// The timer and the call: every `periodMs`, asks the policy and trims.
final class HeapTrim {
    static let periodMs = 5_000
    private let loop: EventLoop
    private let logger: Logger
    private var policy = HeapTrimPolicy()
    private var timer: TimerID?

    init(loop: EventLoop, logger: Logger) {
        self.loop = loop
        self.logger = logger
    }

    func connectionChanged() { policy.connectionChanged() }

    func start() {
        timer = loop.schedule(afterMilliseconds: HeapTrim.periodMs) {
            self.timer = nil
            self.tick()
            self.start()
        }
    }

    func stop() {
        loop.cancel(timer)
        timer = nil
    }

    private func tick() {
        let changes = policy.sinceTrim
        guard policy.tick() else { return }
        let t0 = rh_monotonic_ns()
        _ = malloc_trim(0)
        let ms = (rh_monotonic_ns() - t0) / 1_000_000
        logger.notice("gave free heap back to the kernel after " + String(changes) + " device connections came or went ("
                    + String(ms) + " ms)")
    }
}
