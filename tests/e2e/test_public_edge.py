"""The public edge against what an outside tester tried (issue 12): request-target
forms (finding 10), duplicate Content-Length (12), client-address fields (7),
Set-Cookie's Domain (15) and the admin listener's Host (6). The descriptor flood
(3) is in test_descriptor_budget.py.

Two devices: dev1.example and dev2.example, each with a local API that records
what reached it."""

from __future__ import annotations

import http.client
import json
import re
import socket

import pytest

import e2e_lib as lib
import hostile_lib as hl
from hostile_lib import frame


class _EdgeHandler(lib._ApiHandler):
    """The usual local API, plus answers a device could send that the gateway must not pass on as they are."""

    def _route(self, head_only: bool):
        if self.path == "/cookie-domain":
            self._digest_body()
            return self._send(200, b"cookies\n", extra=[("Set-Cookie", "sid=1; Domain=devices.example.com; Path=/; HttpOnly"),
                                                        ("Set-Cookie", "pref=2;domain=.example.com"),
                                                        ("Set-Cookie", "plain=3; Path=/")])
        if self.path == "/dup-cl":
            self._digest_body()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
            self.wfile.flush()
            return
        if self.path == "/dup-cl-list":
            self._digest_body()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello")
            self.wfile.flush()
            return
        return super()._route(head_only)


class Env:
    def __init__(self, gw, apis):
        self.gw = gw
        self.apis = apis
        self.port = gw.public_port

    def requests(self) -> int:
        return sum(a.requests for a in self.apis.values())

    def admin(self, host: str | None, path: str = "/devices"):
        c = http.client.HTTPConnection("127.0.0.1", self.gw.admin_port, timeout=10)
        try:
            c.putrequest("GET", path, skip_host=True)
            if host is not None:
                c.putheader("Host", host)
            c.endheaders()
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


@pytest.fixture(scope="module")
def env(module_procs, module_api, pki):
    gw = lib.start_gateway(module_procs, pki, name="gateway-edge", log_level="info",
                           extra=["--check-interval-ms", "0", "--response-timeout-ms", "3000"])
    apis = {}
    for dev in ("dev1.example", "dev2.example"):
        a = module_api(dev)
        a.RequestHandlerClass = _EdgeHandler
        apis[dev] = a
        lib.start_agent(module_procs, gw.device_port, pki=pki, device=dev, local_port=a.port, connections=1, log_level="info")
    for dev in apis:
        assert lib.wait_device(gw, dev).status == 200
    return Env(gw, apis)


def _refused(env: Env, raw: bytes, status: int = 400) -> bytes:
    before = env.requests()
    data, closed = lib.raw_exchange(env.port, raw, timeout=10)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:300]
    assert closed, "the connection stayed open after a malformed request"
    assert env.requests() == before, "the request reached a device"
    return data


def _echo(data: bytes) -> dict:
    status, _, body = lib.parse_responses(data)[0]
    assert status == 200, data[:300]
    return json.loads(body)


# --------------------------------------------------------------------------- finding 10: request targets


@pytest.mark.parametrize("line", [b"GET httpx/a://dev2.example/zzz HTTP/1.1", b"GET x HTTP/1.1",
                                  b"GET dev2.example:80 HTTP/1.1", b"GET ftp://dev2.example/x HTTP/1.1",
                                  b"GET http://user@dev2.example/x HTTP/1.1", b"GET http:///x HTTP/1.1",
                                  b"GET * HTTP/1.1", b"CONNECT /x HTTP/1.1", b"GET /a#b HTTP/1.1"])
def test_a_target_in_no_form_is_400(env, line):
    _refused(env, line + b"\r\nHost: dev1.example\r\n\r\n")


def test_absolute_form_any_case_routes_by_its_authority_and_logs_it(env):
    """RFC 9112 §3.2.2: the target's authority, not Host, names the device; the
    device gets origin-form, and the access log names the device that answered."""
    raw = b"GET HTTP://dev2.example/echo?q=1 HTTP/1.1\r\nHost: dev1.example\r\nConnection: close\r\n\r\n"
    data, _ = lib.raw_exchange(env.port, raw, timeout=10)
    doc = _echo(data)
    assert doc["device"] == "dev2.example" and doc["path"] == "/echo?q=1"
    env.gw.proc.wait_log('host=dev2.example method=GET path=HTTP://dev2.example/echo?q=1 status=200', timeout=10)
    # And https, lower-case, empty path.
    data, _ = lib.raw_exchange(env.port, b"GET hTTps://dev1.example?x HTTP/1.1\r\nHost: dev2.example\r\nConnection: close\r\n\r\n")
    status, headers, _ = lib.parse_responses(data)[0]
    assert status == 404 and headers.get("x-device") == "dev1.example", data[:300]  # "/?x" is no route of the API


def test_connect_and_asterisk_forms(env):
    # A CONNECT to port 443 (issue 14): the agent refuses a port not in its tcp_ports
    # (403), and no local API sees it.
    before = env.requests()
    data, closed = lib.raw_exchange(env.port, b"CONNECT dev1.example:443 HTTP/1.1\r\nHost: dev1.example:443\r\n\r\n", timeout=10)
    assert data.startswith(b"HTTP/1.1 403 "), data[:300]
    assert closed and env.requests() == before
    data, _ = lib.raw_exchange(env.port, b"OPTIONS * HTTP/1.1\r\nHost: dev1.example\r\nConnection: close\r\n\r\n")
    status, headers, _ = lib.parse_responses(data)[0]
    assert headers.get("x-device") == "dev1.example", data[:300]  # reached the device as OPTIONS *


def _h2_request(env: Env, fields: list, body: bytes = b"", timeout: float = 10.0) -> tuple[bytes, int | None]:
    """One request on a prior-knowledge h2c connection: (DATA received, RST_STREAM code or None)."""
    with socket.create_connection(("127.0.0.1", env.port), timeout=timeout) as s:
        s.sendall(hl.MAGIC + hl.settings() + hl.headers(1, fields, end_stream=not body)
                  + (frame(hl.DATA, hl.END_STREAM, 1, body) if body else b""))
        r = hl.FrameReader(s)
        data, code = b"", None

        def done(f):
            nonlocal data, code
            if f[2] == 1 and f[0] == hl.DATA:
                data += f[3]
            if f[2] == 1 and f[0] == hl.RST_STREAM:
                code = int.from_bytes(f[3][:4], "big")
            return f[2] == 1 and (f[0] == hl.RST_STREAM or f[1] & hl.END_STREAM) or f[0] == hl.GOAWAY
        assert r.until(done, timeout), "no end of the h2 stream"
        return data, code


@pytest.mark.parametrize("path", ["x", "*", "http://dev2.example/echo", "dev2.example:80"])
def test_h2_path_must_be_origin_form(env, path):
    before = env.requests()
    data, code = _h2_request(env, [(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", "dev1.example")])
    assert code is not None or b"invalid :path" in data, (data, code)
    assert env.requests() == before


def test_h2_authority_and_host_must_agree(env):
    before = env.requests()
    data, code = _h2_request(env, [(":method", "GET"), (":scheme", "http"), (":path", "/echo"),
                                   (":authority", "dev1.example"), ("host", "dev2.example")])
    assert code is not None or b"differ" in data, (data, code)
    assert env.requests() == before


# --------------------------------------------------------------------------- finding 12: Content-Length


@pytest.mark.parametrize("cl", [b"Content-Length: 5\r\nContent-Length: 5\r\n", b"Content-Length: 5, 5\r\n"])
def test_repeated_content_length_is_400(env, cl):
    _refused(env, b"POST /echo HTTP/1.1\r\nHost: dev1.example\r\n" + cl + b"\r\nhello")


def test_h2_repeated_content_length_never_reaches_the_device(env):
    before = env.requests()
    for cl in ([("content-length", "5"), ("content-length", "5")], [("content-length", "5, 5")]):
        data, code = _h2_request(env, [(":method", "POST"), (":scheme", "http"), (":path", "/echo"),
                                       (":authority", "dev1.example"), *cl], body=b"hello")
        assert code is not None or data.startswith(b"bad request"), (data, code)
    assert env.requests() == before


@pytest.mark.parametrize("path", ["/dup-cl", "/dup-cl-list"])
def test_a_device_repeating_content_length_is_502(env, path):
    r = lib.request(env.port, "GET", path, "dev1.example")
    assert r.status == 502, r
    assert lib.request(env.port, "GET", "/device", "dev1.example").status == 200


# --------------------------------------------------------------------------- finding 7: client-address fields


SPOOFED = [("X_Forwarded_For", "6.6.6.6"), ("X-Real-IP", "6.6.6.6"), ("X-Forwarded-Host", "evil.example"),
           ("True-Client-IP", "6.6.6.6"), ("X-Client-IP", "6.6.6.6"), ("X-Forwarded-For", "6.6.6.6"),
           ("Forwarded", "for=6.6.6.6"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "443"),
           ("CF-Connecting-IP", "6.6.6.6"), ("X-Original-URL", "/admin"), ("Some_Header", "x")]


def _check_forwarding(doc: dict):
    names = [n.lower() for n, _ in doc["header_list"]]
    for n, _ in SPOOFED:
        if n.lower() not in ("x-forwarded-for", "x-forwarded-proto", "forwarded"):
            assert n.lower() not in names, f"{n} reached the device: {doc['header_list']}"
    assert "6.6.6.6" not in json.dumps(doc["header_list"])
    h = doc["headers"]
    assert h["x-forwarded-for"] == "127.0.0.1" and h["x-forwarded-proto"] == "http"
    assert h["forwarded"].startswith("for=127.0.0.1;proto=http")


def test_client_address_fields_are_replaced_http1(env):
    raw = b"GET /echo HTTP/1.1\r\nHost: dev1.example\r\nConnection: close\r\n"
    raw += b"".join(n.encode() + b": " + v.encode() + b"\r\n" for n, v in SPOOFED) + b"\r\n"
    data, _ = lib.raw_exchange(env.port, raw)
    _check_forwarding(_echo(data))


def test_client_address_fields_are_replaced_http2(env):
    data, code = _h2_request(env, [(":method", "GET"), (":scheme", "http"), (":path", "/echo"), (":authority", "dev1.example"),
                                   *[(n.lower(), v) for n, v in SPOOFED]])
    assert code is None, code
    _check_forwarding(json.loads(data))


# --------------------------------------------------------------------------- finding 15: Set-Cookie


def test_set_cookie_domain_is_stripped(env):
    r = lib.request(env.port, "GET", "/cookie-domain", "dev1.example")
    assert r.status == 200
    cookies = [v for n, v in r.headers if n.lower() == "set-cookie"]
    assert cookies == ["sid=1; Path=/; HttpOnly", "pref=2", "plain=3; Path=/"], cookies


# --------------------------------------------------------------------------- finding 6: admin Host


@pytest.mark.parametrize("host", ["dead.beef", "cafe.de", "dead.beef:9180", "beef", "1.2.3", "127.0.0.1.nip.io",
                                  "[dead.beef]", "256.1.1.1"])
def test_admin_refuses_names_that_look_like_addresses(env, host):
    status, body = env.admin(host)
    assert status == 403, (host, status, body[:200])


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "[::1]:{port}", "localhost:{port}", "LOCALHOST"])
def test_admin_answers_address_literals(env, host):
    status, body = env.admin(host.format(port=env.gw.admin_port))
    assert status == 200 and b"dev1.example" in body, (host, status, body[:200])
