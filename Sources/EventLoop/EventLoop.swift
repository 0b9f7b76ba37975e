// One event loop per thread, on epoll. It owns readiness callbacks for file
// descriptors, a timer queue driven by an injected clock, deferred tasks and
// signals (through signalfd). Nothing inside locks: all state belongs to the thread
// that calls `run()`.
//
// Why epoll and not libevent: the loop is this one file, the timers must run on
// an injected clock (libevent's cannot), and the agent ships without one more
// shared library on the board. See docs/architecture.md.
import CLibc

public struct IOEvents: Equatable {
    public var readable: Bool
    public var writable: Bool
    /// The peer shut down its side, or the socket failed: a read tells which.
    public var hangup: Bool
    /// EPOLLERR or EPOLLHUP: reported even when neither reading nor writing is
    /// watched, so an owner that paused reading must still act on it.
    public var failed: Bool
}

public final class EventLoop {
    private final class Registration {
        let fd: Int32
        /// Tells a stale event for a closed fd from one for a new fd with the same number.
        let generation: UInt32
        var callback: (IOEvents) -> Void
        var readable: Bool
        var writable: Bool
        init(fd: Int32, generation: UInt32, readable: Bool, writable: Bool, callback: @escaping (IOEvents) -> Void) {
            self.fd = fd
            self.generation = generation
            self.readable = readable
            self.writable = writable
            self.callback = callback
        }
    }

    public let clock: Clock
    private let epfd: Int32
    private var registrations: [Int32: Registration] = [:]
    private var generation: UInt32 = 0
    private var events = [epoll_event](repeating: epoll_event(), count: 64)
    private var timers = TimerQueue()
    private var deferred: [() -> Void] = []
    private var running = false
    private var signalFD: Int32 = -1
    private var signalHandler: ((Int32) -> Void)?

    /// Scratch space for one socket read and one TLS decrypt; shared by every
    /// connection on this loop, so an idle connection holds no read buffer.
    public let readBuffer: UnsafeMutableRawBufferPointer
    public let plaintextBuffer: UnsafeMutableRawBufferPointer

    public init(clock: Clock = .system) {
        self.clock = clock
        readBuffer = .allocate(byteCount: 64 * 1024, alignment: 16)
        plaintextBuffer = .allocate(byteCount: 64 * 1024, alignment: 16)
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        precondition(epfd >= 0, "epoll_create1 failed")
    }

    deinit {
        readBuffer.deallocate()
        plaintextBuffer.deallocate()
        if signalFD >= 0 { close(signalFD) }
        close(epfd)
    }

    public var now: UInt64 { clock.now() }
    public var registeredCount: Int { registrations.count }
    public var timerCount: Int { timers.count }
    /// Entries in the timer heap, cancelled ones not yet dropped included.
    public var timerHeapEntries: Int { timers.entries }

    // MARK: File descriptors

    /// Watches `fd`. The callback runs on this loop whenever `fd` is ready for what is asked.
    public func register(fd: Int32, readable: Bool = true, writable: Bool = false,
                         _ callback: @escaping (IOEvents) -> Void) {
        generation &+= 1
        let reg = Registration(fd: fd, generation: generation, readable: readable, writable: writable, callback: callback)
        registrations[fd] = reg
        var ev = epoll_event()
        ev.events = mask(readable: readable, writable: writable)
        ev.data.u64 = EventLoop.key(fd: fd, generation: generation)
        let rc = epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)
        precondition(rc == 0, "epoll_ctl ADD failed")
    }

    /// Changes what `fd` is watched for; a no-op when nothing changes.
    public func modify(fd: Int32, readable: Bool, writable: Bool) {
        guard let reg = registrations[fd] else { return }
        if reg.readable == readable && reg.writable == writable { return }
        reg.readable = readable
        reg.writable = writable
        var ev = epoll_event()
        ev.events = mask(readable: readable, writable: writable)
        ev.data.u64 = EventLoop.key(fd: fd, generation: reg.generation)
        _ = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev)
    }

    /// Stops watching `fd` (the caller still owns and closes it).
    public func unregister(fd: Int32) {
        guard registrations.removeValue(forKey: fd) != nil else { return }
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil)
    }

    private static func key(fd: Int32, generation: UInt32) -> UInt64 {
        UInt64(generation) << 32 | UInt64(UInt32(bitPattern: fd))
    }

    private func mask(readable: Bool, writable: Bool) -> UInt32 {
        var m: UInt32 = 0
        if readable { m |= EPOLLIN.rawValue | EPOLLRDHUP.rawValue }
        if writable { m |= EPOLLOUT.rawValue }
        return m
    }

    // MARK: Timers and tasks

    @discardableResult
    public func schedule(afterNanoseconds delay: UInt64, _ callback: @escaping () -> Void) -> TimerID {
        timers.add(deadline: clock.now() &+ delay, callback)
    }

    @discardableResult
    public func schedule(afterMilliseconds ms: Int, _ callback: @escaping () -> Void) -> TimerID {
        schedule(afterNanoseconds: Duration.ms(ms), callback)
    }

    public func cancel(_ timer: TimerID?) {
        if let timer { timers.cancel(timer) }
    }

    /// Runs `task` on the next turn of the loop, after the current callback returns.
    public func execute(_ task: @escaping () -> Void) {
        deferred.append(task)
    }

    /// Runs every timer that is due now (tests call this after moving a ManualClock).
    public func fireDueTimers() {
        var rounds = 0
        while rounds < 64 {
            rounds += 1
            let due = timers.popDue(now: clock.now())
            if due.isEmpty { break }
            for cb in due { cb() }
        }
        runDeferred()
    }

    private func runDeferred() {
        var rounds = 0
        while !deferred.isEmpty && rounds < 1024 {
            rounds += 1
            let tasks = deferred
            deferred.removeAll(keepingCapacity: true)
            for t in tasks { t() }
        }
    }

    // MARK: Signals

    /// Delivers `signals` to `handler` on this loop instead of their default action.
    public func handleSignals(_ signals: [Int32], _ handler: @escaping (Int32) -> Void) {
        var set = sigset_t()
        let rc = signals.withUnsafeBufferPointer { rh_block_signals($0.baseAddress, Int32($0.count), &set) }
        precondition(rc == 0, "sigprocmask failed")
        if signalFD >= 0 {
            unregister(fd: signalFD)
            close(signalFD)
        }
        signalFD = rh_signalfd(&set)
        precondition(signalFD >= 0, "signalfd failed")
        signalHandler = handler
        let sfd = signalFD
        // The loop owns the registration; an unretained reference avoids a cycle.
        let me = Unmanaged.passUnretained(self)
        register(fd: sfd) { _ in
            var info = signalfd_siginfo()
            while read(sfd, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size {
                me.takeUnretainedValue().signalHandler?(Int32(info.ssi_signo))
            }
        }
    }

    // MARK: Running

    public func stop() { running = false }

    /// Runs until `stop()` is called.
    public func run() {
        running = true
        while running { runOnce(maxWaitMilliseconds: 60_000) }
    }

    /// Waits for at most `maxWaitMilliseconds` (less when a timer or task is due), then
    /// dispatches what is ready, due timers and deferred tasks.
    public func runOnce(maxWaitMilliseconds: Int) {
        var timeout = Int32(maxWaitMilliseconds)
        if !deferred.isEmpty {
            timeout = 0
        } else if let next = timers.nextDeadline() {
            let now = clock.now()
            let waitNs = next > now ? next - now : 0
            // Round up so a timer is never woken for a hair early and spun on.
            let waitMs = (waitNs + 999_999) / 1_000_000
            if waitMs < UInt64(timeout) { timeout = Int32(waitMs) }
        }
        let n = events.withUnsafeMutableBufferPointer { epoll_wait(epfd, $0.baseAddress, 64, timeout) }
        if n > 0 {
            for i in 0..<Int(n) {
                let ev = events[i]
                let key = ev.data.u64
                let fd = Int32(bitPattern: UInt32(truncatingIfNeeded: key))
                // An fd closed earlier in this batch may already be reused: skip its stale events.
                guard let reg = registrations[fd], reg.generation == UInt32(truncatingIfNeeded: key >> 32) else { continue }
                let bits = ev.events
                let failed = (bits & (EPOLLERR.rawValue | EPOLLHUP.rawValue)) != 0
                let hup = failed || (bits & EPOLLRDHUP.rawValue) != 0
                let io = IOEvents(readable: (bits & EPOLLIN.rawValue) != 0 || hup,
                                  writable: (bits & EPOLLOUT.rawValue) != 0,
                                  hangup: hup, failed: failed)
                reg.callback(io)
            }
        }
        fireDueTimers()
    }
}
