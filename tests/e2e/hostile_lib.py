"""Helpers for the hostile-input suites: hand-built HTTP/2 frames (no HPACK
dynamic table, no Huffman: literal fields only), a frame reader with deadlines,
the gateway's resources (/proc: resident memory, open file descriptors), and
certificates the fleet CA signs with whatever is wrong with them (openssl CLI).

Everything runs on 127.0.0.1; every read has a deadline and every loop a bound.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from typing import Optional

import e2e_lib as lib

MAGIC = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0, 1, 3, 7, 8, 11


def frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream & 0x7FFFFFFF) + payload


def settings(**kv) -> bytes:
    ids = {"max_concurrent_streams": 3, "initial_window_size": 4, "enable_connect_protocol": 8}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in kv.items()))


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack(fields: list[tuple[str, str]]) -> bytes:
    """A header block of literal fields without indexing (new names, no Huffman)."""
    out = b""
    for n, v in fields:
        nb, vb = n.encode(), v.encode()
        out += b"\x00" + _hpack_int(len(nb), 7) + nb + _hpack_int(len(vb), 7) + vb
    return out


def headers(stream: int, fields: list[tuple[str, str]], end_stream: bool = False) -> bytes:
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream, hpack(fields))


def rst(stream: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, stream, struct.pack(">I", code))


def window_update(stream: int, inc: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", inc))


class FrameReader:
    """Reads HTTP/2 frames from a socket; every read has a deadline."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False
        self.seen: list = []

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            self.eof = True
            return False
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def next(self, timeout: float = 5.0) -> Optional[tuple[int, int, int, bytes]]:
        """(type, flags, stream, payload), or None at EOF or when the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    t, f = self.buf[3], self.buf[4]
                    sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                    p = self.buf[9:9 + n]
                    self.buf = self.buf[9 + n:]
                    return t, f, sid, p
            if not self._fill(deadline):
                return None

    def until(self, pred, timeout: float = 5.0, max_frames: int = 100_000):
        """Reads frames until pred(frame) is truthy (returns the frame) or EOF/deadline (None).
        `seen` keeps every frame read."""
        deadline = time.monotonic() + timeout
        self.seen = []
        for _ in range(max_frames):
            fr = self.next(max(0.0, deadline - time.monotonic()))
            if fr is None:
                return None
            self.seen.append(fr)
            if pred(fr):
                return fr
        return None

    def goaway_and_close(self, timeout: float = 5.0) -> tuple[Optional[int], bool]:
        """Reads until EOF: (GOAWAY error code if one came, peer closed)."""
        code = None
        deadline = time.monotonic() + timeout
        self.seen = []
        for _ in range(100_000):
            fr = self.next(max(0.0, deadline - time.monotonic()))
            if fr is None:
                break
            self.seen.append(fr)
            if fr[0] == GOAWAY:
                code = int.from_bytes(fr[3][4:8], "big")
        return code, self.eof


# --------------------------------------------------------------------------- process resources


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds_at_most(pid: int, limit: int, timeout: float = 10.0) -> int:
    """Waits until the process holds at most `limit` file descriptors; returns the count."""
    lib.wait_until(lambda: fd_count(pid) <= limit, timeout, f"pid {pid} to hold <= {limit} fds (has {fd_count(pid)})")
    return fd_count(pid)


# --------------------------------------------------------------------------- certificates

_CA_CONF = """
[ca]
default_ca = fleet
[fleet]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = anything
unique_subject = no
preserve = yes
[anything]
commonName = optional
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
[server_only]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
[no_signature]
basicConstraints = critical,CA:FALSE
keyUsage = critical,keyCertSign
extendedKeyUsage = clientAuth
"""


def sign_device_cert(pki: lib.PKI, out: Path, subject: str, *, extensions: str = "client",
                     start: Optional[str] = None, end: Optional[str] = None) -> tuple[Path, Path]:
    """A certificate for `subject` (e.g. "/CN=dev9.example") signed by the fleet CA with the
    `extensions` section above and the validity [start, end] (YYYYMMDDHHMMSSZ). Returns (cert, key)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.txt").touch()
    if not (out / "serial").exists():
        (out / "serial").write_text("1000\n")
    conf = out / "ca.cnf"
    conf.write_text(_CA_CONF.format(dir=out))
    tag = f"c{len(list(out.glob('*.crt')))}"
    key, csr, crt = out / f"{tag}.key", out / f"{tag}.csr", out / f"{tag}.crt"

    def run(args):
        r = subprocess.run(args, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{' '.join(map(str, args))}: {r.stderr.decode(errors='replace')}"

    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", csr, "-subj", subject, "-multivalue-rdn"])
    os.chmod(key, 0o600)
    args = ["openssl", "ca", "-batch", "-notext", "-config", conf, "-cert", pki.ca, "-keyfile", pki.dir / "ca.key",
            "-in", csr, "-out", crt, "-extensions", extensions]
    args += ["-startdate", start] if start else []
    args += ["-enddate", end] if end else ["-days", "30"]
    run(args)
    return crt, key


def device_tls(pki: lib.PKI, cert: Optional[Path], key: Optional[Path], ca: Optional[Path] = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca or pki.ca))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def dial_device(gw: lib.Gateway, ctx: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", gw.device_port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="gw.example")
