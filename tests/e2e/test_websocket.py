"""WebSockets through the tunnel: the user's HTTP/1.1 Upgrade becomes an extended
CONNECT (RFC 8441) on the reversed connection, and the agent turns it back into
an HTTP/1.1 Upgrade to the local API (Home Assistant, Node-RED, OctoPrint and
Grafana UIs need this)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time

import pytest

import e2e_lib as lib


def _fleet(procs, api, pki):
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    return gw, a


def _handshake(port, host="dev1.example", path="/ws", protocol=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
    if protocol:
        req += f"Sec-WebSocket-Protocol: {protocol}\r\n"
    s.sendall((req + "\r\n").encode())
    f = s.makefile("rb")
    status = f.readline()
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    return s, f, key, status, headers


def test_websocket_echo_through_the_tunnel(procs, api, pki):
    gw, _ = _fleet(procs, api, pki)
    s, f, key, status, headers = _handshake(gw.public_port, protocol="chat")
    try:
        assert status.startswith(b"HTTP/1.1 101"), (status, headers)
        want = base64.b64encode(hashlib.sha1((key + lib.WS_GUID).encode()).digest()).decode()
        assert headers.get("sec-websocket-accept") == want
        assert headers.get("upgrade", "").lower() == "websocket"
        assert headers.get("sec-websocket-protocol") == "chat"
        for payload in [b"hello", b"x" * 200, os.urandom(70_000), b""]:
            s.sendall(lib.ws_frame(0x2, payload, mask=True))
            opcode, data = lib.ws_read_frame(f)
            assert opcode == 0x2 and data == payload
        s.sendall(lib.ws_frame(0x8, b"\x03\xe8bye", mask=True))
        opcode, data = lib.ws_read_frame(f)
        assert opcode == 0x8 and data == b"\x03\xe8bye"
        assert f.read(1) == b"", "the connection closes after the close handshake"
    finally:
        s.close()


def test_many_websockets_at_once_do_not_mix(procs, api, pki):
    gw, _ = _fleet(procs, api, pki)
    conns = [_handshake(gw.public_port) for _ in range(20)]
    try:
        for i, (s, f, _, status, _) in enumerate(conns):
            assert status.startswith(b"HTTP/1.1 101")
            s.sendall(lib.ws_frame(0x1, f"message {i}".encode(), mask=True))
        for i, (s, f, *_rest) in enumerate(conns):
            assert lib.ws_read_frame(f) == (0x1, f"message {i}".encode())
    finally:
        for s, *_ in conns:
            s.close()


def test_refused_upgrade_is_passed_on(procs, api, pki):
    """A local API that refuses the upgrade (400) is answered 400; one that ignores
    it (a plain 200) must not look like an open WebSocket: 502."""
    gw, a = _fleet(procs, api, pki)
    s, f, _, status, _ = _handshake(gw.public_port, path="/status/400")
    s.close()
    assert status.startswith(b"HTTP/1.1 400"), status
    s, f, _, status, _ = _handshake(gw.public_port, path="/device")
    s.close()
    assert status.startswith(b"HTTP/1.1 502"), status


def test_refused_upgrade_answer_ends_as_a_response_not_an_abort(procs, api, pki):
    """The local API's refusal of an upgrade (an ordinary 403 with a body) is a whole
    response: the user gets all of it and the gateway closes after flushing it. It is
    not a WebSocket that ended (which never began), so no abort: an abort drops the
    output the kernel has not taken yet, and logs the request as aborted."""
    gw, _ = _fleet(procs, api, pki)
    s, f, _, status, headers = _handshake(gw.public_port, path="/status/403")
    try:
        assert status.startswith(b"HTTP/1.1 403"), status
        body = f.read()  # until the gateway closes
    finally:
        s.close()
    assert body == b"status 403\n", body
    lib.wait_until(lambda: "path=/status/403" in gw.log(), 10, "the access log line")
    log = gw.log()
    assert "a WebSocket ended that never began" not in log, log[-3000:]
    line = [l for l in log.splitlines() if "path=/status/403" in l][-1]
    assert not line.rstrip().endswith("aborted") and " aborted" not in line, line


def test_user_end_before_a_pipelined_upgrade_is_answered_reaches_the_device(procs, api, pki):
    """A request, a pipelined WebSocket upgrade, then the user's FIN: the FIN is read
    before the upgrade starts. Once the device's 101 opens the tunnel, the user's
    side of it is ended (the device's echo server sees EOF and closes), so the
    connection ends instead of staying half-open for ever."""
    gw, _ = _fleet(procs, api, pki)
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(b"GET /device HTTP/1.1\r\nHost: dev1.example\r\n\r\n"
              + (f"GET /ws HTTP/1.1\r\nHost: dev1.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    s.shutdown(socket.SHUT_WR)
    try:
        data, closed = lib.read_until_close(s, 10)
    finally:
        s.close()
    assert b"HTTP/1.1 200" in data and b"HTTP/1.1 101" in data, data
    assert closed, "the tunnel stayed open after the user's end: " + repr(data[-200:])


def test_user_close_notify_before_a_pipelined_upgrade_over_tls_reaches_the_device(procs, api, pki):
    """The same over the HTTPS listener, where the user's close_notify arrives in the
    same flight as the requests: OpenSSL holds it while the pipelined upgrade waits,
    and it is read (the user's end) before the upgrade starts."""
    import ssl
    gw = lib.start_gateway(procs, pki, public_tls=True)
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    lib.wait_device(gw, "dev1.example", ssl_ctx=ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    try:
        while True:  # the handshake, by hand
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                s.sendall(outgoing.read())
                chunk = s.recv(65536)
                assert chunk, "the gateway closed during the handshake"
                incoming.write(chunk)
        s.sendall(outgoing.read())
        key = base64.b64encode(os.urandom(16)).decode()
        tls.write(b"GET /device HTTP/1.1\r\nHost: dev1.example\r\n\r\n"
                  + (f"GET /ws HTTP/1.1\r\nHost: dev1.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        try:
            tls.unwrap()  # queues close_notify (then wants the gateway's)
        except ssl.SSLWantReadError:
            pass
        s.sendall(outgoing.read())  # requests and close_notify in one flight
        data = b""
        closed = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                closed = True
                break
            incoming.write(chunk)
            while True:
                try:
                    data += tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
                except ssl.SSLError:
                    break
    finally:
        s.close()
    assert b"HTTP/1.1 200" in data and b"HTTP/1.1 101" in data, data
    assert closed, "the tunnel stayed open after the user's close_notify: " + repr(data[-200:])


def test_websocket_to_a_device_that_is_not_connected_gets_503(procs, api, pki):
    gw = lib.start_gateway(procs, pki)
    s, f, _, status, _ = _handshake(gw.public_port, host="nobody.example")
    s.close()
    assert status.startswith(b"HTTP/1.1 503"), status


def test_bad_websocket_handshake_gets_426(procs, api, pki):
    gw, _ = _fleet(procs, api, pki)
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: dev1.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
    data, _ = lib.read_until_close(s, 10)
    s.close()
    assert data.startswith(b"HTTP/1.1 426") and b"Sec-WebSocket-Version: 13" in data, data
