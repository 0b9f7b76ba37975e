"""CONNECT to a device's TCP port through the gateway (issue 14), gateway side.

The device is a fake (connect_lib.FakeDevice: mTLS, HTTP/2 by hand) that answers
CONNECT streams as the contract says an agent does, so these tests do not need the
agent's CONNECT support. Users speak HTTP/1.1 CONNECT on the plain and the TLS
public listener (raw sockets; TLS through memory BIOs so that the user can send
close_notify and read on), and HTTP/2 CONNECT on h2c (frames by hand).

Checked: 200 then bytes both ways, the device's stream (`:authority 127.0.0.1:PORT`,
no :scheme/:path), 10 MiB each way with matching SHA-256, half-close each way (TCP
FIN and TLS close_notify), refusals (policy without ports=22: 403 before the device;
the device's 403 and 502; no answer: 504; offline: 503 + Retry-After; bad authority:
400; no credentials: 401), a reset from the device closes the user's connection, a
tunnel outlives idle_timeout_ms, SIGTERM lets an open tunnel finish, the tunnel's
log line and metrics.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import struct
import threading
import time

import pytest

import connect_lib as cl
import e2e_lib as lib
import hostile_lib as hl
from hostile_lib import DATA, END_STREAM, HEADERS, RST_STREAM, frame

REQUEST_TIMEOUT_MS = 1500
IDLE_TIMEOUT_MS = 1000
OPS = "rht_" + "o" * 43   # ports=22..27 on dev1, 22 on dev2
WEB = "rht_" + "w" * 43   # HTTP only


def token_line(name: str, secret: str) -> str:
    return f"{name} {hashlib.sha256(secret.encode()).hexdigest()} devices=* created=1700000000 expires=never\n"


def start(procs, pki, tmp, public_tls=False, name="gw-connect", extra=()):
    policy = tmp / "policy"
    policy.write_text("allow token:ops dev1.example ports=22,23,24,25,26,27\n"
                      "allow token:ops dev2.example ports=22\n"
                      "allow token:web dev1.example\n")
    tokens = tmp / "tokens"
    tokens.write_text(token_line("ops", OPS) + token_line("web", WEB))
    os.chmod(tokens, 0o600)
    return lib.start_gateway(procs, pki, name=name, log_level="info", public_tls=public_tls,
                             extra=["--access-policy", policy, "--tokens", tokens,
                                    "--request-timeout-ms", str(REQUEST_TIMEOUT_MS),
                                    "--idle-timeout-ms", str(IDLE_TIMEOUT_MS),
                                    "--check-interval-ms", "0", "--idle-ping-ms", "0", *extra])


class Env:
    def __init__(self, gw, pki):
        self.gw = gw
        self.pki = pki
        self.dev = cl.FakeDevice(gw, pki)
        lib.wait_until(lambda: self.connections("dev1.example") == 1, 10, "the fake device to be registered")

    def admin(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.gw.admin_port, timeout=10)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def connections(self, device) -> int:
        import json
        st, body = self.admin("/devices/" + device)
        return len(json.loads(body)["connections"]) if st == 200 else 0

    def user(self):
        if self.gw.https:
            return cl.TLSUser(self.gw.public_port, self.pki.ca)
        return cl.PlainUser(self.gw.public_port)

    def connect(self, authority="dev1.example:22", token=OPS):
        """A user connection that sent CONNECT; (user, status, head, bytes after the head)."""
        u = self.user()
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        u.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n".encode())
        status, head, rest = cl.read_head(u)
        return u, status, head, rest


@pytest.fixture(scope="module", params=["plain", "tls"])
def env(request, module_procs, pki, tmp_path_factory):
    tls = request.param == "tls"
    gw = start(module_procs, pki, tmp_path_factory.mktemp("connect-" + request.param), public_tls=tls,
               name="gw-connect-" + request.param)
    e = Env(gw, pki)
    yield e
    e.dev.stop()
    gw.proc.stop()


def test_connect_echo_and_the_stream_the_device_gets(env):
    before = env.dev.requests()
    u, status, head, rest = env.connect()
    try:
        assert status == 200 and head.startswith(b"HTTP/1.1 200 Connection established"), head
        assert rest == b""
        s = env.dev.last()
        assert env.dev.requests() == before + 1
        fields = dict(s.fields)
        assert fields[":method"] == "CONNECT" and fields[":authority"] == "127.0.0.1:22", s.fields
        assert ":scheme" not in fields and ":path" not in fields and ":protocol" not in fields, s.fields
        assert fields.get("x-forwarded-user") == "token:ops", s.fields
        u.sendall(b"hello\n")
        got = b""
        for _ in range(100):
            got += u.recv()
            if len(got) >= 6:
                break
        assert got == b"hello\n"
        # The user's half-close is END_STREAM to the device, whose echo ends in turn.
        u.close_notify()
        assert cl.read_all(u, timeout=15) == b""
        lib.wait_until(lambda: s.ended, 10, "END_STREAM at the device")
        assert s.received == b"hello\n" and s.reset is None
    finally:
        u.close()
    log = env.gw.proc.wait_log("tunnel client=", 10)
    assert "device=dev1.example port=22 bytes_up=6 bytes_down=6" in log and "result=closed" in log, log[-2000:]
    st, metrics = env.admin("/metrics")
    text = metrics.decode()
    assert "rhttp_tunnels_open 0" in text and 'rhttp_tunnels_total{result="closed"}' in text, text[-3000:]


def test_bytes_sent_with_the_connect_reach_the_device(env):
    """A client that does not wait for the 200: its first bytes come in the same
    segment as the CONNECT, are held (never parsed as HTTP) and sent once open."""
    u = env.user()
    try:
        u.sendall(b"CONNECT dev1.example:22 HTTP/1.1\r\nHost: dev1.example:22\r\nAuthorization: Bearer " + OPS.encode()
                  + b"\r\n\r\nSSH-2.0-early\r\nGET / HTTP/1.1\r\n\r\n")
        status, head, rest = cl.read_head(u)
        assert status == 200, head
        u.close_notify()
        assert cl.read_all(u, rest, timeout=15) == b"SSH-2.0-early\r\nGET / HTTP/1.1\r\n\r\n"
    finally:
        u.close()


def test_ten_mib_each_way(env):
    payload = os.urandom(10 << 20)
    u, status, head, rest = env.connect()
    assert status == 200, head
    err = []
    echoed = threading.Event()

    def send():
        try:
            for i in range(0, len(payload), 256 << 10):
                u.sendall(payload[i:i + (256 << 10)])
            # The half-close once every echoed byte is in (TLSUser.close_notify).
            if not echoed.wait(120):
                raise AssertionError("the echo did not come back")
            u.close_notify()
        except Exception as e:  # noqa: BLE001 -- reported below
            err.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    got = bytearray(rest)
    try:
        deadline = time.monotonic() + 120
        while len(got) < len(payload) and time.monotonic() < deadline:
            chunk = u.recv(max(0.01, deadline - time.monotonic()))
            if not chunk:
                break
            got += chunk
        echoed.set()
        tail = cl.read_all(u, timeout=60, limit=1)  # then the device's end
    finally:
        t.join(60)
        u.close()
    assert not err, err
    assert len(got) == len(payload) and tail == b""
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_device_ends_first_and_the_user_goes_on(env):
    """The device's END_STREAM: FIN (on TLS close_notify) to the user, whose bytes
    still reach the device; the user's end then ends the tunnel."""
    u, status, head, rest = env.connect("dev1.example:23")
    try:
        assert status == 200, head
        assert cl.read_all(u, rest, timeout=15) == b"bye\n", "the device's bytes, then its end"
        s = env.dev.last()
        u.sendall(b"still talking")
        u.close_notify()
        lib.wait_until(lambda: s.ended, 10, "the user's END_STREAM at the device")
        assert bytes(s.received) == b"still talking" and s.reset is None
    finally:
        u.close()


@pytest.mark.parametrize("authority,token,status", [
    ("dev1.example:24", OPS, 403),   # the agent refuses (not in its tcp_ports)
    ("dev1.example:25", OPS, 502),   # the device's port is closed
    ("dev1.example:26", OPS, 504),   # no answer within request_timeout_ms
    ("dev2.example:22", OPS, 503),   # offline
])
def test_refusals_from_the_device_side(env, authority, token, status):
    u, got, head, _ = env.connect(authority, token)
    try:
        assert got == status, head
        if status == 503:
            assert b"\r\nretry-after: " in head.lower(), head
        assert cl.read_all(u, timeout=10) is not None  # the connection ends after the answer
    finally:
        u.close()


@pytest.mark.parametrize("authority,token,status", [
    ("dev1.example:22", WEB, 403),   # no ports=22 for this user
    ("dev1.example:22", None, 401),  # no credentials
    ("dev1.example", OPS, 400),      # no port
    ("dev1.example:0", OPS, 400),
    ("[::1]:22", OPS, 400),          # an IP literal names no device
])
def test_refusals_that_never_reach_the_device(env, authority, token, status):
    before = env.dev.requests()
    u, got, head, _ = env.connect(authority, token)
    u.close()
    assert got == status, head
    assert env.dev.requests() == before, "the device got a stream"


def test_reset_by_the_device_closes_the_user_connection(env):
    u, status, head, rest = env.connect("dev1.example:27")
    try:
        assert status == 200, head
        # No orderly end: the connection just closes (the stream was reset).
        cl.read_all(u, rest, timeout=10)
    finally:
        u.close()
    lib.wait_until(lambda: 'rhttp_tunnels_total{result="device_reset"}' in env.admin("/metrics")[1].decode(), 10,
                   "the reset counted")


def test_tunnel_outlives_idle_timeout(env):
    u, status, head, _ = env.connect()
    try:
        assert status == 200, head
        time.sleep(3 * IDLE_TIMEOUT_MS / 1000)  # idle on purpose: three idle timeouts, and two request timeouts
        u.sendall(b"ping")
        got = b""
        for _ in range(100):
            got += u.recv()
            if len(got) >= 4:
                break
        assert got == b"ping"
    finally:
        u.close()


def test_user_reset_resets_the_device_stream(env):
    """A user connection that fails (RST, not FIN) ends the tunnel with
    RST_STREAM(CONNECT_ERROR) to the device (RFC 9113 §8.5)."""
    u, status, head, _ = env.connect()
    assert status == 200, head
    s = env.dev.last()
    u.sendall(b"x")
    lib.wait_until(lambda: len(s.received) == 1, 10, "the byte at the device")
    u.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    u.close()
    lib.wait_until(lambda: s.reset is not None, 10, "RST_STREAM at the device")
    assert s.reset == cl.CONNECT_ERROR and not s.ended
    lib.wait_until(lambda: "result=user_reset" in env.gw.log(), 10, "the tunnel's log line")


# --------------------------------------------------------------------------- HTTP/2 CONNECT (h2c, frames by hand)


def test_h2_connect(env):
    if env.gw.https:
        pytest.skip("h2c on the plain listener covers HTTP/2 CONNECT; TLS is the HTTP/1.1 case")
    s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=10)
    peer = cl.H2Peer(s)
    try:
        peer.send(hl.MAGIC + hl.settings() + hl.window_update(0, 1 << 24))
        peer.send(hl.headers(1, [(":method", "CONNECT"), (":authority", "dev1.example:22"),
                                 ("authorization", "Bearer " + OPS)]))
        status = None
        for _ in range(1000):
            fr = peer.next_frame(10)
            assert fr is not None, "no answer"
            if fr[0] == HEADERS and fr[2] == 1:
                status = dict(peer.headers_of(fr[1], fr[3]))[":status"]
                assert not fr[1] & END_STREAM
                break
        assert status == "200"
        payload = os.urandom(300_000)
        peer.queue(1, payload, end=True)
        got = bytearray()
        ended = False
        deadline = time.monotonic() + 60
        while not ended and time.monotonic() < deadline:
            peer.flush()
            fr = peer.next_frame(0.05)
            if fr is None:
                assert not peer.r.eof, "connection closed"
                continue
            if fr[0] == DATA and fr[2] == 1:
                got += fr[3]
                ended = bool(fr[1] & END_STREAM)
            assert not (fr[0] == RST_STREAM and fr[2] == 1), f"stream reset: {fr}"
        assert ended and bytes(got) == payload
        # A bad authority on another stream: 400, the connection goes on.
        peer.send(hl.headers(3, [(":method", "CONNECT"), (":authority", "dev1.example"),
                                 ("authorization", "Bearer " + OPS)]))
        for _ in range(1000):
            fr = peer.next_frame(10)
            assert fr is not None
            if fr[0] == HEADERS and fr[2] == 3:
                assert dict(peer.headers_of(fr[1], fr[3]))[":status"] == "400"
                break
    finally:
        s.close()


def test_h2_connect_device_ends_first(env):
    if env.gw.https:
        pytest.skip("h2c only")
    s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=10)
    peer = cl.H2Peer(s)
    try:
        peer.send(hl.MAGIC + hl.settings())
        peer.send(hl.headers(1, [(":method", "CONNECT"), (":authority", "dev1.example:23"),
                                 ("authorization", "Bearer " + OPS)]))
        got, ended, status = bytearray(), False, None
        for _ in range(1000):
            fr = peer.next_frame(10)
            assert fr is not None, "no answer"
            if fr[0] == HEADERS and fr[2] == 1:
                status = dict(peer.headers_of(fr[1], fr[3]))[":status"]
            if fr[0] == DATA and fr[2] == 1:
                got += fr[3]
                if fr[1] & END_STREAM:
                    break
        assert status == "200" and bytes(got) == b"bye\n"
        dev = env.dev.last()
        peer.queue(1, b"h2 still talking", end=True)
        peer.flush()
        lib.wait_until(lambda: dev.ended, 10, "the user's END_STREAM at the device")
        assert bytes(dev.received) == b"h2 still talking" and dev.reset is None
    finally:
        s.close()


def test_h2_connect_then_close_does_not_crash_the_gateway(env):
    """Review 19: a CONNECT's access line is written on the loop's next turn, and it
    read the user's address through the HTTP/2 stream, whose connection (unowned) was
    gone by then when the user closed at once: the gateway aborted ("read an unowned
    reference ... already destroyed"). A stranger needs no credentials for it (401)."""
    if env.gw.https:
        pytest.skip("h2c only")
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=10)
        auth = [("authorization", "Bearer " + OPS)] if i % 2 else []
        s.sendall(hl.MAGIC + hl.settings() + hl.headers(1, [(":method", "CONNECT"), (":authority", "dev1.example:22")] + auth))
        s.close()
    # The gateway's own answers show whether it lives: the admin API, then a CONNECT.
    assert env.admin("/devices")[0] == 200 and env.gw.proc.alive()
    u, status, _, _ = env.connect()
    u.close()
    assert status == 200 and env.gw.proc.alive()


def test_h2_connect_end_stream_on_headers_reaches_the_device(env):
    """Review 19: END_STREAM on the CONNECT's HEADERS (the user sends nothing) is a
    half-close like any other: the device's stream ends, the device ends its side,
    the user gets END_STREAM and no reset. It was dropped: the device's port waited
    for a FIN that never came, and the tunnel lasted until the user reset it."""
    if env.gw.https:
        pytest.skip("h2c only")
    s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=10)
    peer = cl.H2Peer(s)
    try:
        peer.send(hl.MAGIC + hl.settings())
        peer.send(hl.headers(1, [(":method", "CONNECT"), (":authority", "dev1.example:22"),
                                 ("authorization", "Bearer " + OPS)], end_stream=True))
        status, ended = None, False
        deadline = time.monotonic() + 15
        while not ended and time.monotonic() < deadline:
            fr = peer.next_frame(0.05)
            if fr is None:
                assert not peer.r.eof, "connection closed"
                continue
            assert not (fr[0] == RST_STREAM and fr[2] == 1), f"stream reset: {fr}"
            if fr[0] == HEADERS and fr[2] == 1:
                status = dict(peer.headers_of(fr[1], fr[3]))[":status"]
                ended = bool(fr[1] & END_STREAM)
            if fr[0] == DATA and fr[2] == 1:
                ended = bool(fr[1] & END_STREAM)
        assert status == "200"
        dev = env.dev.last()
        assert dev.ended and dev.reset is None, "the device saw the user's END_STREAM"
        assert ended, "the device's end came back as END_STREAM"
    finally:
        s.close()


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_lets_an_open_tunnel_finish(procs, pki, tmp_path):
    gw = start(procs, pki, tmp_path, name="gw-connect-drain", extra=["--drain-timeout-ms", "8000"])
    e = Env(gw, pki)
    try:
        u, status, head, _ = e.connect()
        assert status == 200, head
        os.kill(gw.proc.pid, signal.SIGTERM)
        gw.proc.wait_log("stopping", 10)
        assert not lib.port_open(gw.public_port), "still accepting"
        u.sendall(b"after SIGTERM")
        got = b""
        for _ in range(100):
            got += u.recv()
            if len(got) >= 13:
                break
        assert got == b"after SIGTERM", "the tunnel stopped carrying bytes during the drain"
        u.close_notify()
        assert cl.read_all(u, timeout=10) == b""
        u.close()
    finally:
        e.dev.stop()
    lib.wait_until(lambda: not gw.proc.alive(), 15, "the gateway to exit")
