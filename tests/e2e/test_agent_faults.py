"""The agent under faults: a frozen gateway, a connection cut mid-download, a
slow or dead local API. Each bound is the agent's own (idle_ping_ms,
local_timeout_ms); every wait here is bounded."""

from __future__ import annotations

import os
import signal
import socket
import time

import e2e_lib as lib
from e2e_lib import request


def test_frozen_gateway_is_noticed_within_the_ping_bound_and_redialed(procs, api, pki):
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                            connections=1, extra=["--idle-ping-ms", "1000"])
    lib.wait_device(gw, "dev1.example")
    os.kill(gw.proc.pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        agent.wait_log("PING", timeout=10)
        noticed = time.monotonic() - frozen_at
        # 2 x interval + a quarter tick, plus scheduling slack on a busy machine.
        assert noticed <= 3.5, f"frozen gateway noticed after {noticed:.1f} s"
        agent.wait_log("dial", timeout=10)  # it dials again (and waits: the gateway is frozen)
    finally:
        os.kill(gw.proc.pid, signal.SIGCONT)
    # Once thawed, the gateway takes the new connection and requests flow again.
    r = lib.wait_device(gw, "dev1.example", timeout=20)
    assert r.status == 200 and r.body == b"dev1.example"


def test_idle_connection_survives_with_pings(procs, api, pki):
    """An idle but healthy tunnel is kept: PINGs are answered, nothing is closed."""
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                            connections=1, extra=["--idle-ping-ms", "300"])
    lib.wait_device(gw, "dev1.example")
    time.sleep(1.5)  # several ping intervals of idleness: the behaviour under test is "nothing happens"
    assert "unresponsive" not in agent.log() and "closed" not in agent.log(), agent.tail()
    assert request(gw.public_port, "GET", "/device", "dev1.example").status == 200


def test_connection_cut_mid_download_fails_that_request_and_the_next_succeeds(procs, api, pki):
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                            connections=1)
    lib.wait_device(gw, "dev1.example")
    with socket.create_connection(("127.0.0.1", gw.public_port), timeout=10) as s:
        s.sendall(b"GET /zeros/200000000 HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
        got = s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200")
        # Cut the tunnel under the download: kill the agent.
        agent.kill()
        total, closed = len(got), False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = s.recv(1 << 20)
            if not chunk:
                closed = True
                break
            total += len(chunk)
        assert closed, "the user's connection must be closed, not left hanging"
        assert total < 200_000_000, "the user must not see a complete response"
    agent2 = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                             connections=1, name="dev1-again")
    r = lib.wait_device(gw, "dev1.example", timeout=20)
    assert r.status == 200 and agent2.alive()


def test_slow_local_api_gives_504_and_the_connection_stays_usable(procs, api, pki):
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                    connections=1, extra=["--local-timeout-ms", "500"])
    lib.wait_device(gw, "dev1.example")
    t0 = time.monotonic()
    r = request(gw.public_port, "GET", "/sleep/3000", "dev1.example", timeout=10)
    assert r.status == 504, (r.status, r.text)
    assert time.monotonic() - t0 < 2.5
    assert request(gw.public_port, "GET", "/device", "dev1.example").status == 200


def test_local_api_down_gives_502_at_once(procs, pki):
    gw = lib.start_gateway(procs, pki)
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=lib.closed_port(),
                    connections=1)
    lib.wait_device(gw, "dev1.example")  # first answer that is not 503: the tunnel is up
    t0 = time.monotonic()
    r = request(gw.public_port, "GET", "/device", "dev1.example", timeout=10)
    assert r.status == 502, (r.status, r.text)
    assert time.monotonic() - t0 < 1.0


def test_local_api_name_that_does_not_resolve_gives_502_and_a_log_line(procs, pki):
    """The local API's name is looked up off the event loop: a name that does not
    resolve is a 502 saying so, logged with the stream, and the tunnel stays up."""
    gw = lib.start_gateway(procs, pki)
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=lib.closed_port(),
                            connections=1, extra=["--local", "nosuch.invalid:8080"])
    lib.wait_device(gw, "dev1.example")
    for _ in range(2):  # a failed lookup is not kept: the second request looks up again
        t0 = time.monotonic()
        r = request(gw.public_port, "GET", "/device", "dev1.example", timeout=15)
        assert r.status == 502 and b"resolve nosuch.invalid" in r.body, (r.status, r.text)
        assert time.monotonic() - t0 < 12  # at most the lookup's own bound (10 s)
    line = agent.wait_log("local API unreachable: resolve nosuch.invalid", timeout=5)
    assert "stream=" in line, line


def test_gateway_sigterm_sends_goaway_drains_and_the_agent_redials(procs, api, pki):
    """Gateway graceful stop: GOAWAY on every reversed connection, the request in
    flight completes, the gateway exits 0; the agent takes the GOAWAY as "dial a
    replacement now" and, the gateway being gone, backs off."""
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                            connections=1)
    lib.wait_device(gw, "dev1.example")
    import threading
    res = {}
    th = threading.Thread(target=lambda: res.setdefault(
        "r", request(gw.public_port, "GET", "/sleep/500", "dev1.example", timeout=10)))
    before = a.requests
    th.start()
    lib.wait_until(lambda: a.requests > before, 10, "the request to reach the device", interval=0.005)
    gw.proc.popen.send_signal(signal.SIGTERM)
    th.join(10)
    assert res["r"].status == 200, res["r"]
    assert gw.proc.popen.wait(timeout=10) == 0
    agent.wait_log("gateway sent GOAWAY", timeout=10)
    agent.wait_log("failed", timeout=10)  # the replacement dial finds no gateway
    assert agent.alive()


def test_trailers_cross_the_tunnel(procs, api, pki):
    """A chunked response's trailer fields reach the user (HTTP/1.1 -> HTTP/2
    trailers HEADERS at the agent -> HTTP/1.1 last chunk at the gateway)."""
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    data, _ = lib.raw_exchange(gw.public_port, b"GET /trailers HTTP/1.1\r\nHost: dev1.example\r\n"
                                               b"TE: trailers\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    assert body.startswith(b"5\r\nhello\r\n0\r\n"), body
    assert b"x-checksum: sha256-abc" in body.lower(), body


def test_gateway_by_name_is_resolved_on_each_dial(procs, api, pki):
    """--gateway with a name (resolved off the event loop on every dial)."""
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    agent = procs.start("agent-by-name", [lib.agent_bin(), "--gateway", f"localhost:{gw.device_port}",
                                          "--server-name", "gw.example", "--ca", pki.ca,
                                          "--cert", pki.device_cert("dev1.example"),
                                          "--key", pki.device_key("dev1.example"),
                                          "--local", f"127.0.0.1:{a.port}", "--connections", "1"])
    r = lib.wait_device(gw, "dev1.example")
    assert r.status == 200 and agent.alive()
