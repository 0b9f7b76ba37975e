// Typed errors at the OpenSSL boundary. Every failing call drains OpenSSL's
// thread-local error queue into the error it throws, so a later, unrelated call
// never reports a stale failure.
import COpenSSL

public struct OpenSSLError: Error, CustomStringConvertible {
    /// What we were doing ("load certificate /etc/x.pem").
    public var operation: String
    /// The reasons OpenSSL queued, oldest first ("error:0A000086:SSL routines::certificate verify failed").
    public var reasons: [String]

    public init(_ operation: String, reasons: [String]) {
        self.operation = operation
        self.reasons = reasons
    }

    /// Builds an error for `operation` from everything in OpenSSL's error queue, emptying it.
    public static func drain(_ operation: String) -> OpenSSLError {
        OpenSSLError(operation, reasons: drainQueue())
    }

    public var description: String {
        reasons.isEmpty ? operation : operation + ": " + reasons.joined(separator: "; ")
    }

    /// Empties OpenSSL's error queue and returns its entries as text.
    public static func drainQueue() -> [String] {
        var out: [String] = []
        var guardCount = 0
        while guardCount < 32 {
            guardCount += 1
            let code = ERR_get_error()
            if code == 0 { break }
            var buf = [CChar](repeating: 0, count: 256)
            let text: String = buf.withUnsafeMutableBufferPointer { p in
                ERR_error_string_n(code, p.baseAddress, 256)
                return String(cString: p.baseAddress!)
            }
            out.append(text)
        }
        ERR_clear_error()
        return out
    }
}
