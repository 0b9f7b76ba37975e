// nghttp2 C callbacks. Each is a thin thunk: it unwraps the HTTP2Session from the
// user data and records one event or copies one body chunk.
import Bytes
import CNghttp2
import HTTPCore

enum HTTP2Callbacks {
    @inline(__always)
    static func session(_ p: UnsafeMutableRawPointer?) -> HTTP2Session {
        Unmanaged<HTTP2Session>.fromOpaque(p!).takeUnretainedValue()
    }

    static func install(_ cbs: OpaquePointer?) {
        nghttp2_session_callbacks_set_send_data_callback(cbs, sendData)
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs) { _, frame, user in
            HTTP2Callbacks.session(user).beginHeaderBlock(frame: frame!)
        }
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, frame, name, namelen, value, valuelen, _, user in
            HTTP2Callbacks.session(user).headerField(frame: frame!, name: UnsafeBufferPointer(start: name, count: namelen),
                                                     value: UnsafeBufferPointer(start: value, count: valuelen))
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
            let s = HTTP2Callbacks.session(user)
            let hd = frame!.pointee.hd
            let endStream = (hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue)) != 0
            switch UInt32(hd.type) {
            case NGHTTP2_HEADERS.rawValue:
                s.endHeaderBlock(stream: hd.stream_id, endStream: endStream)
            case NGHTTP2_DATA.rawValue:
                if endStream { s.events.append(.endStream(stream: hd.stream_id)) }
            case NGHTTP2_SETTINGS.rawValue:
                if (hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue)) == 0 { s.didReceiveRemoteSettings() }
            case NGHTTP2_PING.rawValue:
                if (hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue)) != 0 { s.events.append(.pingAck) }
            case NGHTTP2_GOAWAY.rawValue:
                let g = frame!.pointee.goaway
                s.didReceiveGoaway(lastStreamID: g.last_stream_id, errorCode: g.error_code)
            default:
                break
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs) { _, frame, user in
            let hd = frame!.pointee.hd
            guard UInt32(hd.type) == NGHTTP2_GOAWAY.rawValue else { return 0 }
            let g = frame!.pointee.goaway
            guard g.error_code != 0 else { return 0 }
            var why = String(cString: nghttp2_http2_strerror(g.error_code))
            if g.opaque_data_len > 0, let data = g.opaque_data {
                why += ": " + String(decoding: UnsafeBufferPointer(start: data, count: min(g.opaque_data_len, 200)), as: UTF8.self)
            }
            HTTP2Callbacks.session(user).goawaySentReason = why
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, stream, data, len, user in
            let s = HTTP2Callbacks.session(user)
            s.events.append(.data(stream: stream, bytes: Array(UnsafeBufferPointer(start: data, count: len))))
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, stream, code, user in
            HTTP2Callbacks.session(user).streamDidClose(stream, errorCode: code)
            return 0
        }
    }

    /// Data provider: says how many queued body bytes the next DATA frame carries
    /// (NO_COPY: `sendData` writes them); defers when none are queued yet.
    static let readBody: nghttp2_data_source_read_callback = { _, stream, _, length, flags, _, user in
        let s = HTTP2Callbacks.session(user)
        guard let body = s.outgoing[stream] else {
            return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
        let available = body.count - body.framed
        let n = min(length, available)
        if n > 0 {
            body.framed += n
            flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_COPY.rawValue)
        }
        if available == n {
            if body.ended {
                flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
                if let trailers = body.trailers, trailers.count > 0 {
                    flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue)
                    _ = s.submitTrailersNow(stream: stream, trailers)
                }
                if body.resetAfter {
                    // Queued behind this last DATA frame (and the trailers), never before.
                    _ = nghttp2_submit_rst_stream(s.session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, 0)
                }
            } else if n == 0 {
                body.deferred = true
                return Int(NGHTTP2_ERR_DEFERRED.rawValue)
            }
        }
        return n
    }

    /// A NO_COPY DATA frame: its 9-byte header, then `length` bytes of the stream's
    /// queue (memcpy, the one copy between the producer's queue and TLS). No padding:
    /// we set no padding callback, so nghttp2 asks for none.
    static let sendData: nghttp2_send_data_callback = { _, frame, header, length, _, user in
        let s = HTTP2Callbacks.session(user)
        guard let out = s.output, let body = s.outgoing[frame!.pointee.hd.stream_id],
              length <= body.framed, frame!.pointee.data.padlen == 0 else {
            return Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue)
        }
        out.append(UnsafeRawBufferPointer(start: header, count: 9))
        out.append(UnsafeRawBufferPointer(start: body.buffer.readable.baseAddress, count: length))
        body.buffer.consume(length)
        body.framed -= length
        // mem_send would go on framing DATA within this one call: stop at the limit,
        // as for the frames it returns (PAUSE: this frame counts as sent).
        return out.count >= s.outputLimit ? Int32(NGHTTP2_ERR_PAUSE.rawValue) : 0
    }
}
