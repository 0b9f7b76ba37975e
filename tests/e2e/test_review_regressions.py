"""Regression tests for faults found in review: each names the behaviour it holds."""

from __future__ import annotations

import http.client
import socket
import time

import e2e_lib as lib
from e2e_lib import request


def _fleet(procs, api, pki, agent_extra=(), gw_extra=()):
    gw = lib.start_gateway(procs, pki, extra=list(gw_extra))
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                            connections=1, extra=list(agent_extra))
    lib.wait_device(gw, "dev1.example")
    return gw, a, agent


def test_early_responses_do_not_leak_streams(procs, api, pki):
    """A device that answers an upload before reading it (413, 401) must not leave the
    stream open: with 2 streams allowed, 6 such uploads in a row and then a GET all work."""
    gw, a, _ = _fleet(procs, api, pki, agent_extra=["--max-concurrent-streams", "2"])
    body = b"x" * (3 << 20)
    for i in range(6):
        c = http.client.HTTPConnection("127.0.0.1", gw.public_port, timeout=15)
        try:
            c.request("POST", "/early/413", body=body, headers={"Host": "dev1.example"})
            r = c.getresponse()
            assert r.status == 413, (i, r.status, r.read())
            r.read()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway may close before the whole upload was sent: that is allowed
        finally:
            c.close()
    lib.wait_until(lambda: request(gw.public_port, "GET", "/device", "dev1.example").status == 200, 10,
                   "the device to take requests again")
    assert request(gw.public_port, "GET", "/device", "dev1.example").status == 200


def test_chunked_upload_on_a_new_local_connection_sends_one_last_chunk(procs, api, pki):
    gw, a, _ = _fleet(procs, api, pki)

    def pieces():
        for _ in range(4):
            yield b"hello" * 1000
    for _ in range(3):
        c = http.client.HTTPConnection("127.0.0.1", gw.public_port, timeout=15)
        c.request("POST", "/upload", body=pieces(), headers={"Host": "dev1.example"}, encode_chunked=True)
        r = c.getresponse()
        assert r.status == 200
        assert r.json() if hasattr(r, "json") else True
        r.read()
        c.close()
        assert request(gw.public_port, "GET", "/device", "dev1.example").status == 200
    time.sleep(0.2)  # let a stray request, if any, reach the local API
    assert a.protocol_errors == 0, "the local API saw a garbled request (a second last-chunk?)"


def test_local_timeout_bounds_the_answer_not_the_download(procs, api, pki):
    gw, a, _ = _fleet(procs, api, pki, agent_extra=["--local-timeout-ms", "500"])
    r = request(gw.public_port, "GET", "/drip/12/100", "dev1.example", timeout=15)
    assert r.status == 200 and r.body == b"x" * 12


def test_pipelined_requests_are_not_buffered_without_limit(procs, api, pki):
    """While one request is in flight, a pipelined one is not read ahead: the gateway
    stops reading the socket, so a pipelined 200 MiB upload cannot fill its memory."""
    gw, a, _ = _fleet(procs, api, pki)
    base = lib.rss_mib(gw.proc.pid)
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    s.sendall(b"GET /sleep/1500 HTTP/1.1\r\nHost: dev1.example\r\n\r\n"
              b"POST /upload HTTP/1.1\r\nHost: dev1.example\r\nContent-Length: 209715200\r\n\r\n")
    s.settimeout(0.2)
    sent = 0
    chunk = b"\0" * (1 << 20)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            sent += s.send(chunk)
        except (socket.timeout, BlockingIOError):
            pass
    grew = lib.rss_mib(gw.proc.pid) - base
    s.close()
    assert sent < 64 << 20, f"the gateway read {sent >> 20} MiB of a pipelined request ahead"
    assert grew < 32, f"gateway memory grew by {grew:.0f} MiB"


def test_half_closed_user_still_gets_the_answer(procs, api, pki):
    gw, a, _ = _fleet(procs, api, pki)
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    s.sendall(b"GET /device HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    data, closed = lib.read_until_close(s, 10)
    s.close()
    (status, _, body), = lib.parse_responses(data)
    assert status == 200 and body == b"dev1.example" and closed


def test_head_error_answers_have_no_body(procs, api, pki):
    gw = lib.start_gateway(procs, pki)
    data, _ = lib.raw_exchange(gw.public_port, b"HEAD / HTTP/1.1\r\nHost: nodevice.example\r\n\r\n"
                                               b"GET / HTTP/1.1\r\nHost: nodevice.example\r\nConnection: close\r\n\r\n")
    # Two responses: the HEAD one without a body, so the GET's status line follows its head.
    assert data.count(b"HTTP/1.1 503") == 2, data


def test_expect_100_continue_is_answered(procs, api, pki):
    gw, a, _ = _fleet(procs, api, pki)
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: dev1.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    s.settimeout(0.5)
    first = s.recv(100)
    assert first.startswith(b"HTTP/1.1 100 Continue"), first
    s.sendall(b"hello")
    s.settimeout(10)
    data = first
    while b"\r\n\r\n" not in data.split(b"HTTP/1.1 100 Continue\r\n\r\n", 1)[-1] or not data.endswith(b"}"):
        more = s.recv(65536)
        if not more:
            break
        data += more
    s.close()
    assert b"HTTP/1.1 200" in data and b'"length": 5' in data, data


def test_idle_user_connection_times_out(procs, api, pki):
    gw = lib.start_gateway(procs, pki, extra=["--request-timeout-ms", "300"])
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: dev1.example\r\n")  # never finished: slowloris
    data, closed = lib.read_until_close(s, 5)
    s.close()
    assert closed and data.startswith(b"HTTP/1.1 408"), data
