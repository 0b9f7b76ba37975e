// Reading and writing the tokens file: the only I/O of TokenStore. Writes are
// atomic (a temporary file in the same directory, fsync, rename, fsync of the
// directory) with mode 0600, under an exclusive lock of the directory so that two
// `token create` at once cannot lose one of them.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension TokenStore {
    /// Reads and parses the file at `path` (at most 1 MiB).
    public static func load(path: String) throws(TokenError) -> TokenStore {
        let bytes = try readFile(path)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw TokenError(path + ": not UTF-8 text")
        }
        return try parse(text, file: path)
    }

    /// `load`, but an absent file is an empty store (the CLI's first `token create`).
    public static func loadOrEmpty(path: String) throws(TokenError) -> TokenStore {
        var st = stat()
        if stat(path, &st) != 0 && errno == ENOENT { return TokenStore() }
        return try load(path: path)
    }

    static func readFile(_ path: String) throws(TokenError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw TokenError(path + ": " + errorText(errno)) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw TokenError(path + ": " + errorText(errno))
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
            guard out.count <= maxFileBytes else { throw TokenError(path + ": larger than 1 MiB") }
        }
        return out
    }

    /// Runs `body` holding an exclusive lock on the directory of `path`: read the
    /// store, change it, `save` it, all inside.
    public static func withLock<T>(path: String, _ body: () throws(TokenError) -> T) throws(TokenError) -> T {
        let dir = directory(of: path)
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw TokenError(dir + ": " + errorText(errno)) }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw TokenError(dir + ": cannot lock: " + errorText(errno)) }
        }
        return try body()
    }

    /// Writes `formatted()` to `path` atomically (`writeAtomically`).
    public func save(path: String) throws(TokenError) {
        try TokenStore.writeAtomically(path: path, Array(formatted().utf8))
    }

    /// Writes `bytes` to `path` atomically: a temporary file in the same directory,
    /// fsync, rename, fsync of the directory. An existing file keeps its owner, group
    /// and mode (never readable by others); a new one takes the directory's group,
    /// mode 0640. Shared by the tokens file and the enrollment tokens file.
    static func writeAtomically(path: String, _ bytes: [UInt8]) throws(TokenError) {
        let dir = TokenStore.directory(of: path)
        let temp = (dir == "/" ? "" : dir) + "/.tokens-" + TokenStore.hex(randomTempSuffix()) + ".tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw TokenError(path + ": cannot write in " + dir + ": " + TokenStore.errorText(errno)) }
        var failure: Int32 = 0
        // The gateway (its own user, in the group of its configuration directory)
        // must read the file that root writes: a file that exists keeps its owner,
        // group and mode (never readable by others); a new one takes the directory's
        // group, mode 0640. It holds hashes, not secrets.
        var st = stat()
        if stat(path, &st) == 0 {
            if fchown(fd, st.st_uid, st.st_gid) != 0 && errno != EPERM { failure = errno }
            if failure == 0 && fchmod(fd, st.st_mode & 0o660) != 0 { failure = errno }
        } else if stat(dir, &st) == 0 {
            if fchown(fd, UInt32.max, st.st_gid) != 0 && errno != EPERM { failure = errno }
            if failure == 0 && fchmod(fd, 0o640) != 0 { failure = errno }
        } else if fchmod(fd, 0o600) != 0 { failure = errno }
        var offset = 0
        while failure == 0 && offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno != EINTR { failure = errno }
                continue
            }
            offset += n
        }
        if failure == 0 && fsync(fd) != 0 { failure = errno }
        if close(fd) != 0 && failure == 0 { failure = errno }
        if failure == 0 && rename(temp, path) != 0 { failure = errno }
        if failure != 0 {
            unlink(temp)
            throw TokenError(path + ": " + TokenStore.errorText(failure))
        }
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            _ = fsync(dfd)
            close(dfd)
        }
    }

    private static func randomTempSuffix() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<8).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    /// What tells a changed tokens file: device, inode (the CLI renames a new file
    /// into place), size and modification time. nil when `path` cannot be stat'ed.
    public struct FileStamp: Equatable, Sendable {
        public let device: UInt64
        public let inode: UInt64
        public let size: Int64
        public let modifiedNs: Int64
    }

    /// The stamp of the file at `path` now (one stat call).
    public static func stamp(path: String) -> FileStamp? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        #if canImport(Darwin)
        let mtime = Int64(st.st_mtimespec.tv_sec) * 1_000_000_000 + Int64(st.st_mtimespec.tv_nsec)
        #else
        let mtime = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        #endif
        return FileStamp(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: Int64(st.st_size), modifiedNs: mtime)
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func errorText(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        return String(cString: text)
    }
}
