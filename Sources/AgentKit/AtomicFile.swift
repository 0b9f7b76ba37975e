// AtomicFile: the agent's own key and certificate files, replaced so that a
// reader (or a crash) sees the old content or the new, never a part: write a
// temporary next to the file (created exclusively, with its final mode), fsync,
// rename over the file, fsync the directory.
import CLibc

public enum AtomicFile {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Whether `path` exists (a file of any kind).
    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// The bytes of `path`, at most `limit` (nil when it cannot be read or is larger).
    public static func read(_ path: String, limit: Int = 1 << 16) -> [UInt8]? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { fread($0.baseAddress, 1, 4096, f) }
            if n == 0 { return ferror(f) != 0 ? nil : out }
            out += buf[0..<n]
            if out.count > limit { return nil }
        }
    }

    /// Replaces `path` with `bytes`, mode `mode`.
    public static func write(_ path: String, _ bytes: [UInt8], mode: Int32) throws(Failure) {
        try prepare(path, bytes, mode: mode)
        try commit(path)
    }

    /// Writes `bytes` to PATH.tmp and syncs it; `commit` puts it in place. Two
    /// files replaced together (key and certificate) are both prepared first, so
    /// that only the two renames separate the old pair from the new one.
    public static func prepare(_ path: String, _ bytes: [UInt8], mode: Int32) throws(Failure) {
        let tmp = path + ".tmp"
        _ = unlink(tmp)  // a leftover of a crash
        let fd = rh_open_new(tmp, mode)
        guard fd >= 0 else { throw failure("create " + tmp) }
        var ok = fchmod(fd, mode_t(mode)) == 0  // exactly `mode`, whatever the umask
        var done = 0
        while ok && done < bytes.count {
            let n = bytes.withUnsafeBytes { CLibc.write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n < 0 && rh_errno() == EINTR { continue }
            if n <= 0 { ok = false } else { done += n }
        }
        if ok { ok = fsync(fd) == 0 }
        let why = failure("write " + tmp)
        _ = close(fd)
        guard ok else {
            _ = unlink(tmp)
            throw why
        }
    }

    /// Renames PATH.tmp (from `prepare`) over `path` and syncs the directory.
    public static func commit(_ path: String) throws(Failure) {
        let tmp = path + ".tmp"
        guard rename(tmp, path) == 0 else {
            let e = failure("rename " + tmp + " to " + path)
            _ = unlink(tmp)
            throw e
        }
        let dfd = rh_open_directory(directory(of: path))
        if dfd >= 0 {
            _ = fsync(dfd)
            _ = close(dfd)
        }
    }

    static func directory(of path: String) -> String {
        let u = Array(path.utf8)
        var i = u.count - 1
        while i >= 0 && u[i] != UInt8(ascii: "/") { i -= 1 }
        if i < 0 { return "." }
        if i == 0 { return "/" }
        return String(decoding: u[0..<i], as: UTF8.self)
    }

    private static func failure(_ what: String) -> Failure {
        Failure(description: "cannot " + what + ": " + String(cString: strerror(rh_errno())))
    }
}
