// The access log: one line per user request (HTTP/1.1 and HTTP/2 alike), with who
// asked, how they authenticated and what was decided. Every value a user chose is
// escaped, so no value can forge another field.
import FleetAccess

enum AccessLog {
    /// The request as the log names it: who sent it, and what they asked for.
    struct Request {
        let client: String
        let host: String
        let method: String
        let target: String
        /// When it began (loop clock).
        let start: UInt64
    }

    static func line(_ r: Request, status: Int, bytes: Int, seconds: Double, aborted: Bool,
                     access: AccessControl.Outcome?) -> String {
        let principal = access?.principal
        let decision = access.map { $0.status.map { String($0) } ?? "allow" } ?? "-"
        return "access client=" + r.client + " host=" + safe(r.host) + " method=" + safe(r.method) + " path=" + safe(r.target)
            + " status=" + String(status) + " bytes=" + String(bytes) + " duration_ms=" + String(Int(seconds * 1000))
            + " user=" + safe(principal?.displayName ?? "-") + " auth=" + (principal?.method.rawValue ?? "none")
            + " decision=" + decision + (aborted ? " aborted" : "")
    }

    /// A CONNECT tunnel: who asked for which device and port, the bytes each way
    /// (up: user to device), how long it was open and how it ended.
    struct Tunnel {
        let client: String
        let device: String
        let port: Int
        let bytesUp: Int
        let bytesDown: Int
        let start: UInt64
    }

    static func tunnelLine(_ t: Tunnel, result: String, seconds: Double, access: AccessControl.Outcome?) -> String {
        let principal = access?.principal
        return "tunnel client=" + t.client + " device=" + safe(t.device) + " port=" + String(t.port)
            + " bytes_up=" + String(t.bytesUp) + " bytes_down=" + String(t.bytesDown)
            + " duration_ms=" + String(Int(seconds * 1000)) + " result=" + safe(result)
            + " user=" + safe(principal?.displayName ?? "-") + " auth=" + (principal?.method.rawValue ?? "none")
    }

    /// Spaces, quotes, percent, controls and non-ASCII as %XX.
    static func safe(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if b > 0x20 && b < 0x7F && b != 0x22 && b != 0x25 {
                out.unicodeScalars.append(Unicode.Scalar(b))
            } else {
                let hex = Array("0123456789ABCDEF")
                out += "%" + String(hex[Int(b >> 4)]) + String(hex[Int(b & 15)])
            }
        }
        return out
    }
}
