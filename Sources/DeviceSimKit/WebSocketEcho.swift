// The simulated API's WebSocket echo (RFC 6455 frames over an RFC 8441 stream):
// every text or binary frame comes back with the same opcode and payload,
// unmasked as a server's frames are; a PING gets its PONG; a close frame is
// answered with a close frame and the stream ends.
import HTTP1
import Tunnel

final class WebSocketEcho {
    static let maxFrame = 1 << 20
    private let request: LocalRequest
    private let device: VirtualDevice
    private var buffer: [UInt8] = []

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
        buffer += bytes
        while let frame = WebSocketEcho.parse(&buffer) {
            switch frame.opcode {
            case 0x8:
                request.write(WebSocketEcho.frame(opcode: 0x8, frame.payload), endStream: true)
                return
            case 0x9:
                request.write(WebSocketEcho.frame(opcode: 0xA, frame.payload))
            case 0xA:
                break
            default:
                request.write(WebSocketEcho.frame(opcode: frame.opcode, frame.payload, fin: frame.fin))
            }
        }
        if buffer.count > WebSocketEcho.maxFrame + 14 { request.reset(errorCode: 2) }
    }

    /// One complete frame off the front of `b`, unmasked; nil while incomplete.
    static func parse(_ b: inout [UInt8]) -> (fin: Bool, opcode: UInt8, payload: [UInt8])? {
        guard b.count >= 2 else { return nil }
        let masked = b[1] & 0x80 != 0
        var length = Int(b[1] & 0x7f)
        var offset = 2
        if length == 126 {
            guard b.count >= 4 else { return nil }
            length = Int(b[2]) << 8 | Int(b[3])
            offset = 4
        } else if length == 127 {
            guard b.count >= 10 else { return nil }
            length = 0
            for i in 2..<10 { length = length << 8 | Int(b[i]) }
            offset = 10
            guard length >= 0, length <= maxFrame else { return nil }  // too long: the caller resets
        }
        let maskOffset = offset
        if masked { offset += 4 }
        guard b.count >= offset + length else { return nil }
        var payload = Array(b[offset..<(offset + length)])
        if masked {
            for i in 0..<payload.count { payload[i] ^= b[maskOffset + i % 4] }
        }
        let result = (fin: b[0] & 0x80 != 0, opcode: b[0] & 0x0f, payload: payload)
        b.removeFirst(offset + length)
        return result
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
