"""Support for the CONNECT tests (issue 14): a fake device that dials the gateway's
device listener with mTLS and answers CONNECT streams as the contract says an agent
does (200 and echo, 200 then its own end first, 403, 502, silence, a reset), and
small HTTP/2 and TLS helpers for the user side.

HPACK blocks from the gateway (nghttp2: Huffman, dynamic table) are decoded with
the system's libnghttp2 through ctypes (libnghttp2-dev is a build dependency);
blocks we send are literal fields (hostile_lib.hpack).

One thread per fake device; every read has a deadline and every loop a bound.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import ssl
import struct
import threading
import time
from typing import Optional

import e2e_lib as lib
import hostile_lib as hl
from hostile_lib import ACK, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, RST_STREAM, SETTINGS, WINDOW_UPDATE, frame

CONTINUATION = 9
CONNECT_ERROR = 0xA


class _NV(ctypes.Structure):
    _fields_ = [("name", ctypes.POINTER(ctypes.c_uint8)), ("value", ctypes.POINTER(ctypes.c_uint8)),
                ("namelen", ctypes.c_size_t), ("valuelen", ctypes.c_size_t), ("flags", ctypes.c_uint8)]


_lib = ctypes.CDLL(ctypes.util.find_library("nghttp2") or "libnghttp2.so.14")
_lib.nghttp2_hd_inflate_new.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
_lib.nghttp2_hd_inflate_hd2.argtypes = [ctypes.c_void_p, ctypes.POINTER(_NV), ctypes.POINTER(ctypes.c_int),
                                        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_lib.nghttp2_hd_inflate_hd2.restype = ctypes.c_ssize_t
_lib.nghttp2_hd_inflate_end_headers.argtypes = [ctypes.c_void_p]
_lib.nghttp2_hd_inflate_del.argtypes = [ctypes.c_void_p]


class Inflater:
    """One connection direction's HPACK decoder (libnghttp2)."""

    def __init__(self):
        self.p = ctypes.c_void_p()
        assert _lib.nghttp2_hd_inflate_new(ctypes.byref(self.p)) == 0

    def __del__(self):
        if self.p:
            _lib.nghttp2_hd_inflate_del(self.p)

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        out = []
        buf = ctypes.create_string_buffer(block, len(block))
        off = 0
        for _ in range(10_000):
            nv = _NV()
            flags = ctypes.c_int(0)
            rv = _lib.nghttp2_hd_inflate_hd2(self.p, ctypes.byref(nv), ctypes.byref(flags),
                                             ctypes.cast(ctypes.addressof(buf) + off, ctypes.c_char_p), len(block) - off, 1)
            assert rv >= 0, f"HPACK error {rv}"
            off += rv
            if flags.value & 2:  # EMIT
                out.append((ctypes.string_at(nv.name, nv.namelen).decode(), ctypes.string_at(nv.value, nv.valuelen).decode()))
            if flags.value & 1:  # FINAL
                _lib.nghttp2_hd_inflate_end_headers(self.p)
                break
            if not flags.value & 2 and off >= len(block):
                break
        return out


def header_block(flags: int, payload: bytes) -> bytes:
    """A HEADERS frame's block without padding and priority."""
    if flags & 0x8:
        pad = payload[0]
        payload = payload[1:len(payload) - pad]
    if flags & 0x20:
        payload = payload[5:]
    return payload


class H2Peer:
    """Frame I/O with flow control for one side of an HTTP/2 connection, run by
    `step()` from one thread: reads what arrived (briefly), answers SETTINGS and
    PING, takes WINDOW_UPDATEs, gives windows back for DATA received, and sends
    queued DATA within the peer's windows."""

    def __init__(self, sock):
        self.s = sock
        self.r = hl.FrameReader(sock)
        self.inflater = Inflater()
        self.conn_window = 65535
        self.initial_window = 65535
        self.windows: dict[int, int] = {}
        self.out: dict[int, bytearray] = {}
        self.end_after: set[int] = set()
        self.goaway: Optional[int] = None

    def send(self, data: bytes):
        self.s.settimeout(10)
        self.s.sendall(data)

    def queue(self, sid: int, data: bytes, end: bool = False):
        self.out.setdefault(sid, bytearray()).extend(data)
        self.windows.setdefault(sid, self.initial_window)
        if end:
            self.end_after.add(sid)

    def flush(self):
        for sid in list(self.out):
            buf = self.out[sid]
            for _ in range(100_000):
                n = min(len(buf), 16384, self.conn_window, self.windows.get(sid, 0))
                if n <= 0:
                    break
                self.send(frame(DATA, 0, sid, bytes(buf[:n])))
                del buf[:n]
                self.conn_window -= n
                self.windows[sid] -= n
            if not buf and sid in self.end_after:
                self.end_after.discard(sid)
                self.send(frame(DATA, END_STREAM, sid))
            if not buf:
                del self.out[sid]

    def next_frame(self, timeout: float):
        """One frame (connection-level ones handled here and returned too), or None."""
        fr = self.r.next(timeout)
        if fr is None:
            return None
        t, f, sid, p = fr
        if t == SETTINGS and not f & ACK:
            for i in range(0, len(p) - 5, 6):
                ident, val = struct.unpack(">HI", p[i:i + 6])
                if ident == 4:
                    delta = val - self.initial_window
                    self.initial_window = val
                    for k in self.windows:
                        self.windows[k] += delta
            self.send(frame(SETTINGS, ACK, 0))
        elif t == PING and not f & ACK:
            self.send(frame(PING, ACK, 0, p))
        elif t == WINDOW_UPDATE:
            inc = int.from_bytes(p[:4], "big") & 0x7FFFFFFF
            if sid == 0:
                self.conn_window += inc
            else:
                self.windows[sid] = self.windows.get(sid, self.initial_window) + inc
        elif t == DATA and len(p) > 0:
            # Give the window back at once: this side buffers (tests only).
            self.send(hl.window_update(0, len(p)) + hl.window_update(sid, len(p)))
        elif t == GOAWAY:
            self.goaway = int.from_bytes(p[4:8], "big")
        return fr

    def headers_of(self, f: int, p: bytes) -> list[tuple[str, str]]:
        assert f & END_HEADERS, "CONTINUATION not handled by this test peer"
        return self.inflater.decode(header_block(f, p))


class Stream:
    def __init__(self, sid: int, fields: list[tuple[str, str]]):
        self.sid = sid
        self.fields = fields
        self.received = bytearray()
        self.ended = False
        self.reset: Optional[int] = None

    @property
    def port(self) -> int:
        return int(dict(self.fields).get(":authority", ":0").rsplit(":", 1)[1])


class FakeDevice:
    """dev1.example answering CONNECT streams by the port asked for:
      22  200, then echoes; ends its side after the gateway's END_STREAM
      23  200, DATA "bye\\n" and END_STREAM at once; reads on until the user ends
      24  403 + END_STREAM (not in its tcp_ports)      25  502 + END_STREAM (port closed)
      26  never answers                                 27  200, then RST_STREAM(CONNECT_ERROR)
    Every stream is kept in `streams` (its fields, the bytes received, END_STREAM, reset)."""

    def __init__(self, gw: lib.Gateway, pki: lib.PKI, name: str = "dev1.example"):
        ctx = hl.device_tls(pki, pki.device_cert(name), pki.device_key(name))
        self.sock = hl.dial_device(gw, ctx)
        self.peer = H2Peer(self.sock)
        self.streams: dict[int, Stream] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.closed = False
        self.peer.send(hl.MAGIC + hl.settings(max_concurrent_streams=100))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        deadline = time.monotonic() + 600
        while not self.stopping and time.monotonic() < deadline:
            try:
                fr = self.peer.next_frame(0.02)
                if fr is None and self.peer.r.eof:
                    break
                if fr is not None:
                    with self.lock:
                        self._handle(*fr)
                with self.lock:
                    self.peer.flush()
            except (OSError, ssl.SSLError):
                break
        self.closed = True

    def _handle(self, t, f, sid, p):
        if t == HEADERS:
            s = Stream(sid, self.peer.headers_of(f, p))
            self.streams[sid] = s
            port = s.port
            if port in (22, 23, 27):
                self.peer.send(hl.headers(sid, [(":status", "200")]))
                self.peer.windows.setdefault(sid, self.peer.initial_window)
                if port == 23:
                    self.peer.queue(sid, b"bye\n", end=True)
                if port == 27:
                    self.peer.send(hl.rst(sid, CONNECT_ERROR))
            elif port in (24, 25):
                self.peer.send(hl.headers(sid, [(":status", "403" if port == 24 else "502")], end_stream=True))
            if f & END_STREAM:
                s.ended = True
        elif t == DATA:
            s = self.streams.get(sid)
            if s is None:
                return
            s.received += p
            if s.port == 22:
                self.peer.queue(sid, p)
            if f & END_STREAM:
                s.ended = True
                if s.port == 22:
                    self.peer.queue(sid, b"", end=True)
        elif t == RST_STREAM:
            s = self.streams.get(sid)
            if s is not None:
                s.reset = int.from_bytes(p[:4], "big")

    def requests(self) -> int:
        with self.lock:
            return len(self.streams)

    def last(self) -> Stream:
        with self.lock:
            return self.streams[max(self.streams)]

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- the user side


class TLSUser:
    """A TLS client over a socket through ssl.SSLObject (memory BIOs), so that it can
    send close_notify (our half-close) and read on, which SSLSocket.unwrap cannot."""

    def __init__(self, port: int, ca, server_name: str = "gw.example"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(ca))
        ctx.set_alpn_protocols(["http/1.1"])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.inc, self.outg = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.outg, server_hostname=server_name)
        self.eof = False
        # A test may send from one thread while it reads in another: the SSL object
        # and the order of records on the socket are guarded by one lock (an SSL
        # object used by two threads at once corrupts the records it writes).
        self.lock = threading.Lock()
        for _ in range(100):
            try:
                with self.lock:
                    self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._pump()
        with self.lock:
            self._push()

    def _push(self):
        """Sends what the SSL object wrote (called with the lock held)."""
        data = self.outg.read()
        if data:
            self.sock.sendall(data)

    def _pump(self, timeout: float = 10.0) -> bool:
        with self.lock:
            self._push()
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return True
        with self.lock:
            if not chunk:
                self.inc.write_eof()
                return False
            self.inc.write(chunk)
        return True

    def sendall(self, data: bytes):
        for i in range(0, len(data), 65536):
            with self.lock:
                self.obj.write(data[i:i + 65536])
                self._push()

    def _read(self) -> bytes:
        with self.lock:
            return self.obj.read(65536)

    def recv(self, timeout: float = 10.0) -> bytes:
        """Some plaintext, or b"" at close_notify / EOF."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self._read()
            except ssl.SSLWantReadError:
                if not self._pump(max(0.01, deadline - time.monotonic())):
                    try:
                        return self._read()
                    except (ssl.SSLWantReadError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                        return b""
            except ssl.SSLZeroReturnError:
                return b""
        raise TimeoutError("no TLS data in time")

    def close_notify(self):
        """Our half-close: close_notify sent, reading goes on. Python's unwrap() calls
        SSL_shutdown twice, and the second call reads (and spoils) records already
        received: call it when nothing of the peer's is in flight (tests order it so)."""
        with self.lock:
            try:
                self.obj.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass
            self._push()

    def close(self):
        self.sock.close()


class PlainUser:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def sendall(self, data: bytes):
        self.sock.sendall(data)

    def recv(self, timeout: float = 10.0) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536)

    def close_notify(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        self.sock.close()


def read_head(u, timeout: float = 15.0) -> tuple[int, bytes, bytes]:
    """(status, head, bytes after the head)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
        chunk = u.recv(max(0.01, deadline - time.monotonic()))
        if not chunk:
            break
        buf += chunk
    assert b"\r\n\r\n" in buf, f"no response head: {buf[:300]!r}"
    head, rest = buf.split(b"\r\n\r\n", 1)
    return int(head.split(b" ", 2)[1]), head, rest


def read_all(u, first: bytes = b"", timeout: float = 60.0, limit: int = 64 << 20) -> bytes:
    """Until EOF (or close_notify)."""
    out = bytearray(first)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(out) <= limit:
        chunk = u.recv(max(0.01, deadline - time.monotonic()))
        if not chunk:
            return bytes(out)
        out += chunk
    raise AssertionError(f"no end of data after {len(out)} bytes")
