"""Slow and idle users (issue 8, "Hostile input"): slowloris on the request head
and on the body, idle keep-alive, a user who stops reading a large response.
Bounded time (each refused within its timeout), bounded memory, file
descriptors returned, and an ordinary user served while they last.

Elsewhere: memory of a stalled reader (test_tunnel.py::test_stalled_reader_is_backpressured),
an unfinished head on one connection (test_review_regressions.py::test_idle_user_connection_times_out).
"""

from __future__ import annotations

import selectors
import socket
import time

import pytest

import e2e_lib as lib
import hostile_lib as hl

REQUEST_TIMEOUT_MS = 1000
IDLE_TIMEOUT_MS = 1500
RESPONSE_TIMEOUT_MS = 2000
SLOWLORIS = 40           # connections at once
FD_TOLERANCE = 4
RSS_TOLERANCE_MIB = 16.0


@pytest.fixture(scope="module")
def env(module_procs, module_api, pki):
    gw = lib.start_gateway(module_procs, pki, name="gateway-slow-users", log_level="info",
                           extra=["--check-interval-ms", "0", "--request-timeout-ms", str(REQUEST_TIMEOUT_MS),
                                  "--idle-timeout-ms", str(IDLE_TIMEOUT_MS),
                                  "--response-timeout-ms", str(RESPONSE_TIMEOUT_MS)])
    a = module_api("dev1.example")
    lib.start_agent(module_procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                    connections=1, log_level="info")
    assert lib.wait_device(gw, "dev1.example").status == 200
    return {"gw": gw, "rss": lib.rss_mib(gw.proc.pid), "fds": hl.fd_count(gw.proc.pid)}


def ok(gw):
    t0 = time.monotonic()
    r = lib.request(gw.public_port, "GET", "/device", "dev1.example", timeout=5)
    assert r.status == 200 and r.body == b"dev1.example"
    return time.monotonic() - t0


def drip(gw, payload: bytes, n: int, every: float, limit: float) -> list[tuple[bytes, float]]:
    """n connections each send `payload` one byte every `every` seconds; returns, per
    connection, what the gateway answered and when it closed (seconds from start;
    inf if it had not within `limit`). An ordinary request is made while they drip."""
    sel = selectors.DefaultSelector()
    conns = []
    t0 = time.monotonic()
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=5)
        s.setblocking(False)
        c = {"s": s, "sent": 0, "data": b"", "closed": float("inf")}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    next_drip = t0
    checked = False
    while time.monotonic() - t0 < limit and any(c["closed"] == float("inf") for c in conns):
        now = time.monotonic()
        if now >= next_drip:
            for c in conns:
                if c["closed"] == float("inf") and c["sent"] < len(payload):
                    try:
                        c["s"].send(payload[c["sent"]:c["sent"] + 1])
                        c["sent"] += 1
                    except OSError:
                        pass
            next_drip = now + every
        if not checked and now - t0 > REQUEST_TIMEOUT_MS / 2000:
            assert ok(gw) < 2.0, "an ordinary user waited behind the slow ones"
            checked = True
        for key, _ in sel.select(timeout=0.02):
            c = key.data
            try:
                chunk = c["s"].recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                c["data"] += chunk
            else:
                c["closed"] = time.monotonic() - t0
                sel.unregister(c["s"])
    for c in conns:
        c["s"].close()
    sel.close()
    return [(c["data"], c["closed"]) for c in conns]


def test_slowloris_on_the_request_head(env):
    """Heads sent a byte every 100 ms, never finished in time: every connection
    gets 408 and is closed within request_timeout_ms (+ a second of slack)."""
    gw = env["gw"]
    head = b"GET /device HTTP/1.1\r\nHost: dev1.example\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    results = drip(gw, head, SLOWLORIS, 0.1, REQUEST_TIMEOUT_MS / 1000 + 5)
    worst = max(t for _, t in results)
    assert all(d.startswith(b"HTTP/1.1 408") for d, _ in results), {d[:40] for d, _ in results}
    assert worst < REQUEST_TIMEOUT_MS / 1000 + 1.0, f"last slowloris closed after {worst:.2f}s"
    hl.wait_fds_at_most(gw.proc.pid, env["fds"] + FD_TOLERANCE)


def test_slowloris_on_the_request_body(env):
    """A head in full, then a body a byte every 100 ms: the device waits for the
    body, the gateway's response timeout ends it: 504 and close."""
    gw = env["gw"]
    head = b"POST /upload HTTP/1.1\r\nHost: dev1.example\r\nContent-Length: 1000\r\n\r\n"
    sel_results = []
    socks = []
    t0 = time.monotonic()
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=5)
        s.sendall(head)
        socks.append(s)
    for i in range(int(RESPONSE_TIMEOUT_MS / 100) + 30):  # a byte each every 100 ms, bounded
        for s in socks:
            try:
                s.send(b"b")
            except OSError:
                pass
        time.sleep(0.1)
        if time.monotonic() - t0 > RESPONSE_TIMEOUT_MS / 1000 + 0.5:
            break
    for s in socks:
        data, closed = lib.read_until_close(s, 5)
        sel_results.append((data[:12], closed))
        s.close()
    dt = time.monotonic() - t0
    assert all(d == b"HTTP/1.1 504" and c for d, c in sel_results), sel_results
    assert dt < RESPONSE_TIMEOUT_MS / 1000 + 3, f"{dt:.1f}s"
    ok(gw)
    hl.wait_fds_at_most(gw.proc.pid, env["fds"] + FD_TOLERANCE)


def test_idle_keep_alive_connections_are_closed(env):
    """After a response, a kept-alive connection with no new request is closed
    after idle_timeout_ms, silently (no 408 for a request never begun)."""
    gw = env["gw"]
    socks = []
    for _ in range(SLOWLORIS):
        s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=5)
        s.sendall(b"GET /device HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
        socks.append(s)
    t0 = time.monotonic()
    for s in socks:
        data, closed = lib.read_until_close(s, IDLE_TIMEOUT_MS / 1000 + 3)
        assert closed and data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 200"), data[:100]
        s.close()
    dt = time.monotonic() - t0
    assert IDLE_TIMEOUT_MS / 1000 - 0.3 < dt < IDLE_TIMEOUT_MS / 1000 + 1.5, f"closed after {dt:.2f}s"
    hl.wait_fds_at_most(gw.proc.pid, env["fds"] + FD_TOLERANCE)


def test_user_who_stops_reading_then_leaves_returns_everything(env):
    """Users who stop reading a large download: bounded memory while they wait,
    and once they go, their descriptors and the device's streams are returned
    (the next request on the device is answered at once)."""
    gw = env["gw"]
    base = lib.rss_mib(gw.proc.pid)
    socks = []
    for _ in range(5):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.settimeout(10)
        s.connect(("127.0.0.1", gw.public_port))
        s.sendall(b"GET /zeros/1000000000 HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
        assert s.recv(12) == b"HTTP/1.1 200"
        socks.append(s)
    peak = 0.0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # they never read again
        peak = max(peak, lib.rss_mib(gw.proc.pid) - base)
        time.sleep(0.2)
    assert ok(gw) < 2.0
    for s in socks:
        s.close()
    assert peak < RSS_TOLERANCE_MIB, f"gateway grew by {peak:.1f} MiB with 5 stalled readers"
    hl.wait_fds_at_most(gw.proc.pid, env["fds"] + FD_TOLERANCE)
    ok(gw)


def test_resources_after_the_slow_users(env):
    gw = env["gw"]
    fds = hl.wait_fds_at_most(gw.proc.pid, env["fds"] + FD_TOLERANCE)
    rss = lib.rss_mib(gw.proc.pid)
    print(f"\nslow users: gateway RSS {env['rss']:.1f} -> {rss:.1f} MiB, fds {env['fds']} -> {fds}")
    assert rss - env["rss"] < RSS_TOLERANCE_MIB
