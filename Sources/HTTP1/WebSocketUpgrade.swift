// The HTTP/1.1 side of a WebSocket (RFC 6455 §4) and its HTTP/2 form (RFC 8441):
// what a request needs to be an upgrade, and the key arithmetic of the handshake.
import HTTPCore

public enum WebSocketUpgrade {
    /// The GUID RFC 6455 appends to Sec-WebSocket-Key.
    public static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// The handshake is well-formed: version 13 and a 16-byte base64 key (RFC 6455 §4.2.1).
    /// Otherwise the answer is 426 with `Sec-WebSocket-Version: 13` (or 400).
    public static func hasValidHandshake(_ head: HTTPRequestHead) -> Bool {
        guard head.headers.first("sec-websocket-version") == "13", let key = head.headers.first("sec-websocket-key") else { return false }
        let k = Array(key.utf8)
        return k.count == 24 && k[22] == 61 && k[23] == 61
            && k[0..<22].allSatisfy { ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 43 || $0 == 47 }
    }

    /// An HTTP/1.1 request asking to become a WebSocket.
    public static func isRequest(_ head: HTTPRequestHead) -> Bool {
        head.method == "GET" && head.versionMinor == 1
            && head.headers.containsToken("upgrade", "websocket")
            && head.headers.containsToken("connection", "upgrade")
            && head.headers.first("sec-websocket-key") != nil
    }

    /// An extended CONNECT's `:protocol` names WebSocket (ASCII, any case).
    public static func isWebSocketProtocol(_ value: String) -> Bool {
        HTTP1Bytes.equalsIgnoringCase(value, "websocket")
    }

    /// Fields carried from one side's handshake to the other's (the rest is per hop).
    public static let endToEndFields = ["sec-websocket-protocol", "sec-websocket-extensions"]
}

/// Standard base64 with padding.
public func base64Encode(_ bytes: [UInt8]) -> String {
    let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    var out: [UInt8] = []
    out.reserveCapacity((bytes.count + 2) / 3 * 4)
    var i = 0
    while i < bytes.count {
        // Three bytes (zeros past the end) make four letters; '=' for the missing ones.
        let left = bytes.count - i
        let n = UInt32(bytes[i]) << 16 | (left > 1 ? UInt32(bytes[i + 1]) << 8 : 0) | (left > 2 ? UInt32(bytes[i + 2]) : 0)
        for k in 0..<4 { out.append(k <= left ? table[Int(n >> UInt32(18 - 6 * k) & 63)] : 61) }
        i += 3
    }
    return String(decoding: out, as: UTF8.self)
}
