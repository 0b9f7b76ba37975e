"""Defined behaviour at the edges (issue 8): the agent's local API restarted
during a download, the agent's limits full (local_max_connections,
max_concurrent_streams), the gateway out of file descriptors with connections
piling up in its accept queue, and a non-idempotent request never sent twice
to the local API. Documented in README.md ("Faults")."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import time
import uuid

import e2e_lib as lib
import faults_lib
from e2e_lib import request


def test_local_api_restart_during_download_breaks_that_response_then_502_then_200(procs, pki, tmp_path):
    gw = lib.start_gateway(procs, pki)
    api, port = faults_lib.start_local_api_process(procs, "dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=port, connections=1)
    lib.wait_device(gw, "dev1.example")
    with socket.create_connection(("127.0.0.1", gw.public_port), timeout=10) as s:
        s.sendall(b"GET /zeros/200000000 HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
        got = s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200")
        api.kill()  # the local API dies mid-download (SIGKILL: its sockets close)
        t0 = time.monotonic()
        rest, closed = lib.read_until_close(s, 10)
        assert closed, "the user's connection must be closed, not left hanging"
        assert len(got) + len(rest) < 200_000_000, "a broken download must not look complete"
        assert time.monotonic() - t0 < 5
    # While it is down: 502 at once.
    t0 = time.monotonic()
    r = request(gw.public_port, "GET", "/device", "dev1.example", timeout=10)
    assert r.status == 502 and time.monotonic() - t0 < 2, (r.status, r.text)
    # Back on the same port: requests succeed again (kept-alive connections to the old one are gone).
    faults_lib.start_local_api_process(procs, "dev1.example", port=port, name="local-api-again")
    r = request(gw.public_port, "GET", "/device", "dev1.example", timeout=10)
    assert r.status == 200 and r.body == b"dev1.example"


def test_local_connection_limit_full_requests_wait_their_turn(procs, api, pki):
    """local_max_connections = 2 and 8 requests at once: at most 2 reach the local
    API together, the others wait and all succeed."""
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1,
                    extra=["--local-max-connections", "2"])
    lib.wait_device(gw, "dev1.example")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: request(gw.public_port, "GET", "/sleep/200", "dev1.example",
                                                   timeout=20).status, range(8)))
    assert statuses == [200] * 8, statuses
    assert a.max_active == 2, a.max_active


def test_stream_limit_full_requests_queue_then_503_busy(procs, api, pki):
    """max_concurrent_streams = 2 on the agent's one connection: two requests run,
    the others wait queue_timeout_ms at the gateway, then 503 with Retry-After."""
    gw = lib.start_gateway(procs, pki, extra=["--queue-timeout-ms", "500", "--check-interval-ms", "0"])
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1,
                    extra=["--max-concurrent-streams", "2"])
    lib.wait_device(gw, "dev1.example")
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda _: request(gw.public_port, "GET", "/sleep/2500", "dev1.example", timeout=20),
                           range(4)))
    statuses = sorted(r.status for r in rs)
    assert statuses == [200, 200, 503, 503], statuses
    busy = [r for r in rs if r.status == 503]
    assert all(r.header("retry-after") and "busy" in r.text for r in busy), [(r.headers, r.text) for r in busy]
    assert time.monotonic() - t0 < 10


def test_gateway_out_of_descriptors_pauses_accepting_and_serves_the_queue(procs, api, pki):
    """The gateway at its file limit: accept fails (EMFILE); it stops accepting for
    500 ms at a time instead of spinning, the connections wait in the kernel's
    accept queue, and every one is served once descriptors free up."""
    gw = lib.start_gateway(procs, pki, log_level="info")
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    limit = len(os.listdir(f"/proc/{gw.proc.pid}/fd")) + 6
    subprocess.run(["prlimit", "--pid", str(gw.proc.pid), f"--nofile={limit}:{limit}"], check=True, timeout=10)
    n = 40
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=20)
            s.sendall(b"GET /device HTTP/1.1\r\nHost: dev1.example\r\nConnection: close\r\n\r\n")
            socks.append(s)
        gw.proc.wait_log("pausing accepts", timeout=10)
        t0 = time.monotonic()
        answers = []
        for s in socks:  # each answered connection closes and frees a descriptor for the next
            data, closed = lib.read_until_close(s, 20)
            answers.append(data.split(b"\r\n", 1)[0])
        assert answers == [b"HTTP/1.1 200 OK"] * n, answers
        assert time.monotonic() - t0 < 20
    finally:
        for s in socks:
            s.close()
    assert gw.proc.alive()
    assert request(gw.public_port, "GET", "/device", "dev1.example").status == 200


def test_admin_listener_out_of_descriptors_pauses_instead_of_spinning(procs, pki):
    """The admin listener at the file limit pauses accepting as the others do: before,
    accept's EMFILE was taken for "nothing pending" and the level-triggered listener
    woke the loop again at once (a busy loop at 100 % CPU)."""
    gw = lib.start_gateway(procs, pki, log_level="info")
    limit = len(os.listdir(f"/proc/{gw.proc.pid}/fd")) + 2
    subprocess.run(["prlimit", "--pid", str(gw.proc.pid), f"--nofile={limit}:{limit}"], check=True, timeout=10)
    socks = []
    try:
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", gw.admin_port), timeout=20)
            socks.append(s)
        gw.proc.wait_log("admin accept", timeout=10)
        cpu0, t0 = lib.cpu_seconds(gw.proc.pid), time.monotonic()
        time.sleep(1.0)  # measuring CPU over a second of waiting: the point of the test
        busy = (lib.cpu_seconds(gw.proc.pid) - cpu0) / (time.monotonic() - t0)
        assert busy < 0.3, f"the gateway used {busy:.0%} of a CPU while its admin listener was out of descriptors"
    finally:
        for s in socks:
            s.close()
    assert gw.proc.alive()


def test_post_is_not_sent_twice_when_the_local_api_drops_a_kept_alive_connection(procs, api, pki):
    """A local API that takes a POST and closes the connection without answering
    (it crashed, or restarted) may have acted on it: the agent must answer 502,
    not send the POST again on a new connection. A GET is still retried."""
    gw = lib.start_gateway(procs, pki, extra=["--check-interval-ms", "0"])
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1)
    lib.wait_device(gw, "dev1.example")  # leaves a kept-alive connection to the local API in the agent's pool
    rid = uuid.uuid4().hex
    r = request(gw.public_port, "POST", "/vanish", "dev1.example", body=b"pay once", headers={"X-Request-Id": rid})
    assert r.status == 502, (r.status, r.text)
    assert a.request_ids.get(rid) == 1, f"the POST reached the local API {a.request_ids.get(rid)} times"
    assert request(gw.public_port, "GET", "/device", "dev1.example").status == 200  # a kept-alive connection again
    rid = uuid.uuid4().hex
    r = request(gw.public_port, "POST", "/vanish", "dev1.example", headers={"X-Request-Id": rid})  # no body
    assert r.status == 502, (r.status, r.text)
    assert a.request_ids.get(rid) == 1, f"the bodiless POST reached the local API {a.request_ids.get(rid)} times"
