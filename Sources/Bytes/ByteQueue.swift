// ByteQueue: an owned, growable FIFO of bytes for output that waits for the
// socket. Appends are one memcpy into the tail (no zero fill, no per-byte loop,
// also in the -Osize Embedded agent); the writer takes `readable` and says how
// much went with `consume`. The TLS write BIO appends ciphertext here directly,
// so a record goes from OpenSSL's buffer to the socket through this queue only.
import CLibc

public final class ByteQueue {
    private var storage: UnsafeMutableRawPointer?
    public private(set) var capacity = 0
    private var head = 0
    private var tail = 0
    /// Storage larger than this is given back once the queue is empty.
    public let retainLimit: Int
    /// Storage of at most this many bytes is given back each time the queue
    /// empties (0: never). A small block is cheap to get again -- malloc hands the
    /// same chunk from one write to the next -- while one kept by each of
    /// thousands of quiet connections is memory held, and once freed later, a
    /// hole in the heap that the kernel does not get back.
    public var transientLimit = 0

    public init(retainLimit: Int = 256 * 1024) { self.retainLimit = retainLimit }

    /// A `transientLimit` for output queues: storage below malloc's mmap threshold
    /// (16 KiB, rh_tune_malloc) is cheap to allocate again; a larger block is a
    /// mapping and page faults each time, so a bulk transfer keeps its storage.
    public static let smallStorage = 8 * 1024

    deinit { free(storage) }

    public var count: Int { tail - head }
    public var isEmpty: Bool { tail == head }

    /// The queued bytes, oldest first; valid until the next mutation.
    public var readable: UnsafeRawBufferPointer {
        guard let storage else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: storage + head, count: tail - head)
    }

    public func append(_ bytes: UnsafeRawBufferPointer) {
        guard let src = bytes.baseAddress, bytes.count > 0 else { return }
        reserve(bytes.count)
        memcpy(storage! + tail, src, bytes.count)
        tail += bytes.count
    }

    public func append(_ bytes: [UInt8]) { bytes.withUnsafeBytes { append($0) } }

    /// Drops the first `n` queued bytes (they were written).
    public func consume(_ n: Int) {
        precondition(n >= 0 && n <= count)
        head += n
        if head == tail {
            head = 0
            tail = 0
            if capacity > retainLimit || capacity <= transientLimit { release() }
        }
    }

    /// Moves the queued bytes to the end of `out` and empties the queue.
    public func take(into out: inout [UInt8]) {
        guard count > 0 else { return }
        out.append(contentsOf: UnsafeRawBufferPointer(start: storage! + head, count: count))
        consume(count)
    }

    /// Forgets everything queued.
    public func removeAll() {
        head = 0
        tail = 0
        if capacity > retainLimit || capacity <= transientLimit { release() }
    }

    /// Gives the storage back when nothing is queued (an idle connection).
    public func releaseIfEmpty() {
        if isEmpty { release() }
    }

    private func release() {
        free(storage)
        storage = nil
        capacity = 0
        head = 0
        tail = 0
    }

    /// Room for `n` more bytes at the tail: moves the queued bytes to the front
    /// when that makes room, else grows (at least doubling).
    private func reserve(_ n: Int) {
        if tail + n <= capacity { return }
        let live = tail - head
        if head > 0 && live + n <= capacity {
            memmove(storage!, storage! + head, live)
            head = 0
            tail = live
            return
        }
        var want = max(capacity * 2, 4096)
        while want < live + n { want *= 2 }
        let fresh = malloc(want)!
        if live > 0 { memcpy(fresh, storage! + head, live) }
        free(storage)
        storage = fresh
        capacity = want
        head = 0
        tail = live
    }
}
