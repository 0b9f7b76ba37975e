// Thin, typed wrappers over the BSD socket calls the engine needs. Every socket
// is non-blocking and close-on-exec. Errors carry errno and what was attempted.
import CLibc

public struct SocketError: Error, CustomStringConvertible {
    public var operation: String
    public var errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        let text = String(cString: strerror(errno))
        return operation + ": " + text
    }
}

/// An IPv4 or IPv6 socket address.
public struct SocketAddress {
    public var storage = sockaddr_storage()

    public init() {}

    /// "1.2.3.4:80" or "[::1]:80".
    public var description: String {
        var buf = [CChar](repeating: 0, count: 64)
        var port: Int32 = 0
        var s = storage
        let ok = buf.withUnsafeMutableBufferPointer { rh_sockaddr_text(&s, $0.baseAddress, 64, &port) }
        guard ok == 0 else { return "?" }
        let host = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return storage.ss_family == sa_family_t(AF_INET6) ? "[" + host + "]:" + String(port) : host + ":" + String(port)
    }

    /// The address alone ("1.2.3.4", "::1").
    public var host: String {
        var buf = [CChar](repeating: 0, count: 64)
        var port: Int32 = 0
        var s = storage
        _ = buf.withUnsafeMutableBufferPointer { rh_sockaddr_text(&s, $0.baseAddress, 64, &port) }
        return buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}

/// "host:port", "[v6]:port" split into its parts.
public struct HostPort: Equatable {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses "host:port" or "[::1]:port"; nil when malformed or the port is out of range.
    public init?(parsing text: String) {
        let bytes = Array(text.utf8)
        guard let colon = bytes.lastIndex(of: UInt8(ascii: ":")), colon > 0, colon < bytes.count - 1 else { return nil }
        var hostBytes = Array(bytes[0..<colon])
        if hostBytes.first == UInt8(ascii: "[") {
            guard hostBytes.last == UInt8(ascii: "]"), hostBytes.count > 2 else { return nil }
            hostBytes = Array(hostBytes[1..<(hostBytes.count - 1)])
        } else if hostBytes.contains(UInt8(ascii: ":")) {
            return nil
        }
        var port = 0
        for b in bytes[(colon + 1)...] {
            guard b >= 48 && b <= 57, port < 100_000 else { return nil }
            port = port * 10 + Int(b - 48)
        }
        guard port > 0 && port <= 65535 else { return nil }
        host = String(decoding: hostBytes, as: UTF8.self)
        self.port = port
    }

    public var description: String {
        host.utf8.contains(UInt8(ascii: ":")) ? "[" + host + "]:" + String(port) : host + ":" + String(port)
    }
}

public enum Socket {
    /// Resolves `host` (name or literal) to TCP addresses, IPv4 and IPv6. Blocking (getaddrinfo).
    public static func resolve(_ endpoint: HostPort) throws(SocketError) -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(endpoint.host, String(endpoint.port), &hints, &result)
        guard rc == 0, let first = result else {
            let msg = String(cString: gai_strerror(rc))
            throw SocketError("resolve " + endpoint.host + " (" + msg + ")", errno: EHOSTUNREACH)
        }
        defer { freeaddrinfo(result) }
        return addresses(first)
    }

    /// The addresses of a getaddrinfo result list (at most 32).
    static func addresses(_ list: UnsafeMutablePointer<addrinfo>?) -> [SocketAddress] {
        var out: [SocketAddress] = []
        var cur = list
        var guardCount = 0
        while let ai = cur, guardCount < 32 {
            guardCount += 1
            if let sa = ai.pointee.ai_addr, ai.pointee.ai_addrlen <= UInt32(MemoryLayout<sockaddr_storage>.size) {
                var addr = SocketAddress()
                withUnsafeMutableBytes(of: &addr.storage) { dst in
                    dst.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: Int(ai.pointee.ai_addrlen)))
                }
                out.append(addr)
            }
            cur = ai.pointee.ai_next
        }
        return out
    }

    /// A listening socket on `endpoint` (SO_REUSEADDR; IPv6 sockets accept only IPv6).
    public static func listen(_ endpoint: HostPort, backlog: Int32 = 1024) throws(SocketError) -> Int32 {
        let addrs = try resolve(endpoint)
        guard let addr = addrs.first else { throw SocketError("listen " + endpoint.description, errno: EADDRNOTAVAIL) }
        let fd = socket(Int32(addr.storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket", errno: rh_errno()) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if addr.storage.ss_family == sa_family_t(AF_INET6) {
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        var s = addr.storage
        let len = rh_sockaddr_len(&s)
        let rc = withUnsafePointer(to: &s) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        if rc != 0 {
            let e = rh_errno()
            close(fd)
            throw SocketError("bind " + endpoint.description, errno: e)
        }
        if CLibc.listen(fd, backlog) != 0 {
            let e = rh_errno()
            close(fd)
            throw SocketError("listen " + endpoint.description, errno: e)
        }
        return fd
    }

    /// The port a socket is bound to (for listeners on port 0 in tests).
    public static func localAddress(_ fd: Int32) -> SocketAddress {
        var addr = SocketAddress()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &addr.storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return addr
    }

    public static func localPort(_ fd: Int32) -> Int {
        var port: Int32 = 0
        var buf = [CChar](repeating: 0, count: 64)
        var s = localAddress(fd).storage
        _ = buf.withUnsafeMutableBufferPointer { rh_sockaddr_text(&s, $0.baseAddress, 64, &port) }
        return Int(port)
    }

    /// Accepts one pending connection; nil when none is pending.
    public static func accept(_ listener: Int32) throws(SocketError) -> (fd: Int32, peer: SocketAddress)? {
        var addr = SocketAddress()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &addr.storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                accept4(listener, $0, &len, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            }
        }
        if fd < 0 {
            let e = rh_errno()
            if e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED { return nil }
            throw SocketError("accept", errno: e)
        }
        setNoDelay(fd)
        return (fd, addr)
    }

    /// Starts a non-blocking connect; completion is signalled by writability, then `connectResult`.
    public static func startConnect(_ addr: SocketAddress) throws(SocketError) -> Int32 {
        let fd = socket(Int32(addr.storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket", errno: rh_errno()) }
        setNoDelay(fd)
        var s = addr.storage
        let len = rh_sockaddr_len(&s)
        let rc = withUnsafePointer(to: &s) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, len) }
        }
        if rc != 0 {
            let e = rh_errno()
            if e != EINPROGRESS {
                close(fd)
                throw SocketError("connect " + addr.description, errno: e)
            }
        }
        return fd
    }

    /// 0 when the connect started by `startConnect` succeeded, else its errno.
    public static func connectResult(_ fd: Int32) -> Int32 {
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 { return rh_errno() }
        return err
    }

    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    public enum ReadResult {
        case data(Int)
        case wouldBlock
        case eof
        case error(Int32)
    }

    /// Reads into `buffer[0..<capacity]`.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> ReadResult {
        readResult { CLibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    /// Looks at what waits to be read without taking it: `.data(n)` (at least
    /// one byte), `.eof` (the peer closed), `.wouldBlock` (nothing yet) or an error.
    public static func peek(_ fd: Int32) -> ReadResult {
        var byte: UInt8 = 0
        return readResult { recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) }
    }

    /// One read-like system call, retried on EINTR (a few times at most).
    private static func readResult(_ call: () -> Int) -> ReadResult {
        var tries = 0
        while tries < 8 {
            tries += 1
            let n = call()
            if n > 0 { return .data(n) }
            if n == 0 { return .eof }
            let e = rh_errno()
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
            return .error(e)
        }
        return .wouldBlock
    }

    /// Writes as much as the kernel takes; returns the count written, 0 on EAGAIN, or an errno.
    public static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Result<Int, SocketError> {
        var tries = 0
        while tries < 8 {
            tries += 1
            let n = send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            if n >= 0 { return .success(n) }
            let e = rh_errno()
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return .success(0) }
            return .failure(SocketError("write", errno: e))
        }
        return .success(0)
    }

    public static func close(_ fd: Int32) { _ = CLibc.close(fd) }
}
