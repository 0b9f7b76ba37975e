// HTTP2Connection runs an HTTP2Session over a Transport: bytes read go into the
// session, its events go to the owner, and its output is written back, batched
// once per loop turn. Both ends of a reversed connection use it: the device's
// ReversedServer (server role) and the gateway's DeviceConnection (client role).
import Bytes
import EventLoop
import HTTP2

public final class HTTP2Connection {
    public let transport: Transport
    public let session: HTTP2Session
    let logger: Logger
    public var context: LogContext
    private var flushScheduled = false
    private var heldBack = false
    private var loggedEnd = false
    /// Frames taken from the session for one write (appended with memcpy); small
    /// storage is given back after each write, so a quiet connection holds none.
    private let out: ByteQueue = {
        let q = ByteQueue()
        q.transientLimit = ByteQueue.smallStorage
        return q
    }()
    /// Storage the frame buffer holds now (tests).
    var frameBufferCapacity: Int { out.capacity }
    /// Output queued in the transport above which nghttp2 is not asked for more:
    /// DATA then stays in the streams' queues, where producers see it and pause.
    public var writeHighWater = 64 * 1024
    /// Each event of the session, in order.
    public var onEvent: ((HTTP2Event) -> Void)?
    /// Once, when the transport is gone. Callbacks are dropped afterwards.
    public var onClose: ((CloseReason) -> Void)?
    /// Callbacks waiting for a stream's queue to drain to a mark, by stream.
    private var paused: [Int32: (mark: Int, callback: () -> Void)] = [:]
    var liveness: Liveness?
    var livenessTimer: TimerID?
    /// Reads, writes and PINGs are suspended (a simulated hung peer): SimulatedFaults.swift.
    public internal(set) var isFrozen = false

    /// PINGs the peer after `intervalMs` of silence and closes the connection when
    /// the silence lasts another `intervalMs` (0 turns it off).
    public func enableLiveness(intervalMs: Int) {
        guard intervalMs > 0 else { return }
        liveness = Liveness(intervalMs: intervalMs, now: transport.loop.now)
        scheduleLivenessTick()
    }

    func scheduleLivenessTick() {
        guard let l = liveness, transport.state != .closed else { return }
        livenessTimer = transport.loop.schedule(afterMilliseconds: l.tickMs) {
            self.livenessTimer = nil
            self.livenessTick()
        }
    }

    private func livenessTick() {
        guard var l = liveness, transport.state != .closed else { return }
        let action = l.tick(now: transport.loop.now)
        liveness = l
        switch action {
        case .none:
            // Quiet since the last tick: give back what an idle connection does not need.
            if transport.bytesIn == bytesInAtLastTick && transport.bufferedOutput == 0 {
                transport.releaseIdleMemory()
                out.releaseIfEmpty()  // the frame buffer too (a used ByteQueue keeps 4 KiB or more)
            }
        case .sendPing:
            session.ping()
            flush()
        case .dead:
            logger.warning("peer unresponsive: no answer to PING within " + String(l.intervalNs / 1_000_000) + " ms; closing", context)
            transport.close(.unresponsive(milliseconds: Int(2 * l.intervalNs / 1_000_000)))
            return
        }
        bytesInAtLastTick = transport.bytesIn
        scheduleLivenessTick()
    }

    private var bytesInAtLastTick = -1

    public init(transport: Transport, session: HTTP2Session, logger: Logger, context: LogContext) {
        self.transport = transport
        self.session = session
        self.logger = logger
        self.context = context
    }

    /// Takes over the transport's callbacks and sends what the session has to say first.
    public func start() {
        transport.onData = { bytes in self.receive(bytes) }
        transport.onDrained = {
            if self.heldBack { self.scheduleFlush() }
        }
        transport.onClose = { reason in
            self.transport.loop.cancel(self.livenessTimer)
            self.livenessTimer = nil
            self.liveness = nil
            let cb = self.onClose
            self.onClose = nil
            self.onEvent = nil
            self.paused.removeAll()
            cb?(reason)
        }
        flush()
    }

    private func receive(_ bytes: UnsafeRawBufferPointer) {
        liveness?.received(now: transport.loop.now)
        do throws(HTTP2Error) {
            try session.receive(bytes)
        } catch {
            fail(error)
            return
        }
        dispatchEvents()
        // Decoding paused (decoded headers past the session's budget): go on once
        // the events are handed over, so what one read queues stays bounded.
        while session.hasBacklog && transport.state != .closed {
            do throws(HTTP2Error) {
                try session.receiveBacklog()
            } catch {
                fail(error)
                return
            }
            dispatchEvents()
        }
        flush()
    }

    private func fail(_ error: HTTP2Error) {
        logger.warning("HTTP/2 error from peer: " + error.description, context)
        // nghttp2 returns these without queueing a GOAWAY (a flood, too many
        // CONTINUATION frames, a bad preface): say why before closing (RFC 9113 §5.4.1).
        if !session.sentGoaway { session.goaway(errorCode: error.goawayCode) }
        flush()
        transport.closeAfterFlush()
    }

    private func dispatchEvents() {
        for event in session.takeEvents() {
            if case .streamClosed(let stream, _) = event { paused[stream] = nil }
            onEvent?(event)
        }
    }

    /// Writes the session's output on the next loop turn (many calls, one write).
    public func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        transport.loop.execute { self.flush() }
    }

    public func flush() {
        flushScheduled = false
        guard transport.state != .closed, !isFrozen else { return }
        if transport.bufferedOutput >= writeHighWater {
            heldBack = true  // the transport's onDrained brings us back
            return
        }
        heldBack = false
        out.removeAll()
        do throws(HTTP2Error) {
            try session.takeOutput(into: out, limit: writeHighWater)
        } catch {
            logger.warning(error.description, context)
            transport.close()
            return
        }
        // Sending can end streams too (a RST_STREAM nghttp2 queued for a response
        // it refused closes its stream once written): report them now, not at the
        // next read, which may be seconds away.
        if session.hasEvents { transport.loop.execute { self.dispatchEvents() } }
        if !out.isEmpty {
            // More may be waiting in nghttp2: come back once the socket has taken this
            // (set before writing: a write the kernel takes at once drains synchronously).
            if out.count >= writeHighWater { heldBack = true }
            transport.write(out.readable)
            out.removeAll()
        }
        if !session.isAlive {
            if let why = session.goawaySentReason, !loggedEnd {
                loggedEnd = true
                logger.warning("closing: the peer broke HTTP/2 (sent GOAWAY " + why + ")", context)
            }
            transport.closeAfterFlush()
            return
        }
        resumeProducers()
    }

    /// After body bytes were queued on `stream`: when its queue is above the
    /// high-water mark, returns true and runs `resume` once it is back at the
    /// low-water mark (or never, if the stream closes first).
    public func pauseIfBacklogged(stream: Int32, resume: @escaping () -> Void) -> Bool {
        let share = BackPressure.share(sending: session.sendingStreamCount)
        guard session.pendingBody(stream: stream) > share else { return false }
        paused[stream] = (share / 4, resume)
        return true
    }

    /// Runs `callback` once `stream`'s queue is at or below `mark` bytes (at once if it is).
    public func whenQueue(stream: Int32, isAtMost mark: Int, _ callback: @escaping () -> Void) {
        if session.pendingBody(stream: stream) <= mark {
            callback()
        } else {
            paused[stream] = (mark, callback)
        }
    }

    private func resumeProducers() {
        guard !paused.isEmpty else { return }
        for (stream, entry) in paused where session.pendingBody(stream: stream) <= entry.mark {
            paused[stream] = nil
            entry.callback()
        }
    }

    /// Bytes read elsewhere (a protocol sniffer) that belong to this connection.
    public func feed(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { receive($0) }
    }
}
