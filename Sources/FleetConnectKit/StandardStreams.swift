// StandardInput and StandardOutput: fleet-connect's fds 0 and 1 on the event
// loop. A pipe, a socket or a terminal is switched to non-blocking mode and
// watched by epoll (the mode is put back by `restore()`: a terminal's mode is
// shared with the shell). A regular file or /dev/null cannot be watched by
// epoll and is always ready: it is read in turns of the loop and written
// straight through. Standard output's end (the gateway finished sending):
// shutdown(SHUT_WR) on a socket, nothing on a terminal that is also stdin,
// otherwise /dev/null takes the place of fd 1 so the reader sees EOF.
import Bytes
import CLibc
import EventLoop

enum StreamKind: Int32 {
    case closed = 0, pipe = 1, socket = 2, terminal = 3, file = 4

    init(fd: Int32) { self = StreamKind(rawValue: rh_fd_kind(fd)) ?? .file }

    var pollable: Bool { self == .pipe || self == .socket || self == .terminal }
}

/// The O_NONBLOCK flag of one fd as found, put back by `restore`.
struct BlockingMode {
    let fd: Int32
    var changed = false
    var wasNonBlocking = false

    init(fd: Int32) { self.fd = fd }

    mutating func makeNonBlocking() {
        let was = rh_fd_set_nonblocking(fd, 1)
        if was >= 0 { changed = true; wasNonBlocking = was == 1 }
    }

    mutating func restore() {
        if changed { _ = rh_fd_set_nonblocking(fd, wasNonBlocking ? 1 : 0) }
        changed = false
    }
}

final class StandardInput {
    let loop: EventLoop
    let fd: Int32 = 0
    let kind: StreamKind
    private var mode: BlockingMode
    private var registered = false
    private var paused = false
    private var reading = false
    private var ended = false
    private var turnQueued = false
    var onData: ((UnsafeRawBufferPointer) -> Void)?
    var onEOF: (() -> Void)?
    var onError: ((String) -> Void)?

    init(loop: EventLoop) {
        self.loop = loop
        kind = StreamKind(fd: 0)
        mode = BlockingMode(fd: 0)
    }

    func start() {
        guard !reading && !ended else { return }
        reading = true
        if kind == .closed {
            end()
            return
        }
        if kind.pollable {
            mode.makeNonBlocking()
            registered = true
            loop.register(fd: fd, readable: !paused, writable: false) { _ in self.readSome() }
        } else {
            queueTurn()
        }
    }

    func pause() {
        guard !paused else { return }
        paused = true
        if registered { loop.modify(fd: fd, readable: false, writable: false) }
    }

    func resume() {
        guard paused else { return }
        paused = false
        if registered { loop.modify(fd: fd, readable: true, writable: false) } else if reading { queueTurn() }
    }

    private func queueTurn() {
        guard !turnQueued && !ended && !paused else { return }
        turnQueued = true
        loop.execute {
            self.turnQueued = false
            self.readSome()
            if !self.kind.pollable { self.queueTurn() }
        }
    }

    private func readSome() {
        var rounds = 0
        while rounds < 16 && !paused && !ended {
            rounds += 1
            switch Socket.read(fd, into: loop.readBuffer) {
            case .wouldBlock:
                return
            case .eof:
                end()
                return
            case .error(let e):
                stop()
                ended = true
                onError?("reading standard input: " + String(cString: strerror(e)))
                return
            case .data(let n):
                onData?(UnsafeRawBufferPointer(rebasing: loop.readBuffer[0..<n]))
                if kind.pollable && n < loop.readBuffer.count { return }
            }
        }
    }

    private func end() {
        stop()
        ended = true
        onEOF?()
    }

    /// Stops watching fd 0 and puts its mode back.
    func stop() {
        if registered { loop.unregister(fd: fd) }
        registered = false
        mode.restore()
    }
}

final class StandardOutput {
    let loop: EventLoop
    let fd: Int32 = 1
    let kind: StreamKind
    /// Fd 0 is the same terminal: finishing must not touch it.
    let sharedWithInput: Bool
    private var mode: BlockingMode
    private let queue = ByteQueue()
    private var registered = false
    private var finishing = false
    private var failed = false
    private var closed = false
    var onDone: (() -> Void)?
    var onError: ((String) -> Void)?
    /// The queue fell to `lowWater` after having been over `highWater`.
    var onRelieved: (() -> Void)?
    private var congested = false
    static let highWater = 1 << 20
    static let lowWater = 256 * 1024

    init(loop: EventLoop, input: StandardInput) {
        self.loop = loop
        kind = StreamKind(fd: 1)
        mode = BlockingMode(fd: 1)
        var d0: UInt64 = 0, i0: UInt64 = 0, d1: UInt64 = 0, i1: UInt64 = 0
        sharedWithInput = rh_fd_dev_ino(0, &d0, &i0) == 0 && rh_fd_dev_ino(1, &d1, &i1) == 0 && d0 == d1 && i0 == i1
        if kind.pollable { mode.makeNonBlocking() }
    }

    var pending: Int { queue.count }
    /// More than `highWater` waits: stop reading what fills it.
    var isCongested: Bool { congested }

    func write(_ bytes: UnsafeRawBufferPointer) {
        guard !failed && !closed && !finishing, bytes.count > 0 else { return }
        var off = 0
        if queue.isEmpty {
            switch writeSome(bytes) {
            case .some(let n): off = n
            case .none: return
            }
        }
        if off < bytes.count {
            queue.append(UnsafeRawBufferPointer(rebasing: bytes[off...]))
            watchWritable(true)
            if queue.count > StandardOutput.highWater { congested = true }
        }
    }

    func write(_ bytes: [UInt8]) { bytes.withUnsafeBytes { write($0) } }

    /// Closes standard output once the queue is written, then calls `onDone`.
    func finish() {
        guard !finishing && !closed && !failed else { return }
        finishing = true
        if queue.isEmpty { closeOutput() }
    }

    /// Writes what the fd takes now: the count, or nil after an error (reported).
    private func writeSome(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var off = 0
        var tries = 0
        // A regular file takes everything (blocking); a pipe until it is full.
        while off < bytes.count && tries < 1024 {
            tries += 1
            let n = CLibc.write(fd, bytes.baseAddress! + off, bytes.count - off)
            if n > 0 { off += n; continue }
            let e = rh_errno()
            if n < 0 && e == EINTR { continue }
            if n < 0 && (e == EAGAIN || e == EWOULDBLOCK) { break }
            fail("writing standard output: " + String(cString: strerror(n == 0 ? EIO : e)))
            return nil
        }
        return off
    }

    private func watchWritable(_ on: Bool) {
        if on && !registered && kind.pollable {
            registered = true
            loop.register(fd: fd, readable: false, writable: true) { _ in self.flush() }
        } else if registered {
            loop.modify(fd: fd, readable: false, writable: on)
        } else if on && !kind.pollable {
            loop.execute { self.flush() }
        }
    }

    private func flush() {
        guard !failed && !closed else { return }
        guard let n = writeSome(queue.readable) else { return }
        queue.consume(n)
        if queue.isEmpty { watchWritable(false) }
        if congested && queue.count <= StandardOutput.lowWater {
            congested = false
            onRelieved?()
        }
        if queue.isEmpty && finishing { closeOutput() }
    }

    private func fail(_ why: String) {
        failed = true
        stop()
        onError?(why)
    }

    private func closeOutput() {
        closed = true
        // A terminal shared with stdin keeps its mode until the end: stdin is still read.
        stop(restoringMode: !sharedWithInput)
        switch kind {
        case .socket:
            _ = shutdown(fd, Int32(SHUT_WR))
        case .terminal where sharedWithInput:
            break
        case .closed:
            break
        default:
            // The reader sees EOF when the last reference to its pipe goes.
            if rh_fd_replace_with_null(fd) != 0 { _ = close(fd) }
        }
        onDone?()
    }

    /// Stops watching fd 1 and puts its mode back.
    func stop(restoringMode: Bool = true) {
        if registered { loop.unregister(fd: fd) }
        registered = false
        if restoringMode { mode.restore() }
    }
}
