"""End-to-end tests of fleet-gateway + device-agent on loopback.

Users speak HTTP/1.1 to the gateway's public port; the gateway routes by Host to
a device's reversed HTTP/2 connection; the agent forwards to the device's local
HTTP API (a Python server in this process, see e2e_lib.LocalAPI).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import pytest

import e2e_lib as lib
from e2e_lib import request

MAX_HEADER_BYTES = 4096


# --------------------------------------------------------------------------- fixtures


@dataclass
class Fleet:
    gw: lib.Gateway
    apis: dict  # device -> LocalAPI
    agents: dict  # device -> Proc

    @property
    def port(self) -> int:
        return self.gw.public_port


@pytest.fixture(scope="module")
def fleet(module_procs, module_api, pki) -> Fleet:
    """One gateway (mTLS devices, plain HTTP users, --max-header-bytes 4096) with
    dev1.example and dev2.example attached, each through its own agent to its own API."""
    gw = lib.start_gateway(module_procs, pki, extra=["--max-header-bytes", str(MAX_HEADER_BYTES)])
    apis, agents = {}, {}
    for dev in ("dev1.example", "dev2.example"):
        apis[dev] = module_api(dev)
        agents[dev] = lib.start_agent(module_procs, gw.device_port, pki=pki, device=dev, local_port=apis[dev].port)
    for dev in apis:
        r = lib.wait_device(gw, dev)
        assert r.status == 200 and r.body == dev.encode(), r
    return Fleet(gw, apis, agents)


@pytest.fixture(scope="module")
def slow_fleet(module_procs, module_api, pki) -> Fleet:
    """A gateway with --response-timeout-ms 1000; dev1 has a working API, dev2's
    agent points at a port where nothing listens."""
    gw = lib.start_gateway(module_procs, pki, extra=["--response-timeout-ms", "1000"], name="gateway-slow")
    a1 = module_api("dev1.example")
    agents = {
        "dev1.example": lib.start_agent(module_procs, gw.device_port, pki=pki, device="dev1.example",
                                        local_port=a1.port, name="dev1-slowgw"),
        "dev2.example": lib.start_agent(module_procs, gw.device_port, pki=pki, device="dev2.example",
                                        local_port=lib.closed_port(), name="dev2-noapi"),
    }
    assert lib.wait_device(gw, "dev1.example").status == 200
    lib.wait_device(gw, "dev2.example")  # anything but 503: the tunnel is up
    return Fleet(gw, {"dev1.example": a1}, agents)


# --------------------------------------------------------------------------- attach / route


def test_503_before_device_attaches_then_200(procs, api, pki):
    gw = lib.start_gateway(procs, pki, extra=["--grace-ms", "500"])
    r = request(gw.public_port, "GET", "/device", "dev1.example")
    assert r.status == 503
    assert "dev1.example" in r.text, r.text

    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port)
    agent.wait_log("connected to")
    r = lib.wait_device(gw, "dev1.example")
    assert r.status == 200
    assert r.body == b"dev1.example"
    assert r.header("X-Device") == "dev1.example"
    # Gateway saw the device by its certificate CN.
    gw.proc.wait_log("device connected from", timeout=5)

    # Another host is still unknown.
    r = request(gw.public_port, "GET", "/device", "dev2.example")
    assert r.status == 503 and "dev2.example" in r.text

    # Device leaves (SIGTERM: GOAWAY on every connection) -> 503 again, once the
    # grace period for a re-dial is over.
    agent.stop()
    lib.wait_until(lambda: request(gw.public_port, "GET", "/device", "dev1.example", timeout=5).status == 503,
                   10, "503 after the agent stopped")


@pytest.mark.parametrize("host,device", [
    ("DEV1.EXAMPLE", "dev1.example"),
    ("dev1.example:8080", "dev1.example"),
    ("dev1.example.", "dev1.example"),
    ("Dev2.Example.:1", "dev2.example"),
])
def test_host_normalisation(fleet, host, device):
    r = request(fleet.port, "GET", "/device", host)
    assert r.status == 200, r
    assert r.body == device.encode()


def test_unknown_host_is_503_naming_host(fleet):
    r = request(fleet.port, "GET", "/device", "nobody.example")
    assert r.status == 503
    assert "nobody.example" in r.text


def test_absolute_form_target_routes_by_its_authority(fleet):
    data, _ = lib.raw_exchange(fleet.port, b"GET http://dev2.example/device HTTP/1.1\r\n"
                                           b"Host: dev2.example\r\nConnection: close\r\n\r\n")
    (status, hdrs, body), = lib.parse_responses(data)
    assert status == 200 and body == b"dev2.example"


def test_two_devices_200_concurrent_requests_never_mixed(fleet):
    devices = ["dev1.example", "dev2.example"]

    def one(i):
        dev = devices[(i * 7 + i // 3) % 2]
        if i % 2:
            r = request(fleet.port, "GET", f"/echo?n={i}", dev, timeout=30)
            doc = r.json() if r.status == 200 else {}
            return i, dev, r.status, r.header("X-Device"), doc.get("device"), doc.get("path")
        r = request(fleet.port, "GET", f"/device?n={i}", dev, timeout=30)
        return i, dev, r.status, r.header("X-Device"), r.body.decode(errors="replace"), f"/device?n={i}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as ex:
        results = list(ex.map(one, range(200)))
    bad = [r for r in results
           if not (r[2] == 200 and r[3] == r[1] and r[4] == r[1] and r[5].endswith(f"n={r[0]}"))]
    assert not bad, f"{len(bad)} of 200 wrong, e.g. {bad[:5]}"
    per_dev = {d: sum(1 for r in results if r[1] == d) for d in devices}
    assert all(n > 50 for n in per_dev.values()), per_dev


# --------------------------------------------------------------------------- bodies


def test_upload_10mib_content_length(fleet):
    data = lib.det_bytes(10 * 1024 * 1024)
    r = request(fleet.port, "POST", "/upload", "dev1.example", body=data,
                headers={"Content-Type": "application/octet-stream"}, timeout=lib.BIG_TIMEOUT)
    assert r.status == 200, r
    doc = r.json()
    assert doc["length"] == len(data)
    assert doc["sha256"] == lib.sha256(data)
    assert doc["device"] == "dev1.example"


def test_upload_chunked_3mib(fleet):
    data = lib.det_bytes(3 * 1024 * 1024 + 12345)

    def pieces():
        off, k = 0, 0
        sizes = [1, 100, 8192, 65536, 300_000]
        while off < len(data):
            n = sizes[k % len(sizes)]
            k += 1
            yield data[off:off + n]
            off += n

    r = request(fleet.port, "POST", "/upload", "dev2.example", body=pieces(), encode_chunked=True,
                timeout=lib.BIG_TIMEOUT)
    assert r.status == 200, r
    doc = r.json()
    assert doc["length"] == len(data)
    assert doc["sha256"] == lib.sha256(data)
    assert doc["device"] == "dev2.example"


def test_download_10mib(fleet):
    n = 10 * 1024 * 1024
    r = request(fleet.port, "GET", f"/bytes/{n}", "dev1.example", timeout=lib.BIG_TIMEOUT)
    assert r.status == 200
    assert len(r.body) == n
    assert lib.sha256(r.body) == lib.sha256(lib.det_bytes(n))
    assert r.header("Content-Length") == str(n)


def test_download_chunked_5mb(fleet):
    n = 5_000_000
    r = request(fleet.port, "GET", f"/chunked/{n}", "dev2.example", timeout=lib.BIG_TIMEOUT)
    assert r.status == 200
    assert len(r.body) == n
    assert lib.sha256(r.body) == lib.sha256(lib.det_bytes(n))


def test_post_body_echo(fleet):
    body = b"hello tunnel " * 1000
    r = request(fleet.port, "PUT", "/echo?x=1", "dev1.example", body=body,
                headers={"Content-Type": "text/plain", "X-Custom": "a b c"})
    assert r.status == 200
    doc = r.json()
    assert doc["method"] == "PUT"
    assert doc["path"] == "/echo?x=1"
    assert doc["body_len"] == len(body)
    assert doc["body_sha256"] == lib.sha256(body)
    assert doc["headers"]["x-custom"] == "a b c"
    assert doc["headers"]["content-type"] == "text/plain"
    assert doc["headers"]["host"] == "dev1.example"


def test_status_codes_and_head(fleet):
    r = request(fleet.port, "GET", "/status/404", "dev1.example")
    assert r.status == 404 and r.body == b"status 404\n"
    r = request(fleet.port, "GET", "/status/500", "dev2.example")
    assert r.status == 500 and r.header("X-Device") == "dev2.example"
    r = request(fleet.port, "GET", "/status/204", "dev1.example")
    assert r.status == 204 and r.body == b""
    r = request(fleet.port, "HEAD", "/bytes/1000", "dev1.example")
    assert r.status == 200 and r.body == b""
    assert r.header("Content-Length") == "1000"


# --------------------------------------------------------------------------- headers


def test_forwarded_headers_added(fleet):
    r = request(fleet.port, "GET", "/echo", "dev1.example")
    h = r.json()["headers"]
    assert h.get("x-forwarded-for") == "127.0.0.1", h
    assert h.get("x-forwarded-proto") == "http", h
    fwd = h.get("forwarded", "")
    assert "for=127.0.0.1" in fwd and "proto=http" in fwd and 'host="dev1.example"' in fwd, fwd


def test_forwarded_headers_are_set_by_the_gateway_not_the_client(fleet):
    """The gateway is the edge: a user's own X-Forwarded-For / -Proto / Forwarded
    could only be lies, so they are replaced by what the gateway saw."""
    r = request(fleet.port, "GET", "/echo", "dev1.example",
                headers={"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https",
                         "Forwarded": "for=6.6.6.6;proto=https"})
    h = r.json()["headers"]
    assert h.get("x-forwarded-for") == "127.0.0.1", h
    assert h.get("x-forwarded-proto") == "http", h  # the gateway's own scheme, not the client's claim
    assert "6.6.6.6" not in h.get("forwarded", ""), h


def test_hop_by_hop_request_headers_not_forwarded(fleet):
    r = request(fleet.port, "GET", "/echo", "dev1.example", headers={
        "Connection": "keep-alive, X-Foo",
        "X-Foo": "bar",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Connection": "keep-alive",
        "X-End-To-End": "yes",
    })
    assert r.status == 200
    h = r.json()["headers"]
    for name in ("connection", "x-foo", "keep-alive", "te", "proxy-connection", "transfer-encoding"):
        assert name not in h, f"hop-by-hop {name!r} reached the device: {h}"
    assert h.get("x-end-to-end") == "yes"


def test_upgrade_header_not_forwarded(fleet):
    # No upgrade is supported through the tunnel: the request is served as a plain
    # request and Upgrade (hop-by-hop) does not reach the device.
    r = request(fleet.port, "GET", "/echo", "dev1.example", headers={"Connection": "Upgrade", "Upgrade": "foo/2"})
    assert r.status == 200, r
    h = r.json()["headers"]
    assert "upgrade" not in h and "connection" not in h, h


def test_hop_by_hop_response_headers_not_forwarded(fleet):
    r = request(fleet.port, "GET", "/hop-response", "dev1.example")
    assert r.status == 200
    names = r.header_names()
    for name in ("x-resp-hop", "keep-alive", "proxy-connection"):
        assert name not in names, f"hop-by-hop response header {name!r} reached the user: {r.headers}"
    assert r.header("X-End-To-End") == "kept"


# The Embedded agent has no Unicode tables (EmbeddedRuntime/UnicodeDataShim.swift): whatever
# its Strings carry must still be the bytes that came, canonically equivalent or not.
NON_ASCII_VALUES = [
    ("X-Reflect-Precomposed", "caf\u00e9"),       # U+00E9
    ("X-Reflect-Decomposed", "cafe\u0301"),       # e U+0301: canonically equivalent, other bytes
    ("X-Reflect-Hangul", "\ud55c \u1112\u1161\u11ab"),  # a syllable and its jamo
    ("X-Reflect-Emoji", "\U0001f44d\U0001f3fd \U0001f1e9\U0001f1ea"),
]


def test_non_ascii_field_values_pass_through_byte_exact(fleet):
    head = b"GET /reflect HTTP/1.1\r\nHost: dev1.example\r\n"
    for name, value in NON_ASCII_VALUES:
        head += name.encode() + b": " + value.encode() + b"\r\n"
    data, _ = lib.raw_exchange(fleet.port, head + b"Connection: close\r\n\r\n")
    status, headers, body = lib.parse_responses(data)[0][:3]
    assert status == 200, data[:300]
    # Request direction: what the device's API received.
    seen = {n.lower(): bytes.fromhex(v) for n, v in json.loads(body)}
    # Response direction: what the user received back.
    back = {n: v.encode("latin-1") for n, v in headers.items()}
    for name, value in NON_ASCII_VALUES:
        assert seen.get(name.lower()) == value.encode(), (name, seen)
        assert back.get(name.lower()) == value.encode(), (name, headers)


# --------------------------------------------------------------------------- connections


def test_keepalive_several_requests_one_connection(fleet):
    c = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=lib.HTTP_TIMEOUT)
    try:
        c.connect()
        local = c.sock.getsockname()
        seen = []
        for i in range(6):
            dev = ("dev1.example", "dev2.example")[i % 2]
            if i == 2:
                r = request(0, "POST", "/upload", dev, body=lib.det_bytes(100_000), conn=c)
                assert r.json()["sha256"] == lib.sha256(lib.det_bytes(100_000))
            elif i == 3:
                r = request(0, "GET", "/chunked/70000", dev, conn=c)
                assert r.body == lib.det_bytes(70000)
            else:
                r = request(0, "GET", "/device", dev, conn=c)
                assert r.body == dev.encode()
            assert r.status == 200
            assert (r.header("Connection") or "").lower() != "close"
            seen.append(c.sock.getsockname() if c.sock else None)
        assert all(s == local for s in seen), f"connection changed: {local} -> {seen}"
    finally:
        c.close()


def test_pipelined_requests_answered_in_order(fleet):
    reqs = b"".join(
        b"GET /device?p=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, dev)
        for i, dev in enumerate([b"dev1.example", b"dev2.example", b"dev1.example"]))
    reqs += b"GET /device HTTP/1.1\r\nHost: dev2.example\r\nConnection: close\r\n\r\n"
    data, closed = lib.raw_exchange(fleet.port, reqs)
    assert closed
    got = [(s, b) for s, _, b in lib.parse_responses(data)]
    assert got == [(200, b"dev1.example"), (200, b"dev2.example"), (200, b"dev1.example"), (200, b"dev2.example")]


def test_http10_request(fleet):
    data, closed = lib.raw_exchange(fleet.port, b"GET /device HTTP/1.0\r\nHost: dev1.example\r\n\r\n")
    assert closed
    assert data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200"), data[:200]
    assert data.endswith(b"dev1.example")


# --------------------------------------------------------------------------- malformed requests


def _assert_error_and_close(port: int, raw: bytes, status: int):
    data, closed = lib.raw_exchange(port, raw)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:300]
    assert closed, f"connection not closed after {status}: {data[:300]!r}"
    return data


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /device\r\nHost: dev1.example\r\n\r\n",
    b"GET /device HTTP/9.9\r\nHost: dev1.example\r\n\r\n",
    b"GET  /device HTTP/1.1\r\nHost: dev1.example\r\n\r\n",
], ids=["garbage", "no-version", "bad-version", "double-space"])
def test_bad_request_line_400_and_close(fleet, raw):
    _assert_error_and_close(fleet.port, raw, 400)


def test_content_length_and_transfer_encoding_400(fleet):
    raw = (b"POST /upload HTTP/1.1\r\nHost: dev1.example\r\nContent-Length: 5\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    _assert_error_and_close(fleet.port, raw, 400)


def test_missing_host_http11_400(fleet):
    _assert_error_and_close(fleet.port, b"GET /device HTTP/1.1\r\nUser-Agent: x\r\n\r\n", 400)


def test_header_block_over_limit_431(fleet):
    big = b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 100) + b"\r\n"
    raw = b"GET /device HTTP/1.1\r\nHost: dev1.example\r\n" + big + b"\r\n"
    _assert_error_and_close(fleet.port, raw, 431)
    # Many small fields adding up over the limit, too.
    many = b"".join(b"X-F%d: %s\r\n" % (i, b"b" * 60) for i in range(MAX_HEADER_BYTES // 60 + 10))
    _assert_error_and_close(fleet.port, b"GET /device HTTP/1.1\r\nHost: dev1.example\r\n" + many + b"\r\n", 431)


def test_header_block_under_limit_ok(fleet):
    r = request(fleet.port, "GET", "/echo", "dev1.example", headers={"X-Big": "a" * (MAX_HEADER_BYTES - 600)})
    assert r.status == 200
    assert r.json()["headers"]["x-big"] == "a" * (MAX_HEADER_BYTES - 600)


def test_malformed_requests_never_reach_device(fleet):
    api = fleet.apis["dev1.example"]
    before = api.requests
    for raw in (b"POST /device HTTP/1.1\r\nHost: dev1.example\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"GET /device HTTP/1.1\r\nHost: dev1.example\r\nHost: dev2.example\r\n\r\n",
                b"GET /device HTTP/1.1\r\nHost: dev1.example\r\nContent-Length: 1, 2\r\n\r\n"):
        data, closed = lib.raw_exchange(fleet.port, raw)
        assert data.startswith(b"HTTP/1.1 400 "), data[:200]
        assert closed
    assert api.requests == before
    # and the gateway still serves
    assert request(fleet.port, "GET", "/device", "dev1.example").status == 200


# --------------------------------------------------------------------------- device-side errors


def test_502_when_local_api_sends_garbage(slow_fleet):
    r = request(slow_fleet.port, "GET", "/garbage", "dev1.example")
    assert r.status == 502, r
    # The tunnel survives: next request works.
    assert request(slow_fleet.port, "GET", "/device", "dev1.example").status == 200


def test_502_when_local_api_is_down(slow_fleet):
    r = request(slow_fleet.port, "GET", "/device", "dev2.example")
    assert r.status == 502, r


def test_504_when_device_does_not_answer_in_time(slow_fleet):
    t0 = time.monotonic()
    r = request(slow_fleet.port, "GET", "/sleep/3000", "dev1.example", timeout=10)
    dt = time.monotonic() - t0
    assert r.status == 504, r
    assert 0.8 <= dt < 2.8, f"504 after {dt:.2f}s (timeout 1000 ms)"
    assert request(slow_fleet.port, "GET", "/device", "dev1.example").status == 200


# --------------------------------------------------------------------------- TLS identity


def test_device_cert_from_foreign_ca_is_refused(procs, api, pki):
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                            cert=pki.foreign_device_cert("dev1.example"), key=pki.foreign_device_key("dev1.example"))
    gw_line = gw.proc.wait_log(r"device connection from .* failed: TLS", regex=True, timeout=10)
    ag_line = agent.wait_log(r"failed: TLS", regex=True, timeout=10)
    # TLS 1.3: the client's side of the handshake is done before the gateway checks its
    # certificate, so the agent sees the gateway's alert on its first read.
    assert "unknown ca" in ag_line or "certificate" in ag_line, ag_line
    # Give the agent a few more dials (backoff starts at <= 0.5 s), then check it never got in.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        r = request(gw.public_port, "GET", "/device", "dev1.example", timeout=5)
        assert r.status == 503, f"foreign-CA device got through: {r}"
        time.sleep(0.2)
    assert "connected to" not in agent.log(), agent.log()
    assert "device connected" not in gw.log(), gw.log()
    assert agent.alive()
    print("gateway:", gw_line)
    print("agent:", ag_line)


def test_agent_refuses_gateway_cert_with_wrong_name(procs, api, pki):
    gw = lib.start_gateway(procs, pki, cert=pki.wrong_name_cert, key=pki.wrong_name_key)
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                            server_name="gw.example", name="dev1-strict")
    line = agent.wait_log(r"failed: TLS handshake failed", regex=True, timeout=10)
    assert "mismatch" in line or "verify" in line.lower(), line
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert request(gw.public_port, "GET", "/device", "dev1.example", timeout=5).status == 503
        time.sleep(0.2)
    assert "connected to" not in agent.log()
    # Control: the same gateway is reachable when the agent expects its real name.
    ok = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                         server_name="other.example", name="dev1-other")
    ok.wait_log("connected to", timeout=10)
    assert lib.wait_device(gw, "dev1.example").status == 200
    assert "connected to" not in agent.log()


def test_agent_server_name_defaults_to_gateway_ip_san(procs, api, pki):
    gw = lib.start_gateway(procs, pki)
    a = api("dev2.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev2.example", local_port=a.port,
                            server_name=None)
    agent.wait_log("connected to", timeout=10)
    assert lib.wait_device(gw, "dev2.example").body == b"dev2.example"


# --------------------------------------------------------------------------- modes


def test_plaintext_mode(procs, api):
    gw = lib.start_gateway(procs, None, plaintext_name="plain.example")
    a = api("plain.example")
    agent = lib.start_agent(procs, gw.device_port, plaintext=True, device="plain.example", local_port=a.port)
    agent.wait_log("connected to", timeout=10)
    r = lib.wait_device(gw, "plain.example")
    assert r.status == 200 and r.body == b"plain.example"
    r = request(gw.public_port, "POST", "/upload", "plain.example", body=lib.det_bytes(500_000))
    assert r.json()["sha256"] == lib.sha256(lib.det_bytes(500_000))
    assert "INSECURE" in agent.log()
    assert "INSECURE" in gw.log()


def test_hostname_template(procs, api, pki):
    gw = lib.start_gateway(procs, pki, extra=["--hostname-template", "{cn}.devices.test"])
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port)
    r = lib.wait_device(gw, "dev1.example.devices.test")
    assert r.status == 200 and r.body == b"dev1.example"
    r = request(gw.public_port, "GET", "/device", "DEV1.example.Devices.Test:80")
    assert r.status == 200 and r.body == b"dev1.example"
    # The bare CN is not a public hostname under this template.
    assert request(gw.public_port, "GET", "/device", "dev1.example").status == 503


def test_public_tls_listener(procs, api, pki):
    gw = lib.start_gateway(procs, pki, public_tls=True)
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    # Through the IP SAN (server_hostname 127.0.0.1).
    r = lib.wait_device(gw, "dev1.example", ssl_ctx=ctx)
    assert r.status == 200 and r.body == b"dev1.example"
    c = http.client.HTTPSConnection("127.0.0.1", gw.public_port, timeout=lib.HTTP_TIMEOUT, context=ctx)
    try:
        r = request(0, "GET", "/echo", "dev1.example", conn=c)
        h = r.json()["headers"]
        assert h["x-forwarded-proto"] == "https"
        assert "proto=https" in h["forwarded"]
        r = request(0, "GET", "/bytes/300000", "dev1.example", conn=c)
        assert r.body == lib.det_bytes(300000)
    finally:
        c.close()
    # Through the DNS name gw.example (SNI + hostname check), offering only HTTP/1.1
    # by ALPN (HTTP/2 users are tested in test_public_http2.py).
    ctx2 = ssl.create_default_context(cafile=str(pki.ca))
    ctx2.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", gw.public_port), timeout=10) as raw:
        with ctx2.wrap_socket(raw, server_hostname="gw.example") as s:
            assert s.selected_alpn_protocol() in (None, "http/1.1")
            s.sendall(b"GET /device HTTP/1.1\r\nHost: dev1.example\r\nConnection: close\r\n\r\n")
            data, _ = lib.read_until_close(s, 10)
    (status, _, body), = lib.parse_responses(data)
    assert status == 200 and body == b"dev1.example"
    # A client that does not trust the fleet CA fails.
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", gw.public_port), timeout=10) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname="gw.example")


# --------------------------------------------------------------------------- device-side framing & failures


@pytest.mark.parametrize("path", ["/truncated-cl?hold=0", "/truncated-cl?hold=300",
                                  "/truncated-chunked?hold=0", "/truncated-chunked?hold=300"])
def test_truncated_device_response_never_looks_complete(fleet, path):
    """The local API dies halfway through its body: the user gets a 502 (if nothing
    was sent yet) or a broken response -- never a short body presented as complete."""
    try:
        r = request(fleet.port, "GET", path, "dev1.example", timeout=10)
    except (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError):
        return  # broken response: right
    assert r.status == 502, f"truncated response delivered as complete: {r.status}, {len(r.body)} bytes"
    assert request(fleet.port, "GET", "/device", "dev1.example").status == 200


def test_http10_until_close_response_from_device(fleet):
    r = request(fleet.port, "GET", "/http10-until-close", "dev2.example")
    assert r.status == 200
    assert r.body == lib.det_bytes(123457)
    assert r.header("X-Device") == "dev2.example"


def test_ambiguous_device_response_framing_is_502(fleet):
    r = request(fleet.port, "GET", "/cl-and-te-response", "dev1.example")
    assert r.status == 502, r


def test_interim_103_then_final_response(fleet):
    r = request(fleet.port, "GET", "/early-hints", "dev1.example")
    assert r.status == 200 and r.body == b"after hints\n"


def test_cookies_and_repeated_fields(fleet):
    data, _ = lib.raw_exchange(fleet.port, b"GET /cookies HTTP/1.1\r\nHost: dev1.example\r\nCookie: x=1\r\n"
                                           b"Cookie: y=2\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = [l.lower() for l in head.split(b"\r\n")[1:]]
    assert b"set-cookie: a=1; path=/" in lines and b"set-cookie: b=2; path=/" in lines, head
    assert lines.index(b"x-multi: one") < lines.index(b"x-multi: two"), head
    # Both cookies reach the device (HTTP/2 may split them; the agent joins with "; ").
    got = json.loads(lib.parse_responses(data)[0][2])["cookie"]
    assert "; ".join(got) == "x=1; y=2", got


def test_expect_100_continue_request(fleet):
    body = lib.det_bytes(200_000)
    with socket.create_connection(("127.0.0.1", fleet.port), timeout=10) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: dev1.example\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        s.settimeout(0.5)
        early = b""
        try:
            early = s.recv(4096)  # a 100 Continue is allowed, not required
        except socket.timeout:
            pass
        assert early == b"" or early.startswith(b"HTTP/1.1 100"), early[:200]
        s.sendall(body)
        data, _ = lib.read_until_close(s, 10)
    data = early + data
    if data.startswith(b"HTTP/1.1 100"):
        data = data[data.index(b"\r\n\r\n") + 4:]
    (status, _, rbody), = lib.parse_responses(data)
    assert status == 200
    assert json.loads(rbody)["sha256"] == lib.sha256(body)


def test_concurrent_uploads_and_downloads(fleet):
    def up(i):
        b = lib.det_bytes(512 * 1024 + i)
        dev = ("dev1.example", "dev2.example")[i % 2]
        r = request(fleet.port, "POST", "/upload", dev, body=b, timeout=lib.BIG_TIMEOUT)
        return r.status == 200 and r.json()["sha256"] == lib.sha256(b) and r.json()["device"] == dev

    def down(i):
        n = 1024 * 1024 + i
        dev = ("dev1.example", "dev2.example")[i % 2]
        r = request(fleet.port, "GET", f"/bytes/{n}", dev, timeout=lib.BIG_TIMEOUT)
        return r.status == 200 and r.body == lib.det_bytes(n)

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as ex:
        ups = [ex.submit(up, i) for i in range(12)]
        downs = [ex.submit(down, i) for i in range(12)]
        ok = [f.result() for f in ups + downs]
    assert all(ok), ok


def test_user_abort_mid_download_leaves_tunnel_healthy(fleet):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", fleet.port), timeout=10) as s:
            s.sendall(b"GET /bytes/10485760 HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
            assert s.recv(1000).startswith(b"HTTP/1.1 200")
    for dev in ("dev1.example", "dev2.example"):
        assert request(fleet.port, "GET", "/device", dev).body == dev.encode()


def test_agent_killed_mid_request_gives_502_then_503(procs, api, pki):
    """A request that cannot be repeated (it has a body) gets 502 at once when its
    device dies under it; afterwards the host gets 503 once the grace period ends."""
    gw = lib.start_gateway(procs, pki, extra=["--grace-ms", "300"])
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port)
    lib.wait_device(gw, "dev1.example")
    res = {}

    def slow():
        try:
            res["r"] = request(gw.public_port, "POST", "/sleep/3000", "dev1.example", body=b"x", timeout=20)
        except Exception as e:  # noqa: BLE001
            res["r"] = e

    th = threading.Thread(target=slow)
    before = a.requests
    th.start()
    lib.wait_until(lambda: a.requests > before, 10, "the request to reach the local API")
    t0 = time.monotonic()
    agent.kill()
    th.join(20)
    assert isinstance(res.get("r"), lib.Resp) and res["r"].status == 502, res
    assert time.monotonic() - t0 < 2.5
    assert request(gw.public_port, "GET", "/device", "dev1.example").status == 503


def test_agent_redials_after_gateway_restart(procs, api, pki):
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port)
    lib.wait_device(gw, "dev1.example")
    gw.proc.stop()
    agent.wait_log("dialing again", timeout=10)
    proc = procs.start("gateway-restarted", [
        lib.gateway_bin(), "--listen-devices", f"127.0.0.1:{gw.device_port}", "--listen-admin", "off",
        "--listen-public", f"127.0.0.1:{gw.public_port}", "--ca", pki.ca, "--cert", pki.gateway_cert,
        "--key", pki.gateway_key, "--log-level", "debug"])
    gw2 = lib.Gateway(proc, gw.device_port, gw.public_port)
    lib.wait_until(lambda: "devices on" in proc.log() or not proc.alive(), 10, "restarted gateway")
    assert proc.alive(), proc.log()
    r = lib.wait_device(gw2, "dev1.example", timeout=20)
    assert r.status == 200 and r.body == b"dev1.example"
    assert agent.alive()


# --------------------------------------------------------------------------- authority, busy devices, back-pressure, drain


def test_absolute_form_device_sees_the_target_authority(fleet):
    """RFC 9112 §3.2.2: with an absolute-form target the Host field is ignored and
    the target's authority is used, for routing and for what the device is told
    (:authority, Forwarded host=)."""
    data, _ = lib.raw_exchange(fleet.port, b"GET http://dev2.example/echo HTTP/1.1\r\n"
                                           b"Host: dev1.example\r\nConnection: close\r\n\r\n")
    (status, _, body), = lib.parse_responses(data)
    assert status == 200
    doc = json.loads(body)
    assert doc["device"] == "dev2.example"
    assert doc["headers"]["host"] == "dev2.example", doc["headers"]
    assert 'host="dev2.example"' in doc["headers"]["forwarded"], doc["headers"]


def test_busy_device_is_not_reported_as_not_connected(procs, api, pki):
    """A connected device whose connections are all at their MAX_CONCURRENT_STREAMS
    is not reported as "not connected": the 503 says the device is busy."""
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                    connections=1, extra=["--max-concurrent-streams", "2"])
    lib.wait_device(gw, "dev1.example")

    def one(i):
        return request(gw.public_port, "GET", "/sleep/700", "dev1.example", timeout=20)

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as ex:
        results = list(ex.map(one, range(6)))
    statuses = [r.status for r in results]
    assert statuses.count(200) >= 2, statuses
    lies = [r.text.strip() for r in results if "no device is connected" in r.text]
    assert not lies, f"device is connected but {len(lies)} of 6 answers say otherwise: {lies[:2]} (statuses {statuses})"


def test_stalled_reader_is_backpressured(procs, api, pki):
    """A user who stops reading a large download must not make the gateway or the
    agent buffer the response: the gateway acknowledges DATA (WINDOW_UPDATE) only
    as the user's socket drains, and the agent stops reading the local API while
    the stream's queue is full. Measured growth is 1-2 MiB; allowed here 16 MiB
    (windows are 1 MiB per stream)."""
    gw = lib.start_gateway(procs, pki, log_level="info")
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                            connections=1, log_level="info")
    lib.wait_device(gw, "dev1.example")
    base_gw, base_ag = lib.rss_mib(gw.proc.pid), lib.rss_mib(agent.pid)
    limit = 16.0
    grow_gw = grow_ag = 0.0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.settimeout(10)
        s.connect(("127.0.0.1", gw.public_port))
        s.sendall(b"GET /zeros/2000000000 HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:  # never read again
            time.sleep(0.25)
            grow_gw = max(grow_gw, lib.rss_mib(gw.proc.pid) - base_gw)
            grow_ag = max(grow_ag, lib.rss_mib(agent.pid) - base_ag)
            if grow_gw > limit or grow_ag > limit:
                break
    assert grow_gw <= limit and grow_ag <= limit, (
        f"memory grew while the user was not reading: gateway +{grow_gw:.0f} MiB, agent +{grow_ag:.0f} MiB")


def test_agent_sigterm_lets_inflight_request_finish(procs, api, pki):
    """SIGTERM is a graceful stop: GOAWAY(2^31-1) on every connection, the requests
    in flight finish (within drain_timeout_ms), then the agent closes and exits 0."""
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port,
                            connections=1)
    lib.wait_device(gw, "dev1.example")
    res = {}

    def slow():
        try:
            res["r"] = request(gw.public_port, "GET", "/sleep/100", "dev1.example", timeout=10)
        except Exception as e:  # noqa: BLE001
            res["r"] = e

    th = threading.Thread(target=slow)
    before = a.requests
    th.start()
    lib.wait_until(lambda: a.requests > before, 10, "the request to reach the local API", interval=0.005)
    agent.popen.send_signal(signal.SIGTERM)
    th.join(10)
    r = res.get("r")
    assert isinstance(r, lib.Resp), r
    assert r.status == 200, f"in-flight request cut by SIGTERM: {r.status} {r.text.strip()!r}"
    assert agent.popen.wait(timeout=10) == 0, "the agent exits 0 once drained"
    assert "GOAWAY" in gw.proc.log()
