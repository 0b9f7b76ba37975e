// Logging for all three programs. Plain lines on stderr, written unbuffered so a
// killed daemon loses nothing; to the journal with structured fields when stderr
// is the journal (started by systemd). Fields: DEVICE, CONNECTION_ID, STREAM_ID.
import CLibc

public enum LogLevel: Int {
    case debug = 7, info = 6, notice = 5, warning = 4, error = 3

    /// True when a message at this level passes a `threshold` (error passes everything).
    public func passes(_ threshold: LogLevel) -> Bool { rawValue <= threshold.rawValue }

    public var name: String {
        switch self {
        case .debug: return "debug"
        case .info: return "info"
        case .notice: return "notice"
        case .warning: return "warning"
        case .error: return "error"
        }
    }

    public init?(name: String) {
        switch name {
        case "debug": self = .debug
        case "info": self = .info
        case "notice": self = .notice
        case "warning": self = .warning
        case "error": self = .error
        default: return nil
        }
    }
}

/// Structured context carried by a log line.
public struct LogContext {
    public var device: String?
    public var connection: Int?
    public var stream: Int32?

    public init(device: String? = nil, connection: Int? = nil, stream: Int32? = nil) {
        self.device = device
        self.connection = connection
        self.stream = stream
    }
}

public final class Logger {
    public let program: String
    public var level: LogLevel
    private let journal: Bool

    public init(program: String, level: LogLevel = .info) {
        self.program = program
        self.level = level
        journal = Systemd.stderrIsJournal && getenv("REVERSEHTTP_LOG_STDERR") == nil
    }

    public func debug(_ message: String, _ ctx: LogContext = LogContext()) { log(.debug, message, ctx) }
    public func info(_ message: String, _ ctx: LogContext = LogContext()) { log(.info, message, ctx) }
    public func notice(_ message: String, _ ctx: LogContext = LogContext()) { log(.notice, message, ctx) }
    public func warning(_ message: String, _ ctx: LogContext = LogContext()) { log(.warning, message, ctx) }
    public func error(_ message: String, _ ctx: LogContext = LogContext()) { log(.error, message, ctx) }

    public func log(_ lvl: LogLevel, _ message: String, _ ctx: LogContext) {
        guard lvl.passes(level) else { return }
        if journal && sendJournal(lvl, message, ctx) { return }
        var line = program + " " + lvl.name + ": "
        if let d = ctx.device { line += "device=" + d + " " }
        if let c = ctx.connection { line += "conn=" + String(c) + " " }
        if let s = ctx.stream { line += "stream=" + String(Int(s)) + " " }
        line += message
        line += "\n"
        Logger.writeStderr(line)
    }

    public static func writeStderr(_ text: String) { write(text, to: 2) }

    /// Standard output, unbuffered (a line a reader waits for is never held back).
    public static func writeStdout(_ text: String) { write(text, to: 1) }

    private static func write(_ text: String, to fd: Int32) {
        var s = text
        s.withUTF8 { p in
            var off = 0
            var tries = 0
            while off < p.count && tries < 16 {
                tries += 1
                let n = CLibc.write(fd, p.baseAddress! + off, p.count - off)
                if n <= 0 { break }
                off += n
            }
        }
    }

    private func sendJournal(_ lvl: LogLevel, _ message: String, _ ctx: LogContext) -> Bool {
        var datagram: [UInt8] = []
        Systemd.appendJournalField("MESSAGE", message, to: &datagram)
        Systemd.appendJournalField("PRIORITY", String(lvl.rawValue), to: &datagram)
        Systemd.appendJournalField("SYSLOG_IDENTIFIER", program, to: &datagram)
        if let d = ctx.device { Systemd.appendJournalField("DEVICE", d, to: &datagram) }
        if let c = ctx.connection { Systemd.appendJournalField("CONNECTION_ID", String(c), to: &datagram) }
        if let s = ctx.stream { Systemd.appendJournalField("STREAM_ID", String(Int(s)), to: &datagram) }
        return Systemd.sendJournal(datagram)
    }
}
