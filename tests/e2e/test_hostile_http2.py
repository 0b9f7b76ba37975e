"""Hostile HTTP/2, on both sides of the gateway (issue 8, "Hostile input").

Device side: a hostile device, written here with hand-built frames over mTLS with
a real fleet certificate (dev1.example), does what a device must never do: opens
streams (to reach another device or the admin side), answers a stream it was
never asked, sends more or less body than it declared, never opens its
flow-control window, floods PING/SETTINGS/WINDOW_UPDATE/CONTINUATION frames.

User side (h2c on the public listener): CONTINUATION, SETTINGS and PING floods,
more concurrent streams than allowed, invalid pseudo-headers. Rapid reset is in
test_public_http2.py::test_rapid_reset_gets_goaway.

Each case: the connection is refused as RFC 9113 says (GOAWAY or RST_STREAM with
the error code checked), nothing reaches another device, and an ordinary user
of another device (dev2.example, real agent) is served throughout. The last test
checks the gateway's memory and file descriptors after all of them.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time

import pytest

import e2e_lib as lib
import hostile_lib as hl
from hostile_lib import (ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, GOAWAY, HEADERS,
                         PING, PROTOCOL_ERROR, PUSH_PROMISE, REFUSED_STREAM, RST_STREAM, SETTINGS, WINDOW_UPDATE,
                         frame)

RESPONSE_TIMEOUT_MS = 3000
REQUEST_TIMEOUT_MS = 1500
PUBLIC_MAX_STREAMS = 10
# Growth of the gateway's resident memory over every case of this module, and
# the file descriptors it may hold beyond its baseline once they are over.
RSS_TOLERANCE_MIB = 24.0
FD_TOLERANCE = 4


class Env:
    def __init__(self, gw, pki, bystander_api):
        self.gw = gw
        self.pki = pki
        self.api = bystander_api
        self.base_rss = lib.rss_mib(gw.proc.pid)
        self.base_fds = hl.fd_count(gw.proc.pid)

    def bystander_ok(self):
        r = lib.request(self.gw.public_port, "GET", "/device", "dev2.example", timeout=10)
        assert r.status == 200 and r.body == b"dev2.example", r

    def admin(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.gw.admin_port, timeout=10)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def streams_limit_of(self, device) -> int:
        st, body = self.admin("/devices/" + device)
        conns = json.loads(body)["connections"] if st == 200 else []
        return conns[0]["max_concurrent_streams"] if len(conns) == 1 else 0

    def connections_of(self, device) -> int:
        st, body = self.admin("/devices/" + device)
        return len(json.loads(body)["connections"]) if st == 200 else 0


@pytest.fixture(scope="module")
def env(module_procs, module_api, pki):
    gw = lib.start_gateway(module_procs, pki, name="gateway-hostile-h2", log_level="info",
                           extra=["--check-interval-ms", "0", "--idle-ping-ms", "0", "--grace-ms", "0",
                                  "--response-timeout-ms", str(RESPONSE_TIMEOUT_MS),
                                  "--request-timeout-ms", str(REQUEST_TIMEOUT_MS),
                                  "--public-max-streams", str(PUBLIC_MAX_STREAMS)])
    a2 = module_api("dev2.example")
    lib.start_agent(module_procs, gw.device_port, pki=pki, device="dev2.example", local_port=a2.port,
                    connections=1, log_level="info")
    assert lib.wait_device(gw, "dev2.example").status == 200
    return Env(gw, pki, a2)


# --------------------------------------------------------------------------- a hostile device


class HostileDevice:
    """dev1.example, speaking HTTP/2 by hand: the reversed preface, its SETTINGS,
    and whatever the test sends next. Registered once the gateway lists it."""

    def __init__(self, env: Env, window: int | None = None):
        self.env = env
        self.s = hl.dial_device(env.gw, hl.device_tls(env.pki, env.pki.device_cert("dev1.example"),
                                                      env.pki.device_key("dev1.example")))
        assert self.s.selected_alpn_protocol() == "h2"
        self.r = hl.FrameReader(self.s)
        st = {"max_concurrent_streams": 99}  # the admin side shows it once the gateway took our SETTINGS
        if window is not None:
            st["initial_window_size"] = window
        self.s.sendall(hl.MAGIC + hl.settings(**st))
        assert self.r.until(lambda f: f[0] == SETTINGS and not f[1] & ACK), "no SETTINGS from the gateway"
        self.s.sendall(frame(SETTINGS, ACK, 0))
        lib.wait_until(lambda: env.streams_limit_of("dev1.example") == 99, 10, "the hostile device to be registered")

    def next_request(self, timeout=10.0) -> int:
        """The stream id of the next request the gateway sends."""
        fr = self.r.until(lambda f: f[0] == HEADERS, timeout)
        assert fr, "the gateway sent no request"
        return fr[2]

    def send(self, data: bytes):
        self.s.sendall(data)

    def expect_goaway_close(self, code=PROTOCOL_ERROR, timeout=10.0):
        got, closed = self.r.goaway_and_close(timeout)
        assert got == code and closed, f"expected GOAWAY({code}) and close, got GOAWAY({got}), closed={closed}"

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def user_request(env: Env, raw: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=15)
    s.sendall(raw)
    return s


def wait_unregistered(env: Env):
    lib.wait_until(lambda: env.connections_of("dev1.example") == 0, 10, "the hostile device's connection to be gone")


@pytest.mark.parametrize("opening", ["odd-stream-to-another-device", "even-stream-to-the-admin-side", "push-promise"])
def test_device_cannot_open_streams(env, opening):
    """The device is the HTTP/2 server of its connection: a HEADERS that opens a
    stream, or a PUSH_PROMISE (push is disabled), is a connection error. Nothing
    reaches dev2's API or the admin listener."""
    before = env.api.requests
    dev = HostileDevice(env)
    try:
        req = [(":method", "GET"), (":scheme", "http"), (":path", "/device"), (":authority", "dev2.example")]
        if opening == "odd-stream-to-another-device":
            dev.send(hl.headers(1, req, end_stream=True))
        elif opening == "even-stream-to-the-admin-side":
            dev.send(hl.headers(2, [(":method", "POST"), (":scheme", "http"),
                                    (":path", "/devices/dev2.example/disconnect"),
                                    (":authority", f"127.0.0.1:{env.gw.admin_port}")], end_stream=True))
        else:
            u = user_request(env, b"GET /x HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
            sid = dev.next_request()
            dev.send(frame(PUSH_PROMISE, END_HEADERS, sid, struct.pack(">I", 2) + hl.hpack(req)))
            data, closed = lib.read_until_close(u, 10)
            # The request was never answered: retried (GET), and with no other
            # connection of dev1 left, 503.
            assert data.startswith(b"HTTP/1.1 503"), data[:200]
            u.close()
        dev.expect_goaway_close(PROTOCOL_ERROR)
    finally:
        dev.close()
    wait_unregistered(env)
    assert env.api.requests == before, "a request from the device reached another device"
    assert env.connections_of("dev2.example") == 1, "dev2 was disconnected"
    env.bystander_ok()


def test_device_answering_a_stream_never_asked_is_a_connection_error(env):
    dev = HostileDevice(env)
    try:
        dev.send(hl.headers(5, [(":status", "200"), ("content-length", "0")], end_stream=True))
        dev.expect_goaway_close(PROTOCOL_ERROR)
    finally:
        dev.close()
    wait_unregistered(env)
    env.bystander_ok()


@pytest.mark.parametrize("declared,sent", [(5, 12), (100, 10)], ids=["more-than-declared", "less-than-declared"])
def test_device_body_not_matching_its_content_length(env, declared, sent):
    """RFC 9113 §8.1.1: a DATA length that does not match content-length is
    malformed. The stream is reset and the user's connection closed before a
    byte beyond the declared length reaches it: never a response that looks
    complete when it is not, nor bytes a keep-alive user would read as the next."""
    dev = HostileDevice(env)
    u = user_request(env, b"GET /x HTTP/1.1\r\nHost: dev1.example\r\n\r\n"
                          b"GET /y HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
    try:
        sid = dev.next_request()
        dev.send(hl.headers(sid, [(":status", "200"), ("content-length", str(declared))]))
        dev.send(frame(DATA, END_STREAM, sid, b"S" * sent))
        fr = dev.r.until(lambda f: f[0] == RST_STREAM and f[2] == sid, 10)
        assert fr and int.from_bytes(fr[3], "big") == PROTOCOL_ERROR, f"no RST_STREAM(PROTOCOL_ERROR): {dev.r.seen}"
        data, closed = lib.read_until_close(u, 10)
        assert closed, data
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.1 502"), data[:200]
        assert len(body) < declared and b"HTTP/1.1" not in body, data
        # The connection itself is fine: the device answers the next user.
        u2 = user_request(env, b"GET /z HTTP/1.1\r\nHost: dev1.example\r\nConnection: close\r\n\r\n")
        sid = dev.next_request()
        dev.send(hl.headers(sid, [(":status", "200"), ("content-length", "2")]) + frame(DATA, END_STREAM, sid, b"ok"))
        data, closed = lib.read_until_close(u2, 10)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nok"), data
        u2.close()
    finally:
        u.close()
        dev.close()
    wait_unregistered(env)


def test_device_that_never_opens_its_window_holds_no_memory(env):
    """A device that takes a request but never sends WINDOW_UPDATE: the gateway
    stops reading the user's upload (back-pressure) rather than buffering it, and
    answers 504 at the response timeout, then closes the user's connection."""
    dev = HostileDevice(env)
    size = 64 << 20
    base = lib.rss_mib(env.gw.proc.pid)
    u = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=15)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    try:
        u.sendall(b"POST /upload HTTP/1.1\r\nHost: dev1.example\r\nContent-Length: %d\r\n\r\n" % size)
        sid = dev.next_request()
        t0 = time.monotonic()
        sent = 0
        block = bytes(65536)
        u.setblocking(False)
        peak = 0.0
        for _ in range(100_000):  # push until the gateway stops taking bytes for a while
            try:
                sent += u.send(block)
                continue
            except BlockingIOError:
                pass
            peak = max(peak, lib.rss_mib(env.gw.proc.pid) - base)
            if time.monotonic() - t0 > RESPONSE_TIMEOUT_MS / 1000 / 2:
                break
            time.sleep(0.05)
        u.setblocking(True)
        assert sent < 16 << 20, f"the gateway took {sent >> 20} MiB of a body the device never asked for"
        assert peak < 16, f"gateway memory grew by {peak:.1f} MiB"
        env.bystander_ok()  # other users are served meanwhile
        data, closed = lib.read_until_close(u, RESPONSE_TIMEOUT_MS / 1000 + 10)
        assert data.startswith(b"HTTP/1.1 504") and closed, data[:200]
        assert dev.r.until(lambda f: f[0] == RST_STREAM and f[2] == sid, 5), "the stream was not reset"
    finally:
        u.close()
        dev.close()
    wait_unregistered(env)


@pytest.mark.parametrize("answered", [True, False], ids=["device-streams-its-answer", "device-waits"])
def test_user_stalling_its_body_is_cut(env, answered):
    """Slowloris on a body: a user sends a head and part of the body, then
    nothing. Without a limit, a device that streams its answer while it reads
    (device-sim's /echo does) would hold the stream for as long as the user
    likes. Some of the body must come every request_timeout_ms: else 408 (no
    answer yet) or the connection cut (answer started: never complete-looking),
    and the device's stream is reset."""
    dev = HostileDevice(env)
    t0 = time.monotonic()
    u = user_request(env, b"POST /echo HTTP/1.1\r\nHost: dev1.example\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    try:
        sid = dev.next_request()
        if answered:
            dev.send(hl.headers(sid, [(":status", "200")]) + frame(DATA, 0, sid, b"x" * 10))
        fr = dev.r.until(lambda f: f[0] == RST_STREAM and f[2] == sid, REQUEST_TIMEOUT_MS / 1000 + 3)
        assert fr, f"the device's stream was not reset: {dev.r.seen}"
        data, closed = lib.read_until_close(u, 5)
        dt = time.monotonic() - t0
        assert closed and dt < REQUEST_TIMEOUT_MS / 1000 + 1.5, f"closed={closed} after {dt:.1f}s"
        if answered:
            assert data.startswith(b"HTTP/1.1 200") and not data.endswith(b"0\r\n\r\n"), data
        else:
            assert data.startswith(b"HTTP/1.1 408"), data[:200]
    finally:
        u.close()
        dev.close()
    wait_unregistered(env)


@pytest.mark.parametrize("flood", ["ping", "settings", "window-update", "continuation"])
def test_device_floods(env, flood):
    """A device floods frames without reading the gateway's answers. PING and
    SETTINGS need an ACK each: the gateway bounds the ACKs it queues (nghttp2's
    max_outbound_ack) and closes with ENHANCE_YOUR_CALM, or keeps up; WINDOW_UPDATE
    needs nothing; CONTINUATION beyond nghttp2's limit (8) ends the connection.
    Memory stays bounded and other users are served."""
    dev = HostileDevice(env)
    base = lib.rss_mib(env.gw.proc.pid)
    n = 20_000
    try:
        if flood == "ping":
            burst = b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(n))
        elif flood == "settings":
            burst = frame(SETTINGS, 0, 0) * n
        elif flood == "window-update":
            burst = hl.window_update(0, 1) * n
        else:
            u = user_request(env, b"GET /x HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
            sid = dev.next_request()
            burst = frame(HEADERS, 0, sid, hl.hpack([(":status", "200")])) + frame(CONTINUATION, 0, sid, hl.hpack([("x-a", "b" * 50)])) * n
        dev.s.settimeout(20)
        try:
            dev.s.sendall(burst)
        except OSError:
            pass  # the gateway closed mid-flood: that is one right answer
        grow = lib.rss_mib(env.gw.proc.pid) - base
        if flood == "continuation":
            dev.expect_goaway_close(ENHANCE_YOUR_CALM)  # nghttp2: too many CONTINUATION frames
            data, closed = lib.read_until_close(u, 10)
            assert data.startswith(b"HTTP/1.1 503"), data[:200]  # retried, no connection left
            u.close()
        elif flood == "window-update":
            # Harmless: the connection still serves.
            u = user_request(env, b"GET /x HTTP/1.1\r\nHost: dev1.example\r\nConnection: close\r\n\r\n")
            sid = dev.next_request(15)
            dev.send(hl.headers(sid, [(":status", "204")], end_stream=True))
            data, _ = lib.read_until_close(u, 10)
            assert data.startswith(b"HTTP/1.1 204"), data[:200]
            u.close()
        else:
            # Either the gateway answered every ACK (we read them now), or it gave
            # up queueing them: GOAWAY(ENHANCE_YOUR_CALM) and close.
            acks = 0
            code = None
            for _ in range(n + 100):
                fr = dev.r.next(3)
                if fr is None:
                    break
                if fr[0] in (PING, SETTINGS) and fr[1] & ACK:
                    acks += 1
                if fr[0] == GOAWAY:
                    code = int.from_bytes(fr[3][4:8], "big")
                if acks >= n:
                    break
            assert acks >= n or (code == ENHANCE_YOUR_CALM and dev.r.eof) or dev.r.eof, (acks, code)
        assert grow < 16, f"gateway memory grew by {grow:.1f} MiB during a {flood} flood"
    finally:
        dev.close()
    wait_unregistered(env)
    env.bystander_ok()


# --------------------------------------------------------------------------- a hostile user over h2c


def h2c(env: Env) -> tuple[socket.socket, hl.FrameReader]:
    s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=10)
    s.sendall(hl.MAGIC + hl.settings())
    r = hl.FrameReader(s)
    assert r.until(lambda f: f[0] == SETTINGS and not f[1] & ACK), "no SETTINGS from the gateway"
    s.sendall(frame(SETTINGS, ACK, 0))
    return s, r


def req(path="/device", authority="dev2.example", method="GET"):
    return [(":method", method), (":scheme", "http"), (":path", path), (":authority", authority)]


@pytest.mark.parametrize("fields", [
    [(":method", "GET"), (":scheme", "http"), (":authority", "dev2.example")],                       # no :path
    [(":method", "GET"), (":path", "/device"), (":authority", "dev2.example")],                      # no :scheme
    req() + [(":foo", "bar")],                                                                        # unknown pseudo
    [(":method", "GET"), ("x-a", "b"), (":scheme", "http"), (":path", "/"), (":authority", "dev2.example")],  # pseudo after a field
    req() + [(":path", "/again")],                                                                    # duplicated pseudo
    req() + [("X-Upper", "v")],                                                                       # upper-case name
    req() + [("connection", "keep-alive")],                                                           # connection-specific
    req() + [("x-bad", "a\r\nInjected: 1")],                                                          # CR LF in a value
    req(path="") ,                                                                                    # empty :path
], ids=["no-path", "no-scheme", "unknown-pseudo", "pseudo-after-field", "dup-pseudo", "upper-case-name",
        "connection-field", "crlf-in-value", "empty-path"])
def test_user_invalid_pseudo_headers_reset_the_stream(env, fields):
    """RFC 9113 §8.1.1, §8.2, §8.3: a malformed request is a stream error
    PROTOCOL_ERROR; it never reaches the device; the connection serves the next stream."""
    before = env.api.requests
    s, r = h2c(env)
    try:
        s.sendall(hl.headers(1, fields, end_stream=True))
        fr = r.until(lambda f: f[0] in (RST_STREAM, GOAWAY, HEADERS) and f[2] in (0, 1), 10)
        assert fr and fr[0] == RST_STREAM and int.from_bytes(fr[3], "big") == PROTOCOL_ERROR, f"got {fr}"
        s.sendall(hl.headers(3, req(), end_stream=True))
        fr = r.until(lambda f: f[0] == HEADERS and f[2] == 3, 10)
        assert fr and fr[3][:1] == b"\x88", f"no 200 on the next stream: {fr}"  # :status 200 (static index 8)
    finally:
        s.close()
    assert env.api.requests == before + 1


def test_user_exceeding_max_concurrent_streams_is_refused(env):
    """public_max_streams open at once. A stream beyond the limit the user has
    acknowledged is, for nghttp2, a connection error: GOAWAY(PROTOCOL_ERROR) and
    close (RFC 9113 §5.1.2 allows a stream error; nghttpx does the same as we do).
    No more than public_max_streams requests reach a device, and other users are
    served."""
    before = env.api.requests
    s, r = h2c(env)
    try:
        n = PUBLIC_MAX_STREAMS * 3
        # Requests with a body that never comes: they stay open.
        s.sendall(b"".join(hl.headers(2 * i + 1, req("/upload", method="POST")) for i in range(n)))
        code, closed = r.goaway_and_close(10)
        refused = {f[2] for f in r.seen if f[0] == RST_STREAM}
        assert (code == PROTOCOL_ERROR and closed) or len(refused) >= n - PUBLIC_MAX_STREAMS, (code, closed, refused)
    finally:
        s.close()
    assert env.api.requests - before <= PUBLIC_MAX_STREAMS
    env.bystander_ok()


@pytest.mark.parametrize("flood", ["continuation", "settings", "ping", "window-update"])
def test_user_floods(env, flood):
    """A user's floods: CONTINUATION beyond the limit ends the connection at once
    (CVE-2024-28182); PING/SETTINGS ACKs that the user never reads are bounded
    (ENHANCE_YOUR_CALM); WINDOW_UPDATE costs nothing. Bounded memory and time."""
    s, r = h2c(env)
    base = lib.rss_mib(env.gw.proc.pid)
    n = 20_000
    t0 = time.monotonic()
    try:
        if flood == "continuation":
            burst = frame(HEADERS, 0, 1, hl.hpack(req())) + frame(CONTINUATION, 0, 1, hl.hpack([("x-a", "b" * 50)])) * n
        elif flood == "settings":
            burst = frame(SETTINGS, 0, 0) * n
        elif flood == "ping":
            burst = b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(n))
        else:
            burst = hl.window_update(0, 1) * n
        s.settimeout(20)
        try:
            s.sendall(burst)
        except OSError:
            pass
        if flood == "continuation":
            code, closed = r.goaway_and_close(10)
            assert code == ENHANCE_YOUR_CALM and closed, (code, closed)
            assert time.monotonic() - t0 < 5
        elif flood == "window-update":
            s.sendall(hl.headers(1, req(), end_stream=True))
            assert r.until(lambda f: f[0] == HEADERS and f[2] == 1, 10), "no answer after a WINDOW_UPDATE flood"
        else:
            acks, code = 0, None
            for _ in range(n + 100):
                fr = r.next(3)
                if fr is None:
                    break
                acks += fr[0] in (PING, SETTINGS) and bool(fr[1] & ACK)
                if fr[0] == GOAWAY:
                    code = int.from_bytes(fr[3][4:8], "big")
                if acks >= n:
                    break
            assert acks >= n or r.eof, (acks, code)
        assert lib.rss_mib(env.gw.proc.pid) - base < 16
    finally:
        s.close()
    env.bystander_ok()


# --------------------------------------------------------------------------- after all of it


def test_resources_after_the_hostile_cases(env):
    """Runs last in this module: the gateway's memory grew by less than
    RSS_TOLERANCE_MIB over every case above, and its file descriptors are back to
    the baseline (every hostile connection closed)."""
    env.bystander_ok()
    fds = hl.wait_fds_at_most(env.gw.proc.pid, env.base_fds + FD_TOLERANCE, 10)
    rss = lib.rss_mib(env.gw.proc.pid)
    print(f"\nhostile HTTP/2: gateway RSS {env.base_rss:.1f} -> {rss:.1f} MiB, fds {env.base_fds} -> {fds}")
    assert rss - env.base_rss < RSS_TOLERANCE_MIB, f"RSS {env.base_rss:.1f} -> {rss:.1f} MiB"
    assert env.gw.proc.alive()
