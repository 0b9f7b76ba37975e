// Transport is the only place where a connection's file descriptor is read and
// written. It runs the non-blocking connect, the TLS handshake (when a
// TLSConnection is given) and buffering of output, and hands plaintext to its
// owner through callbacks. Owners break the callback cycle by calling close().
import Bytes
import CLibc
import EventLoop
import TLS

public enum CloseReason: CustomStringConvertible {
    /// The peer closed the connection (FIN, or TLS close_notify).
    case peerClosed
    /// We closed it.
    case local
    case socket(SocketError)
    case tls(TLSError)
    /// The peer stopped answering (no PING ACK, no bytes) within the liveness bound.
    case unresponsive(milliseconds: Int)

    public var description: String {
        switch self {
        case .peerClosed: return "closed by peer"
        case .local: return "closed locally"
        case .socket(let e): return e.description
        case .tls(let e): return e.description
        case .unresponsive(let ms): return "peer silent for " + String(ms) + " ms, PING unanswered"
        }
    }
}

/// Why a connection's reading is paused. Reading resumes when no reason is left.
public struct ReadPause: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Whoever consumes what we read is behind (a full stream queue, a slow peer).
    public static let backPressure = ReadPause(rawValue: 1 << 0)
    /// HTTP/1.1 pipelining: the next request waits until the current response is done.
    public static let pipelined = ReadPause(rawValue: 1 << 1)
    /// A protocol switch (WebSocket upgrade) waits for the other side's answer.
    public static let upgrading = ReadPause(rawValue: 1 << 2)
    /// The peer sent its end of data; the answer is still being written.
    public static let peerFinished = ReadPause(rawValue: 1 << 3)
}

public final class Transport {
    public enum State { case connecting, handshaking, open, closed }

    public let loop: EventLoop
    public let fd: Int32
    public let tls: TLSConnection?
    public private(set) var state: State
    public let peer: SocketAddress
    public private(set) var bytesIn = 0
    public private(set) var bytesOut = 0

    /// TCP connected and, with TLS, handshake done.
    public var onOpen: (() -> Void)?
    /// Plaintext from the peer.
    public var onData: ((UnsafeRawBufferPointer) -> Void)?
    /// Output buffer drained (all written to the kernel).
    public var onDrained: (() -> Void)?
    /// Most bytes taken from the socket per read (at most the loop's read buffer).
    /// Smaller reads bound what one stream can queue between two pause checks.
    public var readChunk = 64 * 1024
    /// Why the socket is not read now (empty: it is read).
    public private(set) var readPause: ReadPause = []
    /// The socket is not read: back-pressure toward the peer.
    public var readPaused: Bool { !readPause.isEmpty }
    /// Called once, when the connection is gone. Callbacks are dropped afterwards.
    public var onClose: ((CloseReason) -> Void)?
    /// When set, the peer's end of data (FIN or close_notify) calls this and reading
    /// stops, but the connection stays open for our answer (HTTP/1.1 half-close).
    /// When nil, the peer's end of data closes the connection.
    public var onPeerFinished: (() -> Void)?
    private var closeDeadline: TimerID?

    /// Bytes waiting for the socket: with TLS, the connection's own queue, which
    /// its write BIO fills with ciphertext as records are made.
    private let output: ByteQueue
    private var closeWhenFlushed = false
    private var writeShutdown = false
    /// Unwatched after a clean hang-up while paused (see `handle`).
    private var hungUpWhilePaused = false
    /// The peer stopped reading (EPIPE): what we still write is dropped, and what it
    /// sent before closing -- an early answer, say a 413 to an upload -- is read
    /// before the connection closes.
    private var writeFailed = false

    /// Wraps `fd`. `connecting`: a non-blocking connect is in progress.
    public init(loop: EventLoop, fd: Int32, peer: SocketAddress, tls: TLSConnection?, connecting: Bool) {
        self.loop = loop
        self.fd = fd
        self.tls = tls
        self.peer = peer
        output = tls?.output ?? ByteQueue()
        // Thousands of quiet connections must not each keep a 4 KiB block between writes.
        output.transientLimit = ByteQueue.smallStorage
        state = connecting ? .connecting : (tls == nil ? .open : .handshaking)
    }

    /// Starts watching the socket. Call once, after setting the callbacks.
    public func start() {
        loop.register(fd: fd, readable: state != .connecting, writable: state == .connecting) { ev in
            self.handle(ev)
        }
        switch state {
        case .open:
            loop.execute { if self.state == .open { self.onOpen?() } }
        case .handshaking:
            advanceHandshake()
        default:
            break
        }
    }

    public var bufferedOutput: Int { output.count }

    /// True when the connection is open and the peer has sent nothing we have not
    /// read: no byte waiting in the socket, no end of data, no error (a peek, not
    /// a read; with TLS, records OpenSSL holds already are not seen). Asked before
    /// an idle connection carries a new request.
    public var isQuiet: Bool {
        guard state == .open, !isFrozen else { return false }
        if case .wouldBlock = Socket.peek(fd) { return true }
        return false
    }

    /// Queues plaintext for the peer and writes what the kernel takes now.
    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard state == .open || state == .handshaking, bytes.count > 0, !writeFailed, !writeShutdown else { return }
        if let tls {
            do throws(TLSError) {
                try tls.write(bytes)
            } catch {
                finish(.tls(error))
                return
            }
        } else {
            output.append(bytes)
        }
        flush()
    }

    public func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { write($0) }
    }

    /// A hung peer, simulated: see SimulatedFaults.swift.
    public internal(set) var isFrozen = false

    /// Gives back buffers an idle connection does not need (TLS record buffers,
    /// grown BIOs, an emptied output queue): with thousands of mostly idle device
    /// connections this is most of their memory.
    public func releaseIdleMemory() {
        tls?.releaseIdleBuffers()
        output.releaseIfEmpty()
    }

    /// Closes after the queued output is written.
    public func closeAfterFlush() {
        guard state != .closed else { return }
        if let tls, state == .open { tls.close() }  // close_notify, queued
        closeWhenFlushed = true
        // A peer that never reads must not keep the connection forever.
        if closeDeadline == nil {
            closeDeadline = loop.schedule(afterMilliseconds: Transport.lingerMs) {
                self.closeDeadline = nil
                self.finish(.local)
            }
        }
        flush()
    }

    /// How long `closeAfterFlush` waits for the peer to take the last bytes.
    public static let lingerMs = 10_000

    /// Closes now, dropping queued output.
    public func close() { finish(.local) }

    /// Half-closes: once the queued output is written, tells the peer we are done
    /// sending (FIN; with TLS close_notify first), while still reading what it sends
    /// (OpenSSL reads on after sending close_notify).
    public func finishWriting() {
        guard state == .open, !writeShutdown else { return }
        writeShutdown = true
        if let tls {
            tls.close()  // close_notify, queued
            flush()
        } else if bufferedOutput == 0 {
            _ = shutdown(fd, Int32(SHUT_WR))
        }
    }

    /// Closes now, for `reason`.
    public func close(_ reason: CloseReason) { finish(reason) }

    /// Stops reading for `why` until every reason is resumed; the peer's data waits
    /// in the kernel and TCP flow control slows the peer down. Each owner pauses and
    /// resumes only its own reason, so one cannot undo another's pause.
    public func pauseReading(_ why: ReadPause) {
        guard state != .closed else { return }
        let was = readPaused
        readPause.formUnion(why)
        if !was && readPaused {
            loop.modify(fd: fd, readable: false, writable: bufferedOutput > 0 || state == .connecting)
        }
    }

    public func resumeReading(_ why: ReadPause) {
        guard readPaused, state != .closed else { return }
        readPause.subtract(why)
        guard !readPaused else { return }
        if hungUpWhilePaused {
            hungUpWhilePaused = false
            loop.register(fd: fd, readable: true, writable: false) { ev in self.handle(ev) }
        } else {
            loop.modify(fd: fd, readable: state != .connecting, writable: bufferedOutput > 0 || state == .connecting)
        }
        // Plaintext already decrypted inside OpenSSL gets no new readiness event.
        if let tls, state == .open { loop.execute { if !self.readPaused { self.drainTLS(tls) } } }
    }

    // MARK: Internals

    func flush() {
        guard !isFrozen else { return }  // kept queued until thawed
        var guardCount = 0
        while !output.isEmpty && guardCount < 64 {
            guardCount += 1
            switch Socket.write(fd, output.readable) {
            case .success(let n):
                if n == 0 { guardCount = 64; break }
                output.consume(n)
                bytesOut += n
            case .failure(let e):
                if e.errno == EPIPE && state == .open && !writeFailed && !readPaused {
                    // The peer stopped reading; it may have answered first (a server
                    // refusing an upload answers, then closes). Read what it sent,
                    // on the next turn, then close.
                    writeFailed = true
                    output.removeAll()
                    loop.execute {
                        guard self.state != .closed else { return }
                        self.readAvailable()
                        if self.state != .closed { self.finish(.socket(e)) }
                    }
                    return
                }
                finish(.socket(e))
                return
            }
        }
        let pending = !output.isEmpty
        if state == .closed { return }
        loop.modify(fd: fd, readable: state != .connecting && !readPaused, writable: pending || state == .connecting)
        if !pending {
            if closeWhenFlushed {
                finish(.local)
                return
            }
            if writeShutdown { _ = shutdown(fd, Int32(SHUT_WR)) }
            onDrained?()
        }
    }

    func handle(_ ev: IOEvents) {
        if state == .connecting {
            guard ev.writable || ev.hangup else { return }
            let err = Socket.connectResult(fd)
            if err != 0 {
                finish(.socket(SocketError("connect " + peer.description, errno: err)))
                return
            }
            state = tls == nil ? .open : .handshaking
            loop.modify(fd: fd, readable: true, writable: false)
            if state == .open { onOpen?() } else { advanceHandshake() }
            return
        }
        if ev.writable { flush() }
        if state == .closed { return }
        if ev.readable && !readPaused {
            readAvailable()
        } else if ev.failed && readPaused {
            // Not reading, but the socket is dead (reset, or closed both ways): epoll
            // reports that on every turn until we act, so act now.
            let err = Socket.connectResult(fd)
            if err == 0 && writeShutdown && !readPause.contains(.peerFinished) {
                // Closed both ways cleanly (their FIN, our SHUT_WR) while paused for
                // back-pressure: what they sent before their FIN still waits in the
                // kernel. Unwatched until reading resumes, then read to the end.
                loop.unregister(fd: fd)
                hungUpWhilePaused = true
                return
            }
            finish(err == 0 ? .peerClosed : .socket(SocketError("socket", errno: err)))
        }
    }

    private func readAvailable() {
        var rounds = 0
        // Bounded per wake-up so one busy peer cannot starve the others.
        while rounds < 16 && state != .closed && !readPaused {
            rounds += 1
            let want = min(readChunk, loop.readBuffer.count)
            let result = Socket.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: loop.readBuffer[0..<want]))
            switch result {
            case .wouldBlock:
                return
            case .eof:
                peerFinishedSending()
                return
            case .error(let e):
                finish(.socket(SocketError("read", errno: e)))
                return
            case .data(let n):
                bytesIn += n
                let chunk = UnsafeRawBufferPointer(rebasing: loop.readBuffer[0..<n])
                if let tls {
                    tls.feed(chunk)
                    if state == .handshaking { advanceHandshake() }
                    if state == .open { drainTLS(tls) }
                } else {
                    onData?(chunk)
                }
                // A short read emptied the socket: the next read would only say
                // EAGAIN (epoll is level-triggered; it reports what comes later).
                if n < want { return }
            }
        }
    }

    private func advanceHandshake() {
        guard let tls else { return }
        do throws(TLSError) {
            let progress = try tls.handshake()
            flush()
            if progress == .established && state == .handshaking {
                state = .open
                onOpen?()
                // Application data may have arrived with the last handshake flight.
                if state == .open { drainTLS(tls) }
                if state == .open { releaseIdleMemory() }  // the handshake's buffers
            }
        } catch {
            // Send the alert the handshake produced before closing.
            if !output.isEmpty { _ = Socket.write(fd, output.readable) }
            finish(.tls(error))
        }
    }

    private func drainTLS(_ tls: TLSConnection) {
        var rounds = 0
        while state == .open && !readPaused && rounds < 4096 {
            rounds += 1
            do throws(TLSError) {
                switch try tls.read(into: loop.plaintextBuffer) {
                case .data(let n):
                    onData?(UnsafeRawBufferPointer(rebasing: loop.plaintextBuffer[0..<n]))
                case .wantMore:
                    // Reading may have produced output (key updates, session tickets).
                    if !output.isEmpty { flush() }
                    return
                case .closed:
                    peerFinishedSending()
                    return
                }
            } catch {
                finish(.tls(error))
                return
            }
        }
    }

    private func peerFinishedSending() {
        guard let cb = onPeerFinished else {
            finish(.peerClosed)
            return
        }
        onPeerFinished = nil
        pauseReading(.peerFinished)
        cb()
    }


    private func finish(_ reason: CloseReason) {
        guard state != .closed else { return }
        state = .closed
        loop.cancel(closeDeadline)
        closeDeadline = nil
        loop.unregister(fd: fd)
        Socket.close(fd)
        let cb = onClose
        onOpen = nil
        onData = nil
        onDrained = nil
        onClose = nil
        onPeerFinished = nil
        output.removeAll()
        cb?(reason)
    }
}
