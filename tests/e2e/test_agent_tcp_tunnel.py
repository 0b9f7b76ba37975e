"""The device-agent's CONNECT to a local TCP port (issue 14), tested on the agent
alone: the test is the gateway (a small HTTP/2 client on the reversed
connection, hand-built frames from hostile_lib) and the device's TCP services
are Python servers on loopback. Echo; 10 MiB both ways with matching SHA-256
(HTTP/2 flow control the only buffer: the fake gateway opens its windows as it
reads); a half-close each way; a port not in tcp_ports -> 403; a listed port
nothing listens on -> 502; another authority -> 400; a reset either way; an idle
tunnel outliving the request timeout and many idle-ping intervals.

Every socket read has a deadline; every loop is bounded.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import struct
import threading
import time

import pytest

import access_lib
import e2e_lib as lib
import hostile_lib as hl

MAX_FRAME = 16384
CONNECT_ERROR = 0xA


class Stream:
    def __init__(self):
        self.status = None
        self.data = bytearray()
        self.ended = False
        self.reset = None  # RST_STREAM error code
        self.send_window = 0


class FakeGateway:
    """Accepts the agent's reversed connection (plaintext), answers its SETTINGS
    and PINGs, opens CONNECT streams and keeps per-stream state. Receiving: every
    DATA frame is acknowledged at once (WINDOW_UPDATE). Sending: waits for the
    agent's windows, which it opens only as the local socket takes the bytes."""

    def __init__(self, listener=None):
        self.listener = listener or socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sock = None
        self.cond = threading.Condition()
        self.wlock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.conn_window = 65535
        self.initial_window = 65535
        self.pings = 0
        self.closed = False
        self.reader = None

    def accept(self, timeout: float = 15.0):
        self.listener.settimeout(timeout)
        self.sock, _ = self.listener.accept()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        magic = b""
        while len(magic) < len(hl.MAGIC):
            chunk = self.sock.recv(len(hl.MAGIC) - len(magic))
            assert chunk, "the agent closed before its preface"
            magic += chunk
        assert magic == hl.MAGIC
        # Our receive windows: 1 MiB per stream, 16 MiB for the connection.
        self.write(hl.settings(initial_window_size=1 << 20) + hl.window_update(0, (16 << 20) - 65535))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def write(self, data: bytes):
        with self.wlock:
            self.sock.sendall(data)

    def _read(self):
        r = hl.FrameReader(self.sock)
        for _ in range(10_000_000):
            fr = r.next(timeout=3600)
            if fr is None:
                break
            t, f, sid, p = fr
            with self.cond:
                self._frame(t, f, sid, p)
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _frame(self, t, f, sid, p):
        s = self.streams.get(sid)
        if t == hl.SETTINGS and not f & hl.ACK:
            for i in range(0, len(p), 6):
                ident, value = struct.unpack(">HI", p[i:i + 6])
                if ident == 4:
                    delta = value - self.initial_window
                    self.initial_window = value
                    for st in self.streams.values():
                        st.send_window += delta
            self.write(hl.frame(hl.SETTINGS, hl.ACK, 0))
        elif t == hl.PING and not f & hl.ACK:
            self.pings += 1
            self.write(hl.frame(hl.PING, hl.ACK, 0, p))
        elif t == hl.WINDOW_UPDATE:
            inc = struct.unpack(">I", p)[0] & 0x7FFFFFFF
            if sid == 0:
                self.conn_window += inc
            elif s:
                s.send_window += inc
        elif t == hl.HEADERS and s:
            block = p
            if f & 0x8:
                block = block[1:len(block) - block[0]]
            if f & 0x20:
                block = block[5:]
            if s.status is None:
                s.status = access_lib.h2_status(block)
            if f & hl.END_STREAM:
                s.ended = True
        elif t == hl.DATA and s:
            if f & 0x8:
                p = p[1:len(p) - p[0]]
            s.data += p
            if f & hl.END_STREAM:
                s.ended = True
            if p:
                self.write(hl.window_update(0, len(p)) + hl.window_update(sid, len(p)))
        elif t == hl.RST_STREAM and s:
            s.reset = struct.unpack(">I", p)[0]

    def wait(self, pred, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                assert left > 0 and not self.closed, f"gave up waiting for {what}"
                self.cond.wait(min(left, 1.0))

    def connect(self, authority: str) -> int:
        sid = self.next_id
        self.next_id += 2
        with self.cond:
            st = Stream()
            st.send_window = self.initial_window
            self.streams[sid] = st
        self.write(hl.headers(sid, [(":method", "CONNECT"), (":authority", authority)]))
        return sid

    def status(self, sid: int, timeout: float = 15.0) -> int:
        s = self.streams[sid]
        self.wait(lambda: s.status is not None or s.reset is not None, f"the answer on stream {sid}", timeout)
        assert s.status is not None, f"stream {sid} reset ({s.reset}) without an answer"
        return s.status

    def send(self, sid: int, data: bytes, end: bool = False, timeout: float = 60.0):
        """DATA within the agent's windows (blocks until they open)."""
        s = self.streams[sid]
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while len(view) > 0:
            with self.cond:
                while min(self.conn_window, s.send_window) <= 0:
                    left = deadline - time.monotonic()
                    assert left > 0 and not self.closed and s.reset is None, "the agent's window stayed shut"
                    self.cond.wait(min(left, 1.0))
                n = min(len(view), MAX_FRAME, self.conn_window, s.send_window)
                self.conn_window -= n
                s.send_window -= n
            last = end and n == len(view)
            self.write(hl.frame(hl.DATA, hl.END_STREAM if last else 0, sid, bytes(view[:n])))
            view = view[n:]
        if end and not data:
            self.write(hl.frame(hl.DATA, hl.END_STREAM, sid))

    def close(self):
        for s in (self.sock, self.listener):
            if s:
                try:
                    s.close()
                except OSError:
                    pass


class TCPService:
    """A loopback TCP server; `handler(conn)` runs in a thread per connection."""

    def __init__(self, handler):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handler = handler
        self.accepted = 0
        self.received: list[bytes] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        for _ in range(1000):
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            c.settimeout(60)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            self.handler(self, c)
        except OSError:
            pass

    def close(self):
        self.listener.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def echo(svc, c):
    """Echoes until EOF, then half-closes (so the END_STREAM crosses back)."""
    for _ in range(1_000_000):
        b = c.recv(65536)
        if not b:
            break
        c.sendall(b)
    c.shutdown(socket.SHUT_WR)


def digest_after_eof(svc, c):
    """Reads to EOF, then answers with the SHA-256 of what it read and closes."""
    h, n = hashlib.sha256(), 0
    for _ in range(1_000_000):
        b = c.recv(65536)
        if not b:
            break
        h.update(b)
        n += len(b)
    c.sendall(f"{n} {h.hexdigest()}".encode())
    c.close()


def banner_first(svc, c):
    """Sends a banner and half-closes at once, then reads to EOF."""
    c.sendall(b"SSH-2.0-test\r\n")
    c.shutdown(socket.SHUT_WR)
    got = b""
    for _ in range(1_000_000):
        b = c.recv(65536)
        if not b:
            break
        got += b
    svc.received.append(got)
    c.close()


@pytest.fixture(scope="module")
def env(module_procs):
    services = {name: TCPService(h) for name, h in
                (("echo", echo), ("digest", digest_after_eof), ("banner", banner_first))}
    closed = lib.closed_port()
    gw = FakeGateway()
    ports = ",".join(str(s.port) for s in services.values()) + f",{closed}"
    agent = lib.start_agent(module_procs, gw.port, plaintext=True, local_port=lib.closed_port(), connections=1,
                            extra=["--tcp-ports", ports, "--local-timeout-ms", "300", "--idle-ping-ms", "200"])
    gw.accept()
    yield gw, services, closed, agent
    gw.close()
    for s in services.values():
        s.close()


def test_echo(env):
    gw, svc, _, _ = env
    sid = gw.connect(f"127.0.0.1:{svc['echo'].port}")
    assert gw.status(sid) == 200
    gw.send(sid, b"hello")
    gw.wait(lambda: bytes(gw.streams[sid].data) == b"hello", "the echo")
    gw.send(sid, b"", end=True)
    gw.wait(lambda: gw.streams[sid].ended, "the END_STREAM after the service's FIN")
    assert gw.streams[sid].reset in (None, hl.NO_ERROR)


def test_ten_mib_both_ways(env):
    gw, svc, _, _ = env
    sid = gw.connect(f"localhost:{svc['echo'].port}")
    assert gw.status(sid) == 200
    payload = lib.det_bytes(10 << 20)
    gw.send(sid, payload, end=True, timeout=120)
    s = gw.streams[sid]
    gw.wait(lambda: s.ended or s.reset is not None, "all the echoed bytes", timeout=120)
    assert s.reset in (None, hl.NO_ERROR)
    assert len(s.data) == len(payload)
    assert hashlib.sha256(s.data).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_half_close_from_the_gateway(env):
    """END_STREAM -> the service reads EOF and still answers; its answer crosses."""
    gw, svc, _, _ = env
    sid = gw.connect(f"127.0.0.1:{svc['digest'].port}")
    assert gw.status(sid) == 200
    payload = lib.det_bytes(3 << 20)
    gw.send(sid, payload, end=True)
    s = gw.streams[sid]
    gw.wait(lambda: s.ended, "the digest and END_STREAM")
    assert bytes(s.data).decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"


def test_half_close_from_the_service(env):
    """The service's FIN -> END_STREAM; the gateway's bytes keep flowing after it."""
    gw, svc, _, _ = env
    sid = gw.connect(f"127.0.0.1:{svc['banner'].port}")
    assert gw.status(sid) == 200
    s = gw.streams[sid]
    gw.wait(lambda: s.ended, "the banner and END_STREAM")
    assert bytes(s.data) == b"SSH-2.0-test\r\n"
    before = len(svc["banner"].received)
    gw.send(sid, b"after your FIN", end=True)
    lib.wait_until(lambda: len(svc["banner"].received) > before, 15, "the service to read to EOF")
    assert svc["banner"].received[-1] == b"after your FIN"


def test_refusals(env):
    gw, svc, closed, _ = env
    not_listed = lib.closed_port()
    sid = gw.connect(f"127.0.0.1:{not_listed}")
    assert gw.status(sid) == 403
    gw.wait(lambda: gw.streams[sid].ended, "END_STREAM after the 403")
    assert gw.status(gw.connect(f"127.0.0.1:{closed}")) == 502, "listed, nothing listening"
    assert gw.status(gw.connect(f"192.0.2.1:{svc['echo'].port}")) == 400
    assert gw.status(gw.connect(f"dev1.example:{svc['echo'].port}")) == 400


def test_reset_by_the_gateway_closes_the_local_socket(env):
    gw, svc, _, _ = env
    got = []

    def closed_by_agent(s, c):
        got.append(c.recv(100))
        got.append(c.recv(100))  # b"" once the agent closed it

    svc["echo"].handler = closed_by_agent
    try:
        sid = gw.connect(f"127.0.0.1:{svc['echo'].port}")
        assert gw.status(sid) == 200
        gw.send(sid, b"x")
        lib.wait_until(lambda: got, 15, "the byte at the service")
        gw.write(hl.rst(sid, hl.CANCEL))
        lib.wait_until(lambda: len(got) == 2, 15, "the service to see the close")
        assert got == [b"x", b""]
    finally:
        svc["echo"].handler = echo


def test_service_reset_is_connect_error(env):
    gw, svc, _, _ = env

    def reset(s, c):
        c.recv(100)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()

    svc["echo"].handler = reset
    try:
        sid = gw.connect(f"127.0.0.1:{svc['echo'].port}")
        assert gw.status(sid) == 200
        gw.send(sid, b"x")
        gw.wait(lambda: gw.streams[sid].reset is not None, "RST_STREAM")
        assert gw.streams[sid].reset == CONNECT_ERROR
    finally:
        svc["echo"].handler = echo


def test_sighup_changes_the_ports_for_new_streams_only(procs, tmp_path):
    """A reload rolls a new connection in with the new tcp_ports; the tunnel on the
    old, draining connection keeps working, then the old connection closes."""
    a, b = TCPService(echo), TCPService(echo)
    gw = FakeGateway()
    conf = tmp_path / "agent.conf"
    conf.write_text(f"tcp_ports = {a.port}\n")
    agent = lib.start_agent(procs, gw.port, plaintext=True, local_port=lib.closed_port(), connections=1,
                            extra=["--config", str(conf)])
    new = None
    try:
        gw.accept()
        old_sid = gw.connect(f"127.0.0.1:{a.port}")
        assert gw.status(old_sid) == 200
        conf.write_text(f"tcp_ports = {b.port}\n")
        agent.popen.send_signal(signal.SIGHUP)
        new = FakeGateway(listener=gw.listener)
        new.accept()
        assert new.status(new.connect(f"127.0.0.1:{a.port}")) == 403, "the new list"
        assert new.status(new.connect(f"127.0.0.1:{b.port}")) == 200
        s = gw.streams[old_sid]
        gw.send(old_sid, b"through the old connection")
        gw.wait(lambda: bytes(s.data) == b"through the old connection", "the old tunnel's echo")
        gw.send(old_sid, b"", end=True)
        gw.wait(lambda: s.ended, "the old tunnel's END_STREAM")
        gw.wait(lambda: gw.closed, "the drained old connection to close")
        assert agent.alive()
    finally:
        if new:
            new.sock.close()
        gw.close()
        a.close()
        b.close()


def test_idle_tunnel_outlives_request_timeout_and_pings(env):
    """local_timeout_ms is 300 and idle_ping_ms 200: a tunnel idle for 2 s is
    still open (the idle time is the test, not a race), and the connection too."""
    gw, svc, _, agent = env
    sid = gw.connect(f"127.0.0.1:{svc['echo'].port}")
    assert gw.status(sid) == 200
    pings = gw.pings
    time.sleep(2.0)
    assert gw.pings > pings, "the agent pinged while idle"
    s = gw.streams[sid]
    assert s.reset is None and not s.ended
    gw.send(sid, b"still there?")
    gw.wait(lambda: bytes(s.data) == b"still there?", "the echo after the idle time")
    gw.send(sid, b"", end=True)
    gw.wait(lambda: s.ended, "END_STREAM")
    assert agent.alive()
