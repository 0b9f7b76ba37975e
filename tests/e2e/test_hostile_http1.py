"""Hostile HTTP/1.1 on the public listener (issue 8, "Hostile input").

Every vector on the real gateway, through to a real agent and API: the right
status, the connection closed where RFC 9112 says so, nothing reaches the device,
and the next user is served. The parser's own unit tests
(Tests/EngineTests/HTTP1ParserTests.swift, HTTP1ChunkedTests.swift) cover the
same vectors split at every byte; here they cross the whole gateway.

The gateway uses --hostname-template '{cn}.devices.test': dev1.example is
reached as dev1.example.devices.test, so a Host under another domain can be tried.
"""

from __future__ import annotations

import socket
import time

import pytest

import e2e_lib as lib
import hostile_lib as hl

DOMAIN = ".devices.test"
H1 = b"dev1.example" + DOMAIN.encode()
RESPONSE_TIMEOUT_MS = 2000
RSS_TOLERANCE_MIB = 16.0
FD_TOLERANCE = 4


class Env:
    def __init__(self, gw, api):
        self.gw = gw
        self.api = api
        self.port = gw.public_port
        self.base_rss = lib.rss_mib(gw.proc.pid)
        self.base_fds = hl.fd_count(gw.proc.pid)

    def ok(self):
        r = lib.request(self.port, "GET", "/device", H1.decode())
        assert r.status == 200 and r.body == b"dev1.example", r


@pytest.fixture(scope="module")
def env(module_procs, module_api, pki):
    gw = lib.start_gateway(module_procs, pki, name="gateway-hostile-h1", log_level="info",
                           extra=["--hostname-template", "{cn}" + DOMAIN, "--check-interval-ms", "0",
                                  "--response-timeout-ms", str(RESPONSE_TIMEOUT_MS), "--max-header-bytes", "8192"])
    a = module_api("dev1.example")
    lib.start_agent(module_procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                    connections=1, log_level="info")
    assert lib.wait_device(gw, H1.decode()).status == 200
    return Env(gw, a)


def refused(env: Env, raw: bytes, status: int) -> bytes:
    """Sends `raw`; the answer is `status` with Connection: close, the connection
    is closed, the device saw nothing, and the next user is served."""
    before = env.api.requests
    data, closed = lib.raw_exchange(env.port, raw, timeout=10)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:300]
    assert closed, f"not closed after {status}: {data[:300]!r}"
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nconnection: close" in head, data[:300]
    assert env.api.requests == before, "a refused request reached the device"
    return data


GET = b"GET /device HTTP/1.1\r\nHost: " + H1 + b"\r\n"
POST = b"POST /upload HTTP/1.1\r\nHost: " + H1 + b"\r\n"

SMUGGLING = {
    # framing
    "cl-and-te": POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "cl-twice-different": POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-list": POST + b"Content-Length: 5, 6\r\n\r\nhello!",
    "cl-plus": POST + b"Content-Length: +5\r\n\r\nhello",
    "cl-negative": POST + b"Content-Length: -1\r\n\r\n",
    "cl-hex": POST + b"Content-Length: 0x5\r\n\r\nhello",
    "cl-overflow": POST + b"Content-Length: 99999999999999999999999\r\n\r\n",
    "cl-space-inside": POST + b"Content-Length: 1 0\r\n\r\nhello",
    "te-chunked-twice": POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-not-last": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-gzip": POST + b"Transfer-Encoding: gzip\r\n\r\n",
    "te-xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n",
    "te-http10": b"POST /upload HTTP/1.0\r\nHost: " + H1 + b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk-size-not-hex": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-negative": POST + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": POST + b"Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
    "chunk-size-0x": POST + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-space": POST + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunk-data-too-long": POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    "chunk-bare-lf": POST + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    # field syntax
    "obs-fold": GET + b"X-A: a\r\n b\r\n\r\n",
    "obs-fold-tab": GET + b"X-A: a\r\n\tb\r\n\r\n",
    "bare-cr-in-value": GET + b"X-A: a\rb\r\n\r\n",
    "bare-lf-line-end": GET + b"X-A: a\n\r\n",
    "bare-lf-request-line": b"GET /device HTTP/1.1\nHost: " + H1 + b"\r\n\r\n",
    "space-before-colon": GET + b"X-A : a\r\n\r\n",
    "space-before-colon-cl": POST + b"Content-Length : 5\r\n\r\nhello",
    "space-before-colon-te": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "invalid-name": GET + b"X@A: a\r\n\r\n",
    "empty-name": GET + b": a\r\n\r\n",
    "no-colon": GET + b"X-A a\r\n\r\n",
    "nul-in-value": GET + b"X-A: a\x00b\r\n\r\n",
    "nul-in-name": GET + b"X\x00A: a\r\n\r\n",
    "nul-in-target": b"GET /dev\x00ice HTTP/1.1\r\nHost: " + H1 + b"\r\n\r\n",
    "ctl-in-value": GET + b"X-A: a\x1bb\r\n\r\n",
    "leading-space-field": b"GET /device HTTP/1.1\r\n Host: " + H1 + b"\r\n\r\n",
    "space-in-target": b"GET /de vice HTTP/1.1\r\nHost: " + H1 + b"\r\n\r\n",
    # Host
    "host-missing": b"GET /device HTTP/1.1\r\nX-A: a\r\n\r\n",
    "host-twice": GET + b"Host: " + H1 + b"\r\n\r\n",
    "host-twice-different": GET + b"Host: dev2.example" + DOMAIN.encode() + b"\r\n\r\n",
    "host-empty": b"GET /device HTTP/1.1\r\nHost: \r\n\r\n",
    "host-userinfo": b"GET /device HTTP/1.1\r\nHost: user@" + H1 + b"\r\n\r\n",
    "host-bad-port": b"GET /device HTTP/1.1\r\nHost: " + H1 + b":80x\r\n\r\n",
    "host-ip-literal": b"GET /device HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    "host-underscore": b"GET /device HTTP/1.1\r\nHost: dev_1.devices.test\r\n\r\n",
    "host-ipv4": b"GET /device HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # no device is named like an address
    "host-list": b"GET /device HTTP/1.1\r\nHost: " + H1 + b", " + H1 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_smuggling_and_syntax_vectors_400_and_close(env, name):
    refused(env, SMUGGLING[name], 400)


@pytest.mark.parametrize("raw,status", [
    (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: " + H1 + b"\r\n\r\n", 431),             # request line
    (GET + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n", 431),               # too many fields
    (GET + b"X-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),                                   # one big field
], ids=["te-gzip-chunked", "request-line-too-long", "too-many-fields", "field-too-long"])
def test_unsupported_or_oversized_requests(env, raw, status):
    refused(env, raw, status)


def test_connect_to_a_port_the_agent_does_not_open(env):
    """Authority-form: a CONNECT to the device's port 443 (issue 14) reaches the agent,
    which refuses a port not in its tcp_ports: 403; the local API sees nothing."""
    before = env.api.requests
    data, closed = lib.raw_exchange(env.port, b"CONNECT " + H1 + b":443 HTTP/1.1\r\nHost: " + H1 + b":443\r\n\r\n", timeout=10)
    assert data.startswith(b"HTTP/1.1 403 "), data[:300]
    assert closed and env.api.requests == before


@pytest.mark.parametrize("host", [b"DEV1.EXAMPLE.DEVICES.TEST", H1 + b":8080", H1 + b".", b"Dev1.Example.Devices.Test.:1"])
def test_host_forms_that_name_the_device(env, host):
    data, _ = lib.raw_exchange(env.port, b"GET /device HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    (status, _, body), = lib.parse_responses(data)
    assert status == 200 and body == b"dev1.example"


@pytest.mark.parametrize("host", [b"dev1.example", b"dev1.example.devices.test.evil.test", b"devices.test",
                                  b"x.dev1.example.devices.test"])
def test_host_under_another_domain_is_not_routed(env, host):
    """A Host that no device certificate maps to (the CN alone, the device's name
    under another domain): 503 naming the host, the device never sees it."""
    before = env.api.requests
    data, _ = lib.raw_exchange(env.port, b"GET /device HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    (status, _, body), = lib.parse_responses(data)
    assert status == 503 and host.rstrip(b".").lower() in body, data
    assert env.api.requests == before


def test_absolute_form_routes_by_its_authority_not_host(env):
    data, _ = lib.raw_exchange(env.port, b"GET http://" + H1 + b"/device HTTP/1.1\r\nHost: other.test\r\n"
                                         b"Connection: close\r\n\r\n")
    (status, _, body), = lib.parse_responses(data)
    assert status == 200 and body == b"dev1.example"


def test_pipelined_requests_stop_at_the_first_malformed_one(env):
    """Three pipelined requests, the second smuggles a body: 400 and the
    connection closes; neither the smuggled request nor the third reaches the
    device. (The first, received in the same read as the malformed one, is not
    served either: the parser stops at the first error, and the user gets the 400.)"""
    before = env.api.requests
    raw = (GET + b"\r\n" + POST + b"Content-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
           + GET + b"\r\n")
    data, closed = lib.raw_exchange(env.port, raw)
    rs = [r[0] for r in lib.parse_responses(data)]
    assert rs in ([200, 400], [400]) and closed, data
    assert env.api.requests == before + rs.count(200)


def test_many_pipelined_requests_are_answered_in_order(env):
    codes = [200, 201, 202, 203, 404, 410, 418, 500, 503, 200] * 2
    raw = b"".join(b"GET /status/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (c, H1) for c in codes)
    raw += b"GET /device HTTP/1.1\r\nHost: " + H1 + b"\r\nConnection: close\r\n\r\n"
    data, closed = lib.raw_exchange(env.port, raw, timeout=20)
    assert [r[0] for r in lib.parse_responses(data)] == codes + [200] and closed


@pytest.mark.parametrize("body", [b"Content-Length: 1000\r\n\r\n" + b"x" * 10,
                                  b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"],
                         ids=["content-length", "chunked"])
def test_request_body_that_never_ends(env, body):
    """The device waits for the rest of the body; the gateway's response timeout
    bounds the wait: 504 and the connection closed (the body was not read to
    its end, so the connection cannot be reused)."""
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", env.port), timeout=10)
    s.sendall(POST + body)
    data, closed = lib.read_until_close(s, RESPONSE_TIMEOUT_MS / 1000 + 8)
    s.close()
    dt = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 504") and closed, data[:200]
    assert dt < RESPONSE_TIMEOUT_MS / 1000 + 2, f"took {dt:.1f}s"
    env.ok()


def test_resources_after_the_hostile_requests(env):
    """Last in this module: a second burst of every vector, then memory and file
    descriptors against the baseline taken before any of them."""
    for _ in range(3):
        for raw in SMUGGLING.values():
            lib.raw_exchange(env.port, raw, timeout=10)
    env.ok()
    fds = hl.wait_fds_at_most(env.gw.proc.pid, env.base_fds + FD_TOLERANCE, 10)
    rss = lib.rss_mib(env.gw.proc.pid)
    print(f"\nhostile HTTP/1.1: gateway RSS {env.base_rss:.1f} -> {rss:.1f} MiB, fds {env.base_fds} -> {fds}")
    assert rss - env.base_rss < RSS_TOLERANCE_MIB
