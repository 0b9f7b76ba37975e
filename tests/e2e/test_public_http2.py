"""Users over HTTP/2: ALPN h2 on the TLS listener, prior-knowledge h2c on the plain
one (curl and h2load as independent clients), limits and rapid-reset protection."""

from __future__ import annotations

import hashlib
import shutil
import socket
import struct
import subprocess
import time

import pytest

import e2e_lib as lib

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def _fleet(procs, api, pki, public_tls=False, extra=()):
    gw = lib.start_gateway(procs, pki, public_tls=public_tls, extra=list(extra))
    for dev in ("dev1.example", "dev2.example"):
        a = api(dev)
        lib.start_agent(procs, gw.device_port, pki=pki, device=dev, local_port=a.port, connections=1)
    ca = pki.ca if public_tls else None
    for dev in ("dev1.example", "dev2.example"):
        lib.wait_until(lambda: _curl(gw, dev, "/device", tls_ca=ca)[1] == 200, 15, f"{dev} over HTTP/2")
    return gw


def _curl(gw, host, path, *args, tls_ca=None):
    if tls_ca:
        url = f"https://127.0.0.1:{gw.public_port}{path}"
        proto = ["--http2", "--cacert", str(tls_ca)]
    else:
        url = f"http://127.0.0.1:{gw.public_port}{path}"
        proto = ["--http2-prior-knowledge"]
    r = subprocess.run(["curl", "-s", "-S", "-o", "-", "-w", "\n%{http_version} %{http_code}", "-H", f"Host: {host}",
                        *proto, *args, url], capture_output=True, timeout=30)
    body, _, tail = r.stdout.rpartition(b"\n")
    version, code = tail.decode().split()
    return body, int(code), version


def test_h2c_prior_knowledge_reaches_the_right_device(procs, api, pki):
    gw = _fleet(procs, api, pki)
    for dev in ("dev1.example", "dev2.example"):
        body, code, version = _curl(gw, dev, "/device")
        assert (body, code, version) == (dev.encode(), 200, "2")


def test_h2_over_tls_with_alpn(procs, api, pki):
    gw = _fleet(procs, api, pki, public_tls=True)
    body, code, version = _curl(gw, "dev1.example", "/device", tls_ca=pki.ca)
    assert (body, code, version) == (b"dev1.example", 200, "2")
    body, code, version = _curl(gw, "dev1.example", "/device", "--http1.1", tls_ca=pki.ca)
    assert (code, version) == (200, "1.1")


def test_h2_download_and_upload_integrity(procs, api, pki, tmp_path):
    gw = _fleet(procs, api, pki)
    body, code, _ = _curl(gw, "dev1.example", "/bytes/5000000")
    assert code == 200 and hashlib.sha256(body).hexdigest() == lib.sha256(lib.det_bytes(5_000_000))
    data = lib.det_bytes(3_000_000)
    f = tmp_path / "up.bin"
    f.write_bytes(data)
    body, code, _ = _curl(gw, "dev1.example", "/upload", "--data-binary", f"@{f}")
    assert code == 200 and lib.sha256(data) in body.decode()


def test_h2load_many_streams_all_succeed(procs, api, pki):
    if shutil.which("h2load") is None:
        pytest.skip("h2load (nghttp2-client) is not installed")
    gw = _fleet(procs, api, pki)
    r = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "50", "-H", ":authority: dev1.example",
                        f"http://127.0.0.1:{gw.public_port}/device"], capture_output=True, text=True, timeout=120)
    assert "2000 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout
    assert "status codes: 2000 2xx" in r.stdout, r.stdout


def _frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def test_rapid_reset_gets_goaway(procs, api, pki):
    gw = _fleet(procs, api, pki)
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    host = b"dev1.example"
    block = b"\x82\x86\x84\x41" + bytes([len(host)]) + host  # :method GET, :scheme http, :path /, :authority
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(0x4, 0, 0)
    for i in range(400):
        sid = 2 * i + 1
        out += _frame(0x1, 0x5, sid, block) + _frame(0x3, 0, sid, struct.pack(">I", 8))
    s.sendall(out)
    deadline = time.monotonic() + 10
    data = b""
    goaway = None
    while time.monotonic() < deadline and goaway is None:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
        i = 0
        while i + 9 <= len(data):
            length = int.from_bytes(data[i:i + 3], "big")
            if i + 9 + length > len(data):
                break
            if data[i + 3] == 0x7:
                goaway = int.from_bytes(data[i + 9 + 4:i + 9 + 8], "big")
            i += 9 + length
    s.close()
    assert goaway == 11, f"expected GOAWAY(ENHANCE_YOUR_CALM), got {goaway}"
    assert "resets streams too fast" in gw.proc.log()
    # Other users are unaffected.
    assert _curl(gw, "dev1.example", "/device")[1] == 200


def _hpack_literal(name: bytes, value: bytes) -> bytes:
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _read_frames(s, buf: bytearray):
    """Yields (type, flags, stream, payload) as they arrive."""
    while True:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[0:3], "big"):
            n = int.from_bytes(buf[0:3], "big")
            frame = (buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, bytes(buf[9:9 + n]))
            del buf[:9 + n]
            yield frame
        chunk = s.recv(65536)
        if not chunk:
            return
        buf += chunk


def test_websocket_over_http2_extended_connect(procs, api, pki):
    """RFC 8441 from the user too: an extended CONNECT on the user's HTTP/2
    connection reaches the device's WebSocket echo."""
    gw = _fleet(procs, api, pki)
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    block = (b"\x02\x07CONNECT" + b"\x86" + b"\x04\x03/ws" + b"\x01" + bytes([12]) + b"dev1.example"
             + _hpack_literal(b":protocol", b"websocket") + _hpack_literal(b"sec-websocket-version", b"13"))
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(0x4, 0, 0) + _frame(0x1, 0x4, 1, block))
    buf = bytearray()
    frames = _read_frames(s, buf)
    status_ok = False
    for ftype, flags, stream, payload in frames:
        if ftype == 0x4 and not flags & 0x1:
            s.sendall(_frame(0x4, 0x1, 0))
        if ftype == 0x1 and stream == 1:
            status_ok = payload[:1] == b"\x88"  # :status 200, static table
            break
        assert ftype != 0x3, "stream reset"
    assert status_ok, "the extended CONNECT was not answered 200"
    s.sendall(_frame(0x0, 0, 1, lib.ws_frame(0x1, b"hello over h2", mask=True)))
    echoed = b""
    for ftype, flags, stream, payload in frames:
        if ftype == 0x0 and stream == 1:
            echoed += payload
            if len(echoed) >= 2 + len(b"hello over h2"):
                break
    assert echoed == lib.ws_frame(0x1, b"hello over h2"), echoed
    s.close()
