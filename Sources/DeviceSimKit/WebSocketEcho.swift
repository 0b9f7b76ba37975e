// The simulated API's WebSocket echo (RFC 6455 frames over an RFC 8441 stream):
// every text or binary frame comes back with the same opcode and payload,
// unmasked as a server's frames are; a PING gets its PONG; a close frame is
// answered with a close frame and the stream ends. A frame no client may send
// (unmasked, over 1 MiB, a control frame over 125 bytes) resets the stream.
import HTTP1
import AgentKit

final class WebSocketEcho {
    static let maxFrame = 1 << 20
    private let request: LocalRequest
    private let device: VirtualDevice
    private var buffer: [UInt8] = []
    private var closing = false

    init(request: LocalRequest, device: VirtualDevice) {
        self.request = request
        self.device = device
    }

    func start() {
        device.stats.served(status: 200)
        request.respond(HTTPHeaders([(":status", "200"), ("x-device", device.name)]))
        request.onBody = { bytes in self.received(bytes) }
        request.onEnd = { _ in self.request.write([], endStream: true) }
    }

    private func received(_ bytes: [UInt8]) {
        guard !closing else { return }  // nothing after a close frame
        buffer += bytes
        var offset = 0
        defer { buffer.removeFirst(offset) }  // once per delivery, not per frame
        while true {
            switch WebSocketEcho.parse(buffer, at: offset) {
            case .incomplete:
                return
            case .invalid:
                // Not a client's frame (unmasked, too long, a long control frame):
                // a protocol error, answered with a reset rather than an echo.
                request.reset(errorCode: 1)
                return
            case .frame(let fin, let opcode, let payload, let length):
                offset += length
                switch opcode {
                case 0x8:
                    closing = true
                    request.write(WebSocketEcho.frame(opcode: 0x8, payload), endStream: true)
                    return
                case 0x9:
                    request.write(WebSocketEcho.frame(opcode: 0xA, payload))
                case 0xA:
                    break
                default:
                    request.write(WebSocketEcho.frame(opcode: opcode, payload, fin: fin))
                }
            }
        }
    }

    enum Parsed: Equatable {
        case incomplete
        case invalid
        /// `length`: the whole frame's bytes.
        case frame(fin: Bool, opcode: UInt8, payload: [UInt8], length: Int)
    }

    /// The client frame starting at `b[start...]`, unmasked (RFC 6455 §5.2, §5.5).
    static func parse(_ b: [UInt8], at start: Int) -> Parsed {
        guard b.count - start >= 2 else { return .incomplete }
        let opcode = b[start] & 0x0f
        guard b[start + 1] & 0x80 != 0 else { return .invalid }  // clients mask every frame
        var length = Int(b[start + 1] & 0x7f)
        var offset = start + 2
        if length == 126 {
            guard b.count - start >= 4 else { return .incomplete }
            length = Int(b[start + 2]) << 8 | Int(b[start + 3])
            offset = start + 4
        } else if length == 127 {
            guard b.count - start >= 10 else { return .incomplete }
            guard b[start + 2] == 0 && b[start + 3] == 0 && b[start + 4] == 0 && b[start + 5] == 0 else { return .invalid }
            length = 0
            for i in (start + 2)..<(start + 10) { length = length << 8 | Int(b[i]) }
            offset = start + 10
        }
        if length > maxFrame || (opcode >= 0x8 && length > 125) { return .invalid }
        let mask = offset
        offset += 4
        guard b.count >= offset + length else { return .incomplete }
        var payload = Array(b[offset..<(offset + length)])
        for i in 0..<payload.count { payload[i] ^= b[mask + i % 4] }
        return .frame(fin: b[start] & 0x80 != 0, opcode: opcode, payload: payload, length: offset + length - start)
    }

    static func frame(opcode: UInt8, _ payload: [UInt8], fin: Bool = true) -> [UInt8] {
        var out: [UInt8] = [(fin ? 0x80 : 0) | opcode]
        if payload.count < 126 {
            out.append(UInt8(payload.count))
        } else if payload.count <= 0xffff {
            out += [126, UInt8(payload.count >> 8), UInt8(payload.count & 0xff)]
        } else {
            out.append(127)
            for i in (0..<8).reversed() { out.append(UInt8((payload.count >> (8 * i)) & 0xff)) }
        }
        return out + payload
    }
}
