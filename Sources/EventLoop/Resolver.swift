// Name resolution that never blocks the loop: glibc's getaddrinfo_a runs the
// lookup on its own thread and the loop polls for the answer (2 ms at first,
// then less often), giving up after a timeout. IP literals need no lookup.
import CLibc

public final class Resolution {
    private let loop: EventLoop
    private var handle: UnsafeMutablePointer<rh_resolution>?
    private var timer: TimerID?
    private var done: ((Result<[SocketAddress], SocketError>) -> Void)?
    private let endpoint: HostPort
    private let deadline: UInt64
    private var interval = 2

    /// Resolves `endpoint`; `done` runs once, on the loop (never inside this call).
    @discardableResult
    public static func start(loop: EventLoop, _ endpoint: HostPort, timeoutMs: Int = 10_000,
                             done: @escaping (Result<[SocketAddress], SocketError>) -> Void) -> Resolution {
        let r = Resolution(loop: loop, endpoint: endpoint, timeoutMs: timeoutMs, done: done)
        if rh_is_ip_literal(endpoint.host) == 1 {
            loop.execute {
                do throws(SocketError) { r.finish(.success(try Socket.resolve(endpoint))) } catch { r.finish(.failure(error)) }
            }
            return r
        }
        r.handle = rh_resolve_start(endpoint.host, Int32(endpoint.port))
        if r.handle == nil {
            loop.execute { r.finish(.failure(SocketError("resolve " + endpoint.host + " (cannot start)", errno: rh_errno()))) }
        } else {
            r.poll()
        }
        return r
    }

    private init(loop: EventLoop, endpoint: HostPort, timeoutMs: Int, done: @escaping (Result<[SocketAddress], SocketError>) -> Void) {
        self.loop = loop
        self.endpoint = endpoint
        self.done = done
        deadline = loop.now &+ Duration.ms(timeoutMs)
    }

    private func poll() {
        timer = loop.schedule(afterMilliseconds: interval) {
            self.timer = nil
            self.check()
        }
        interval = min(interval * 2, 50)
    }

    private func check() {
        guard let h = handle else { return }
        let status = rh_resolve_status(h)
        if status == -100 {  // EAI_INPROGRESS
            if loop.now >= deadline {
                finish(.failure(SocketError("resolve " + endpoint.host + " (timed out)", errno: ETIMEDOUT)))
            } else {
                poll()
            }
            return
        }
        if status != 0 {
            let msg = String(cString: gai_strerror(status))
            finish(.failure(SocketError("resolve " + endpoint.host + " (" + msg + ")", errno: EHOSTUNREACH)))
            return
        }
        let out = Socket.addresses(rh_resolve_result(h))
        finish(out.isEmpty ? .failure(SocketError("resolve " + endpoint.host + " (no address)", errno: EHOSTUNREACH)) : .success(out))
    }

    /// Stops the lookup; `done` will not run.
    public func cancel() {
        done = nil
        finish(.success([]))
    }

    private func finish(_ result: Result<[SocketAddress], SocketError>) {
        loop.cancel(timer)
        timer = nil
        if let h = handle {
            handle = nil
            Resolution.release(h, loop: loop)
        }
        let cb = done
        done = nil
        cb?(result)
    }

    /// Frees a lookup; one glibc cannot cancel yet is freed once it ends.
    private static func release(_ h: UnsafeMutablePointer<rh_resolution>, loop: EventLoop) {
        if rh_resolve_free(h) != 0 {
            loop.schedule(afterMilliseconds: 1000) { release(h, loop: loop) }
        }
    }
}
