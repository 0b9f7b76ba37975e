"""Descriptor exhaustion (issue 12, finding 3): idle users must not take the
descriptors that devices and the admin listener need.

The gateway runs with RLIMIT_NOFILE 256 (soft and hard, so its own raise to the
hard limit changes nothing): its user cap is then 128 (the limit minus a reserve of
128), 64 per address. Idle keep-alive, preface-only h2c and silent connections from
many loopback addresses (127.0.0.2-...) are held open while the device's agent is
restarted: the device re-dials, the admin listener answers, users are served.
"""

from __future__ import annotations

import json
import socket
import stat
import time

import e2e_lib as lib
import hostile_lib as hl

NOFILE = 256
CAP = 128
PER_ADDRESS = 64


def _limited_gateway(tmp_path, monkeypatch, procs, pki, extra=()):
    real = lib.gateway_bin()
    wrapper = tmp_path / "fleet-gateway-nofile"
    wrapper.write_text(f"#!/bin/sh\nulimit -n {NOFILE} && exec '{real}' \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(lib, "gateway_bin", lambda: wrapper)
    gw = lib.start_gateway(procs, pki, name="gateway-nofile", log_level="info",
                           extra=["--check-interval-ms", "0", *extra])
    with open(f"/proc/{gw.proc.pid}/limits") as f:
        assert any(l.startswith("Max open files") and l.split()[3] == str(NOFILE) for l in f), "the limit did not apply"
    return gw


def _admin(gw, path="/devices"):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=2)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    except OSError:  # unreachable: out of descriptors
        return 0, b"null"
    finally:
        c.close()


def _connect(src: str, port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        return s
    except OSError:
        s.close()
        return None


def _flood(gw, addresses: int, per: int) -> list[socket.socket]:
    """addresses x per connections, in three kinds: a request then idle keep-alive,
    the h2c preface and SETTINGS then nothing, and nothing at all."""
    socks = []
    for a in range(addresses):
        for i in range(per):
            s = _connect(f"127.0.0.{2 + a}", gw.public_port)
            if s is None:
                continue
            kind = i % 3
            try:
                if kind == 0:
                    s.sendall(b"GET /device HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
                elif kind == 1:
                    s.sendall(hl.MAGIC + hl.settings())
            except OSError:
                pass
            socks.append(s)
    return socks


def _alive(socks: list[socket.socket]) -> int:
    """How many of `socks` the gateway has not closed (nothing pending to read but a response)."""
    n = 0
    for s in socks:
        try:
            s.setblocking(False)
            data = s.recv(65536, socket.MSG_PEEK)
            n += 1 if data else 0
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def test_idle_flood_leaves_descriptors_for_devices_and_admin(tmp_path, monkeypatch, procs, api, pki):
    # Long timeouts: only the budget, not a timer, may free descriptors during the test.
    gw = _limited_gateway(tmp_path, monkeypatch, procs, pki, extra=["--request-timeout-ms", "60000"])
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1,
                            log_level="info")
    assert lib.wait_device(gw, "dev1.example").status == 200
    socks = _flood(gw, addresses=20, per=20)  # 400 > the 256 descriptors the gateway has
    try:
        assert len(socks) >= 300
        lib.wait_until(lambda: hl.fd_count(gw.proc.pid) > CAP // 2, 10, "the flood to be accepted")
        # The device restarts while the flood is held: it re-dials and is served.
        agent.stop()
        more = _flood(gw, addresses=20, per=5)  # fresh idle connections keep the cap full
        socks += more
        agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                                connections=1, log_level="info", name="dev1.example-again")
        lib.wait_until(lambda: gw.log().count("as dev1.example") >= 2, 15, "the restarted device to re-dial")
        st, body = _admin(gw)
        assert st == 200 and [d["name"] for d in json.loads(body)] == ["dev1.example"], (st, body)
        st, body = _admin(gw, "/metrics")
        assert st == 200
        users = float(next(l.split()[1] for l in body.decode().splitlines() if l.startswith("rhttp_user_connections ")))
        assert users <= CAP, body
        # A user is served too: at the cap, the oldest idle connection makes room.
        assert lib.request(gw.public_port, "GET", "/device", "dev1.example", timeout=10).status == 200
        assert hl.fd_count(gw.proc.pid) < NOFILE - 32
        assert gw.proc.alive()
    finally:
        for s in socks:
            s.close()


def test_one_address_holds_at_most_its_share(tmp_path, monkeypatch, procs, api, pki):
    gw = _limited_gateway(tmp_path, monkeypatch, procs, pki)
    socks = []
    try:
        for _ in range(3 * PER_ADDRESS):
            s = _connect("127.0.0.1", gw.public_port)
            if s is not None:
                socks.append(s)
        # Beyond its share, an address's connections are closed at once (logged once, not per connection).
        lib.wait_until(lambda: _alive(socks) <= PER_ADDRESS, 10, f"at most {PER_ADDRESS} held ({_alive(socks)})")
        assert _alive(socks) >= PER_ADDRESS - 2
        # Another address is still served, and the admin listener answers.
        s = _connect("127.0.0.2", gw.public_port)
        assert s is not None
        s.sendall(b"GET /x HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n")
        data, _ = lib.read_until_close(s, 10)
        s.close()
        assert data.startswith(b"HTTP/1.1 503"), data[:200]
        assert _admin(gw)[0] == 200
        log = gw.log()
        assert log.count("refusing user connections") == 1, log[-2000:]
        assert f"max_user_connections_per_address ({PER_ADDRESS})" in log
    finally:
        for s in socks:
            s.close()


def test_preface_only_h2c_is_closed_like_a_silent_connection(procs, api, pki):
    """A connection that sent the HTTP/2 preface and SETTINGS and then nothing is
    closed after request_timeout_ms, as a silent HTTP/1.1 one, not idle_timeout_ms."""
    gw = lib.start_gateway(procs, pki, name="gateway-h2-idle", log_level="info",
                           extra=["--check-interval-ms", "0", "--request-timeout-ms", "1000", "--idle-timeout-ms", "60000"])
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    try:
        s.sendall(hl.MAGIC + hl.settings())
        r = hl.FrameReader(s)
        start = time.monotonic()
        code, closed = r.goaway_and_close(timeout=10)
        assert closed and time.monotonic() - start < 8, (code, closed)
    finally:
        s.close()


def test_strangers_on_the_device_port_leave_descriptors_for_devices_and_admin(tmp_path, monkeypatch, procs, api, pki):
    """The device listener faces the internet too: connections that never finish
    their TLS handshake may take descriptors until 64 are left; then the one
    handshaking the longest makes room for a newcomer, so a restarted device gets in
    and the admin listener answers while 300 such connections are held."""
    gw = _limited_gateway(tmp_path, monkeypatch, procs, pki, extra=["--handshake-timeout-ms", "60000"])
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1,
                            log_level="info")
    assert lib.wait_device(gw, "dev1.example").status == 200
    socks = []
    try:
        for i in range(300):  # more than the 256 descriptors the gateway has
            s = _connect(f"127.0.0.{2 + i % 20}", gw.device_port)
            if s is not None:
                socks.append(s)
        assert len(socks) >= 250
        lib.wait_until(lambda: "connections in their handshake; closed the oldest" in gw.log(), 10,
                       "the handshake limit to be reached")
        assert hl.fd_count(gw.proc.pid) < NOFILE - 32
        agent.stop()
        agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                                connections=1, log_level="info", name="dev1.example-again")
        lib.wait_until(lambda: gw.log().count("as dev1.example") >= 2, 15, "the restarted device to re-dial")
        st, body = _admin(gw)
        assert st == 200 and [d["name"] for d in json.loads(body)] == ["dev1.example"], (st, body)
        assert lib.request(gw.public_port, "GET", "/device", "dev1.example", timeout=10).status == 200
        assert gw.log().count("connections in their handshake; closed the oldest") == 1  # once per burst
    finally:
        for s in socks:
            s.close()
