// FileStamp: a file's identity and times, for reusing what was parsed from it
// while it is unchanged (DIR/enroll-tokens, revoked.txt, issued.txt: the gateway
// reads them at every enrollment). Every writer of those files replaces them
// atomically (a new inode) and they only grow when they change, so an equal
// stamp means equal contents; the stamp is taken before reading, so a change
// during the read shows as a different stamp next time.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

public struct FileStamp: Equatable, Sendable {
    let dev: UInt64, ino: UInt64, size: Int64
    let mtime: Int, mtimeNs: Int, ctime: Int, ctimeNs: Int

    /// nil when `path` cannot be stat'ed (missing).
    public init?(_ path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        dev = UInt64(st.st_dev)
        ino = UInt64(st.st_ino)
        size = Int64(st.st_size)
        #if canImport(Darwin)
        mtime = Int(st.st_mtimespec.tv_sec); mtimeNs = Int(st.st_mtimespec.tv_nsec)
        ctime = Int(st.st_ctimespec.tv_sec); ctimeNs = Int(st.st_ctimespec.tv_nsec)
        #else
        mtime = Int(st.st_mtim.tv_sec); mtimeNs = Int(st.st_mtim.tv_nsec)
        ctime = Int(st.st_ctim.tv_sec); ctimeNs = Int(st.st_ctim.tv_nsec)
        #endif
    }
}
