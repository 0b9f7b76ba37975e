// systemd integration without libsystemd: the notify protocol (READY=1, STATUS=,
// WATCHDOG=1, RELOADING=1, STOPPING=1 as one datagram to $NOTIFY_SOCKET) and the
// journal's native protocol (fields in one datagram to its socket). Both are
// stable, documented interfaces (systemd's "Interface Portability and Stability"
// list). Measured on the Embedded agent: libsystemd and the libraries it pulls in
// (libgcrypt, liblzma, libzstd, liblz4, libcap) cost about 1 MiB resident, an
// eighth of the agent's idle footprint, for two datagrams.
import CLibc

public enum Systemd {
    /// Sends `state` ("READY=1", "STATUS=...") to the service manager; a no-op when
    /// not started by systemd.
    public static func notify(_ state: String) {
        guard let path = getenv("NOTIFY_SOCKET") else { return }
        var bytes = Array(state.utf8)
        _ = bytes.withUnsafeMutableBytes { rh_unix_datagram(path, $0.baseAddress, $0.count) }
    }

    /// The interval at which the service must send WATCHDOG=1 (WatchdogSec=), if any.
    public static var watchdogIntervalMicroseconds: UInt64? {
        guard let usec = getenv("WATCHDOG_USEC") else { return nil }
        if let pid = getenv("WATCHDOG_PID"), let n = Int(decimal: String(cString: pid)), let p = Int32(exactly: n), p != getpid() { return nil }
        guard let n = Int(decimal: String(cString: usec)), n > 0 else { return nil }
        return UInt64(n)
    }

    /// Sends WATCHDOG=1 from `loop` at half the WatchdogSec= interval, so a loop that
    /// is stuck stops the pings and systemd restarts the service.
    public static func startWatchdog(on loop: EventLoop) {
        guard let usec = watchdogIntervalMicroseconds else { return }
        let half = max(1, Int(usec / 2000))
        func ping() {
            notify("WATCHDOG=1")
            loop.schedule(afterMilliseconds: half) { ping() }
        }
        ping()
    }

    /// True when stderr is the journal (systemd sets $JOURNAL_STREAM to its "dev:ino").
    public static var stderrIsJournal: Bool {
        guard let env = getenv("JOURNAL_STREAM") else { return false }
        var dev: UInt64 = 0
        var ino: UInt64 = 0
        guard rh_fd_dev_ino(2, &dev, &ino) == 0 else { return false }
        return String(cString: env) == String(dev) + ":" + String(ino)
    }

    /// Appends one field of a journal entry to `datagram` (the native protocol:
    /// NAME=value\n, or for a value with a newline NAME\n, 64-bit little-endian
    /// length, value, \n). One function for every field: the Embedded agent carries
    /// one copy of the byte juggling, not one per field.
    @inline(never)
    public static func appendJournalField(_ name: String, _ value: String, to datagram: inout [UInt8]) {
        var name = name, value = value
        name.withUTF8 { datagram.append(contentsOf: $0) }
        value.withUTF8 { v in
            if v.contains(10) {
                datagram.append(10)
                var n = UInt64(v.count)
                for _ in 0..<8 {
                    datagram.append(UInt8(truncatingIfNeeded: n))
                    n >>= 8
                }
            } else {
                datagram.append(61)  // "="
            }
            datagram.append(contentsOf: v)
        }
        datagram.append(10)
    }

    /// Sends one structured entry (fields made by `appendJournalField`) to the journal;
    /// false when it could not (the caller then writes to stderr instead).
    public static func sendJournal(_ datagram: [UInt8]) -> Bool {
        var datagram = datagram
        let rc = datagram.withUnsafeMutableBytes { rh_unix_datagram("/run/systemd/journal/socket", $0.baseAddress, $0.count) }
        return rc == 0
    }
}
