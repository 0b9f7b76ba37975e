"""A user's HTTP/2 request and response bodies through the gateway (issue 12,
findings 5, 8 and 11), with a hand-written user (h2c frames) and a hand-written
device (hostile_lib), so each case sees exactly what crosses the gateway:

- memory: an upload the device does not take stays in the user's stream window
  (UploadWindow: 64 KiB to start), not in the gateway: one connection with 100
  such streams holds a few MiB, not 100;
- time: a request body that stops while the gateway waits for it gets 408 (or
  RST_STREAM once answered) after request_timeout_ms, and a device that stops in
  the middle of its response body is cut after response_timeout_ms;
- content-length: a body that breaks its content-length (more DATA after it is
  complete, DATA after content-length: 0) never reaches the device as a whole
  request: its end goes on only with the user's END_STREAM.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

import e2e_lib as lib
import hostile_lib as hl
from hostile_lib import DATA, END_STREAM, HEADERS, RST_STREAM, SETTINGS, ACK, WINDOW_UPDATE, frame
from test_hostile_http2 import Env, HostileDevice, wait_unregistered

RESPONSE_TIMEOUT_MS = 2500
REQUEST_TIMEOUT_MS = 1000
STREAMS = 100  # public_max_streams' default


@pytest.fixture(scope="module")
def env(module_procs, module_api, pki):
    gw = lib.start_gateway(module_procs, pki, name="gateway-h2-bodies", log_level="info",
                           extra=["--check-interval-ms", "0", "--idle-ping-ms", "0", "--grace-ms", "0",
                                  "--response-timeout-ms", str(RESPONSE_TIMEOUT_MS),
                                  "--request-timeout-ms", str(REQUEST_TIMEOUT_MS)])
    a2 = module_api("dev2.example")
    lib.start_agent(module_procs, gw.device_port, pki=pki, device="dev2.example", local_port=a2.port,
                    connections=1, log_level="info")
    assert lib.wait_device(gw, "dev2.example").status == 200
    return Env(gw, pki, a2)


class User:
    """A user's h2c connection that keeps the flow-control windows the gateway gives it."""

    def __init__(self, env: Env):
        self.s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=10)
        self.s.sendall(hl.MAGIC + hl.settings())
        self.r = hl.FrameReader(self.s)
        st = self.r.until(lambda f: f[0] == SETTINGS and not f[1] & ACK)
        assert st, "no SETTINGS from the gateway"
        self.initial = 65535
        for i in range(0, len(st[3]), 6):
            ident, value = struct.unpack(">HI", st[3][i:i + 6])
            if ident == 4:
                self.initial = value
        self.s.sendall(frame(SETTINGS, ACK, 0))
        self.conn_window = 65535
        self.windows: dict[int, int] = {}
        self.frames: list = []

    def open(self, sid: int, fields, end_stream=False):
        self.windows[sid] = self.initial
        self.s.sendall(hl.headers(sid, fields, end_stream))

    def pump(self, timeout: float) -> bool:
        """Reads one frame (False at EOF/deadline) and applies WINDOW_UPDATEs."""
        fr = self.r.next(timeout)
        if fr is None:
            return False
        self.frames.append(fr)
        if fr[0] == WINDOW_UPDATE:
            inc = int.from_bytes(fr[3], "big") & 0x7FFFFFFF
            if fr[2] == 0:
                self.conn_window += inc
            elif fr[2] in self.windows:
                self.windows[fr[2]] += inc
        elif fr[0] == RST_STREAM:
            self.windows.pop(fr[2], None)
        return True

    def send_allowed(self, sid: int, limit: int) -> int:
        """Sends DATA on `sid` as far as the windows allow, at most `limit` bytes."""
        n = min(self.windows.get(sid, 0), self.conn_window, limit)
        sent = 0
        while sent < n:
            k = min(16384, n - sent)
            self.s.sendall(frame(DATA, 0, sid, bytes(k)))
            sent += k
        if sid in self.windows:
            self.windows[sid] -= sent
        self.conn_window -= sent
        return sent

    def close(self):
        self.s.close()


def post(path: str, authority: str, length: int | None):
    f = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority)]
    if length is not None:
        f.append(("content-length", str(length)))
    return f


def test_uploads_a_device_never_takes_hold_little_memory(env):
    """Finding 5: one h2c connection, 100 streams each uploading to a device that
    never opens its window. Before: 1 MiB per stream parked in the gateway (+101
    MiB). Now each stream's window (64 KiB) is all the gateway holds for it."""
    dev = HostileDevice(env, window=0)
    u = User(env)
    base = lib.rss_mib(env.gw.proc.pid)
    peak = 0.0
    sent = 0
    try:
        sids = [2 * i + 1 for i in range(STREAMS)]
        for sid in sids:
            u.open(sid, post("/upload", "dev1.example", 2 << 20))
        t0 = time.monotonic()
        quiet_since = time.monotonic()
        while time.monotonic() - t0 < 30 and time.monotonic() - quiet_since < 2.0:
            pushed = sum(u.send_allowed(sid, (2 << 20)) for sid in sids)
            sent += pushed
            if pushed:
                quiet_since = time.monotonic()
            while u.pump(0.05):  # take what the gateway says (WINDOW_UPDATEs) until it is quiet
                pass
            peak = max(peak, lib.rss_mib(env.gw.proc.pid) - base)
        print(f"gateway took {sent / 1048576:.1f} MiB of uploads, RSS grew by {peak:.1f} MiB")
        assert sent < 16 << 20, f"the gateway took {sent >> 20} MiB of bodies no device asked for"
        assert peak < 16, f"gateway memory grew by {peak:.1f} MiB"
        env.bystander_ok()
    finally:
        u.close()
        dev.close()
    wait_unregistered(env)


def test_uploads_parked_at_a_device_then_the_user_leaves(env):
    """Review 19: complete uploads (END_STREAM) still queued towards a device that
    does not read, then the user closes the connection. The queue's drain callbacks
    (pauseIfBacklogged, whenRequestQueue) came back to the PublicStream after its
    connection was gone: settleUpload gave its window back a second time (the
    gateway's upload budget drifted) through the freed, unowned connection."""
    dev = HostileDevice(env, window=0)
    try:
        for _ in range(3):
            u = User(env)
            sids = [2 * i + 1 for i in range(20)]
            for sid in sids:
                u.open(sid, post("/upload", "dev1.example", 60000))
            left = {sid: 60000 for sid in sids}
            t0 = time.monotonic()
            while any(left.values()) and time.monotonic() - t0 < 10:
                for sid in sids:
                    if left[sid]:
                        left[sid] -= u.send_allowed(sid, left[sid])
                        if not left[sid]:
                            u.s.sendall(frame(DATA, END_STREAM, sid, b""))
                while u.pump(0.05):
                    pass
            assert not any(left.values()), f"the gateway took {sum(60000 - v for v in left.values())} bytes"
            u.close()
        # A crash shows as the next user's connection failing (users 2 and 3), and here.
        env.bystander_ok()
        assert env.gw.proc.alive(), "the gateway is still running"
    finally:
        dev.close()
    wait_unregistered(env)


@pytest.mark.parametrize("answered", [False, True], ids=["not-answered", "answer-started"])
def test_h2_body_that_stalls_gets_408_or_reset(env, answered):
    """Finding 8: part of the body, then nothing, while the gateway waits for more:
    408 (no answer yet) or RST_STREAM (answer started) after request_timeout_ms,
    and the device's stream is reset. Before: 504 after the response timeout, or
    a stream left open for as long as the user liked."""
    dev = HostileDevice(env)
    u = User(env)
    try:
        u.open(1, post("/echo", "dev1.example", 1000))
        u.send_allowed(1, 10)
        sid = dev.next_request()
        t0 = time.monotonic()
        if answered:
            dev.send(hl.headers(sid, [(":status", "200")]) + frame(DATA, 0, sid, b"y" * 10))
        fr = dev.r.until(lambda f: f[0] == RST_STREAM and f[2] == sid, REQUEST_TIMEOUT_MS / 1000 + 3)
        assert fr, "the device's stream was not reset"
        if answered:
            got = u.r.until(lambda f: f[0] == RST_STREAM and f[2] == 1, 5)
            assert got, f"the user's stream was not reset: {u.r.seen}"
        else:
            got = u.r.until(lambda f: f[0] == DATA and f[2] == 1 and b"stalled" in f[3], 5)
            assert got, f"no 408 for the user: {u.r.seen}"
        dt = time.monotonic() - t0
        assert dt < REQUEST_TIMEOUT_MS / 1000 + 1.5, f"took {dt:.1f}s"
        env.bystander_ok()
    finally:
        u.close()
        dev.close()
    wait_unregistered(env)


@pytest.mark.parametrize("user", ["h2", "http1"])
def test_device_that_stops_mid_response_is_cut(env, user):
    """Finding 8: a device sends its head and part of the body, then nothing, while
    the user reads: after response_timeout_ms without a byte the user's stream is
    reset (HTTP/1.1: its connection closed short) and so is the device's."""
    dev = HostileDevice(env)
    u = None
    s = None
    try:
        if user == "h2":
            u = User(env)
            u.open(1, [(":method", "GET"), (":scheme", "http"), (":path", "/stops"), (":authority", "dev1.example")],
                   end_stream=True)
        else:
            s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=15)
            s.sendall(b"GET /stops HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
        sid = dev.next_request()
        dev.send(hl.headers(sid, [(":status", "200"), ("content-length", "100")]) + frame(DATA, 0, sid, b"z" * 10))
        t0 = time.monotonic()
        fr = dev.r.until(lambda f: f[0] == RST_STREAM and f[2] == sid, RESPONSE_TIMEOUT_MS / 1000 + 3)
        assert fr, "the device's stream was not reset"
        if u:
            got = u.r.until(lambda f: f[0] == RST_STREAM and f[2] == 1, 5)
            assert got, f"the user's stream was not reset: {u.r.seen}"
        else:
            data, closed = lib.read_until_close(s, 5)
            assert closed and data.startswith(b"HTTP/1.1 200") and data.endswith(b"z" * 10), data
        dt = time.monotonic() - t0
        assert RESPONSE_TIMEOUT_MS / 1000 - 0.5 < dt < RESPONSE_TIMEOUT_MS / 1000 + 2, f"took {dt:.1f}s"
    finally:
        if u:
            u.close()
        if s:
            s.close()
        dev.close()
    wait_unregistered(env)


@pytest.mark.parametrize("declared,first", [(0, b""), (5, b"hello")], ids=["cl0-then-data", "cl5-then-more"])
def test_body_breaking_its_content_length_never_completes_on_the_device(env, declared, first):
    """Finding 11: content-length N, N bytes without END_STREAM, then one more byte
    (nghttp2 resets the stream). The device must never have had a complete
    request: with content-length 0 no request at all, else not all N bytes."""
    dev = HostileDevice(env)
    u = User(env)
    try:
        u.open(1, post("/once", "dev1.example", declared))
        if first:
            u.s.sendall(frame(DATA, 0, 1, first))
        u.s.sendall(frame(DATA, END_STREAM, 1, b"x"))
        got = u.r.until(lambda f: f[0] == RST_STREAM and f[2] == 1, 5)
        assert got, f"the user's stream was not reset: {u.r.seen}"
        # A request that must arrive after the first one if it was forwarded at all.
        u.open(3, post("/next", "dev1.example", 0), end_stream=True)
        fr = dev.r.until(lambda f: f[0] == HEADERS and f[1] & END_STREAM, 10)  # /next: no body
        assert fr, f"the second request did not reach the device: {dev.r.seen}"
        before = dev.r.seen
        body = b"".join(f[3] for f in before if f[0] == DATA)
        heads = [f for f in before if f[0] == HEADERS]
        if declared == 0:
            assert len(heads) == 1, f"the content-length: 0 request reached the device: {before}"
        else:
            assert len(body) < declared, f"the device got the whole declared body: {before}"
    finally:
        u.close()
        dev.close()
    wait_unregistered(env)


def test_valid_content_length_bodies_still_go_through(env):
    """The other side of finding 11: content-length 0 ended by an empty DATA, and a
    body whose END_STREAM comes in a frame of its own, are answered as usual."""
    before = env.api.requests
    u = User(env)
    try:
        u.open(1, post("/echo", "dev2.example", 0))
        u.s.sendall(frame(DATA, END_STREAM, 1, b""))
        u.open(3, post("/mirror", "dev2.example", 5))
        u.s.sendall(frame(DATA, 0, 3, b"hello"))
        u.s.sendall(frame(DATA, END_STREAM, 3, b""))
        ends = set()
        body3 = b""
        for _ in range(1000):
            if not u.pump(10):
                break
            fr = u.frames[-1]
            if fr[0] == DATA and fr[2] == 3:
                body3 += fr[3]
            if fr[0] in (DATA, HEADERS) and fr[1] & END_STREAM:
                ends.add(fr[2])
            assert fr[0] != RST_STREAM, f"stream reset: {fr}"
            if ends == {1, 3}:
                break
        assert ends == {1, 3}, u.frames
        assert body3 == b"hello", body3
    finally:
        u.close()
    assert env.api.requests == before + 2


def test_uploads_of_all_users_together_stay_within_the_gateway_budget(procs, pki):
    """Finding 5, in total: every upload's window counts towards upload_budget_bytes
    (here 1 MiB: 16 uploads of 64 KiB), whoever sends it; past it a new upload gets
    503 with Retry-After and never reaches the device, a request without a body still
    goes through, and an upload that ends makes room for the next."""
    gw = lib.start_gateway(procs, pki, name="gateway-upload-budget", log_level="info",
                           extra=["--check-interval-ms", "0", "--idle-ping-ms", "0", "--grace-ms", "0",
                                  "--request-timeout-ms", "30000", "--upload-budget-bytes", str(1 << 20)])
    env = Env(gw, pki, None)
    dev = HostileDevice(env)
    users = [User(env), User(env)]
    try:
        for u in users:  # 8 uploads on each of two connections: the budget is full
            for i in range(8):
                u.open(2 * i + 1, post("/upload", "dev1.example", 1000))
        for _ in range(16):
            dev.next_request()
        users[1].open(17, post("/upload", "dev1.example", 1000))
        got = users[1].r.until(lambda f: f[0] == DATA and f[2] == 17 and b"uploads" in f[3], 10)
        assert got, f"no 503 for the upload past the budget: {users[1].r.seen}"
        users[1].open(19, [(":method", "GET"), (":scheme", "http"), (":path", "/x"), (":authority", "dev1.example")],
                      end_stream=True)
        dev.next_request()  # the GET, not the refused upload
        users[0].s.sendall(hl.rst(1))  # one upload ends: room for one more
        assert dev.r.until(lambda f: f[0] == RST_STREAM, 10), "the device's stream of the ended upload was not reset"
        users[1].open(21, post("/upload", "dev1.example", 1000))
        dev.next_request()
        assert "the gateway holds as many uploads as it may" in gw.log()
    finally:
        for u in users:
            u.close()
        dev.close()


def test_answered_uploads_hold_no_budget_while_their_user_never_reads(procs, pki):
    """An upload answered at once (here 503: no such device) can park nothing more in
    the gateway, so it gives its share of upload_budget_bytes back even when its user
    never opens a window for the answer (which then never completes): 40 of them on
    one connection leave the budget (16 uploads) to the others."""
    gw = lib.start_gateway(procs, pki, name="gateway-upload-budget-held", log_level="info",
                           extra=["--check-interval-ms", "0", "--idle-ping-ms", "0", "--grace-ms", "0",
                                  "--request-timeout-ms", "30000", "--upload-budget-bytes", str(1 << 20)])
    env = Env(gw, pki, None)
    dev = HostileDevice(env)
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    u = User(env)
    try:
        s.sendall(hl.MAGIC + hl.settings(initial_window_size=0))
        r = hl.FrameReader(s)
        assert r.until(lambda f: f[0] == SETTINGS and not f[1] & ACK), "no SETTINGS from the gateway"
        s.sendall(frame(SETTINGS, ACK, 0))
        for i in range(40):
            s.sendall(hl.headers(2 * i + 1, post("/upload", "nosuch.example", 1000), False))
        assert r.until(lambda f: f[0] == HEADERS and f[2] == 79, 10), "no answer to the 40th upload"
        for i in range(16):  # the whole budget is still there for another user
            u.open(2 * i + 1, post("/upload", "dev1.example", 1000))
        for _ in range(16):
            dev.next_request()
    finally:
        s.close()
        u.close()
        dev.close()
