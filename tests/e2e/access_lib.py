"""Support code for the access-control tests (issue 13): JWTs signed here with
keys made here (RS256, ES256, EdDSA, and the forgeries: alg none, HS256 keyed
with the public key), JWKS documents and a JWKS server on 127.0.0.1 that counts
its hits, tokens (the CLI, and tokens-file lines written by hand), policies, and
an HTTP/1.1 / HTTP/2 / WebSocket client that can bind its source address
(127.0.0.2 is as much loopback as 127.0.0.1: the whole 127/8 is on lo).

Needs python3-cryptography (scripts/setup-deps installs it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import e2e_lib as lib

DOMAIN = "devices.test"
ISSUER = "https://sso.example.test/"
AUDIENCE = "fleet-gateway-e2e"


def host(dev: str) -> str:
    return f"{dev}.{DOMAIN}"


# --------------------------------------------------------------------------- JWT


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _int_b64u(n: int, length: Optional[int] = None) -> str:
    length = length or (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))


@dataclass
class Key:
    alg: str  # RS256, ES256, EdDSA
    kid: str
    private: object

    @staticmethod
    def make(alg: str, kid: str) -> "Key":
        if alg == "RS256":
            k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            k = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            k = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)
        return Key(alg, kid, k)

    def jwk(self) -> dict:
        pub = self.private.public_key()
        if self.alg == "RS256":
            n = pub.public_numbers()
            return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": _int_b64u(n.n),
                    "e": _int_b64u(n.e)}
        if self.alg == "ES256":
            n = pub.public_numbers()
            return {"kty": "EC", "kid": self.kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                    "x": _int_b64u(n.x, 32), "y": _int_b64u(n.y, 32)}
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "kid": self.kid, "use": "sig", "alg": "EdDSA", "crv": "Ed25519", "x": b64u(raw)}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data: bytes) -> bytes:
        if self.alg == "RS256":
            return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self.private.sign(data)


def jwks(*keys: Key) -> dict:
    return {"keys": [k.jwk() for k in keys]}


def claims(sub: str, *, email: Optional[str] = None, groups: Optional[list] = None, iss: str = ISSUER,
           aud=AUDIENCE, exp_in: Optional[int] = 3600, nbf_in: Optional[int] = None, **extra) -> dict:
    now = int(time.time())
    c: dict = {"sub": sub, "iss": iss, "aud": aud, "iat": now}
    if exp_in is not None:
        c["exp"] = now + exp_in
    if nbf_in is not None:
        c["nbf"] = now + nbf_in
    if email is not None:
        c["email"] = email
    if groups is not None:
        c["groups"] = groups
    c.update(extra)
    return c


def jwt(key: Key, payload: dict, *, kid: Optional[str] = None, alg: Optional[str] = None) -> str:
    header = {"alg": alg or key.alg, "typ": "JWT", "kid": kid or key.kid}
    signing_input = (b64u(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64u(json.dumps(payload, separators=(",", ":")).encode()))
    return signing_input + "." + b64u(key.sign(signing_input.encode()))


def jwt_alg_none(payload: dict, kid: str) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": kid}
    return (b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(payload).encode()) + ".")


def jwt_hs256_with_public_key(key: Key, payload: dict) -> str:
    """The classic key-confusion forgery: HMAC-SHA256 keyed with the public key's PEM."""
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = (b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(payload).encode()))
    mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64u(mac)


class JWKSServer(ThreadingHTTPServer):
    """Serves `doc` (JSON) at any path on 127.0.0.1; counts GETs."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, doc: dict):
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                srv: JWKSServer = self.server  # type: ignore
                with srv.lock:
                    srv.hits += 1
                    body = json.dumps(srv.doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        super().__init__(("127.0.0.1", 0), H)
        self.doc = doc
        self.hits = 0
        self.lock = threading.Lock()
        self._t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._t.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/.well-known/jwks.json"

    def set(self, doc: dict):
        with self.lock:
            self.doc = doc

    def count(self) -> int:
        with self.lock:
            return self.hits

    def close(self):
        self.shutdown()
        self.server_close()


# --------------------------------------------------------------------------- tokens, users, policies


def token_cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(lib.gateway_bin()), "token"] + [str(a) for a in args]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, env=lib.child_env())
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr.decode(errors='replace')}")
    return r


def token_create(tokens: Path, name: str, devices: str, *extra) -> str:
    """`fleet-gateway token create`: the secret (stdout, one line)."""
    r = token_cli("create", name, "--devices", devices, "--tokens", tokens, *extra)
    out = r.stdout.decode().strip()
    assert "\n" not in out and out.startswith("rht_"), f"token create printed {out!r}"
    return out


def new_secret() -> str:
    return "rht_" + b64u(os.urandom(32))


def token_line(name: str, secret: str, devices: str, created: int, expires) -> str:
    """A tokens-file line as spec13 defines it (written by hand: an expired token)."""
    return (f"{name} {hashlib.sha256(secret.encode()).hexdigest()} devices={devices} created={created} "
            f"expires={expires}\n")


def issue_user(pki_dir: Path, name: str) -> tuple[Path, Path]:
    lib.run_pki(["issue-user", pki_dir, name])
    return pki_dir / "users" / f"{name}.crt", pki_dir / "users" / f"{name}.key"


def cert_serial(crt: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(crt)], capture_output=True,
                         timeout=10, check=True).stdout.decode()
    return out.strip().split("=", 1)[1]


def basic(name: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


# --------------------------------------------------------------------------- clients


@dataclass
class Client:
    """How a request authenticates: headers, and a client certificate (HTTPS)."""
    label: str
    headers: dict = field(default_factory=dict)
    cert: Optional[tuple] = None  # (crt, key)


_CTX_CACHE: dict = {}


def tls_context(ca: Path, cert: Optional[tuple] = None, alpn: Optional[list] = None) -> ssl.SSLContext:
    key = (str(ca), cert, tuple(alpn or ()))
    ctx = _CTX_CACHE.get(key)
    if ctx is None:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False  # the gateway's certificate names 127.0.0.1; Host names the device
        if cert:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        _CTX_CACHE[key] = ctx
    return ctx


def h1(port: int, method: str, path: str, hostname: str, *, client: Optional[Client] = None,
       source: str = "127.0.0.1", ca: Optional[Path] = None, headers: Optional[dict] = None,
       body: Optional[bytes] = None, timeout: float = 15.0) -> lib.Resp:
    """One HTTP/1.1 request from `source` (over TLS when `ca` is given)."""
    client = client or Client("anonymous")
    if ca is not None:
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0),
                                        context=tls_context(ca, client.cert))
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    h = dict(client.headers)
    h.update(headers or {})
    try:
        return lib.request(port, method, path, hostname, body=body, headers=h, conn=c, timeout=timeout)
    finally:
        c.close()


def h2(port: int, method: str, path: str, hostname: str, *, client: Optional[Client] = None,
       source: str = "127.0.0.1", ca: Optional[Path] = None, headers: Optional[dict] = None,
       timeout: float = 20.0) -> tuple[int, dict, bytes, str]:
    """One request with curl over HTTP/2 (ALPN h2 over TLS with `ca`, else h2c
    with prior knowledge) from `source`: (status, {lower name: value}, body, version)."""
    client = client or Client("anonymous")
    scheme = "https" if ca else "http"
    args = ["curl", "-sS", "--path-as-is", "--max-time", str(int(timeout)), "-X", method, "--interface", source,
            "--resolve", f"{hostname}:{port}:127.0.0.1", "-D", "-", "-o", "-",
            "-w", "\n%{http_version}"]
    if ca:
        args += ["--http2", "--cacert", str(ca), "-k"]  # -k: the certificate names 127.0.0.1, not the device
    else:
        args += ["--http2-prior-knowledge"]
    if client.cert:
        args += ["--cert", str(client.cert[0]), "--key", str(client.cert[1])]
    for k, v in list(client.headers.items()) + list((headers or {}).items()):
        args += ["-H", f"{k}: {v}"]
    args.append(f"{scheme}://{hostname}:{port}{path}")
    r = subprocess.run(args, capture_output=True, timeout=timeout + 10, stdin=subprocess.DEVNULL)
    out = r.stdout
    if r.returncode != 0:
        raise AssertionError(f"curl failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    out, _, version = out.rpartition(b"\n")
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs: dict = {}
    for line in lines[1:]:
        n, _, v = line.partition(":")
        n = n.strip().lower()
        hdrs[n] = (hdrs[n] + "\n" if n in hdrs else "") + v.strip()
    return status, hdrs, body, version.decode().strip()


def websocket(port: int, hostname: str, *, client: Optional[Client] = None, source: str = "127.0.0.1",
              ca: Optional[Path] = None, path: str = "/ws", timeout: float = 10.0) -> int:
    """A WebSocket upgrade; on 101 one frame is echoed (checked). The status."""
    client = client or Client("anonymous")
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    s = tls_context(ca, client.cert, ["http/1.1"]).wrap_socket(raw) if ca else raw
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
        for k, v in client.headers.items():
            req += f"{k}: {v}\r\n"
        s.sendall((req + "\r\n").encode())
        f = s.makefile("rb")
        status_line = f.readline()
        while f.readline() not in (b"\r\n", b""):
            pass
        status = int(status_line.split()[1])
        if status == 101:
            s.sendall(lib.ws_frame(0x1, b"hello", mask=True))
            assert lib.ws_read_frame(f) == (0x1, b"hello"), "the WebSocket echoes"
        return status
    finally:
        s.close()


def www_authenticate(headers) -> list[str]:
    """Every WWW-Authenticate value of a response (list of (name, value) or dict
    with newline-joined repeats)."""
    if isinstance(headers, dict):
        v = headers.get("www-authenticate")
        return v.split("\n") if v else []
    return [v for n, v in headers if n.lower() == "www-authenticate"]


def check_challenges(values: list[str]) -> None:
    joined = " | ".join(values)
    assert any(v.strip().startswith("Basic ") and 'realm="fleet-gateway"' in v for v in values), joined
    assert any(v.strip().startswith("Bearer ") and 'realm="fleet-gateway"' in v for v in values), joined


# --------------------------------------------------------------------------- RFC 8441 from the user

_HUFF_DIGITS = {"00000": "0", "00001": "1", "00010": "2", "011001": "3", "011010": "4", "011011": "5",
                "011100": "6", "011101": "7", "011110": "8", "011111": "9"}
_STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}


def h2_status(block: bytes) -> int:
    """:status of a response header block whose first field is :status (RFC 9113
    8.3.2): indexed (static table), or a literal with the name :status (index 8)
    and a plain or Huffman-coded value of digits."""
    b = block[0]
    if b & 0x80:
        return _STATIC_STATUS[b & 0x7F]
    # literal with incremental indexing (01xxxxxx, 6-bit index), or without / never indexed (4-bit index)
    idx = b & 0x3F if b & 0x40 else b & 0x0F
    assert idx in range(8, 15), f"first field is not :status: {block[:16]!r}"
    n, huff, raw = block[1] & 0x7F, block[1] & 0x80, block[2:2 + (block[1] & 0x7F)]
    if not huff:
        return int(raw.decode())
    bits, out, cur = "".join(f"{x:08b}" for x in raw), "", ""
    for bit in bits:
        cur += bit
        if cur in _HUFF_DIGITS:
            out += _HUFF_DIGITS[cur]
            cur = ""
            if len(out) == 3:
                break
    return int(out)


def h2_websocket(port: int, hostname: str, *, client: Optional[Client] = None, source: str = "127.0.0.1",
                 ca: Path, path: str = "/ws", timeout: float = 10.0) -> int:
    """A WebSocket over the user's HTTP/2 connection (extended CONNECT, RFC 8441,
    ALPN h2): the status; on 200 one frame is echoed (checked)."""
    import hostile_lib as hl
    client = client or Client("anonymous")
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    s = tls_context(ca, client.cert, ["h2"]).wrap_socket(raw)
    try:
        assert s.selected_alpn_protocol() == "h2"
        fields = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":path", path),
                  (":authority", hostname), ("sec-websocket-version", "13")]
        fields += [(k.lower(), v) for k, v in client.headers.items()]
        s.sendall(hl.MAGIC + hl.settings() + hl.headers(1, fields))
        r = hl.FrameReader(s)
        block = b""
        for _ in range(1000):
            fr = r.next(timeout)
            assert fr is not None, "no answer to the extended CONNECT"
            t, f, sid, payload = fr
            if t == hl.SETTINGS and not f & hl.ACK:
                s.sendall(hl.frame(hl.SETTINGS, hl.ACK, 0))
            if t == hl.RST_STREAM and sid == 1:
                raise AssertionError(f"stream reset: {payload!r}")
            if t == hl.HEADERS and sid == 1:
                block = payload
                if f & 0x8:  # PADDED
                    block = block[1:len(block) - block[0]]
                if f & 0x20:  # PRIORITY
                    block = block[5:]
                break
        status = h2_status(block)
        if status == 200:
            s.sendall(hl.frame(hl.DATA, 0, 1, lib.ws_frame(0x1, b"hello", mask=True)))
            got = b""
            for _ in range(1000):
                fr = r.next(timeout)
                assert fr is not None, "no echo"
                if fr[0] == hl.DATA and fr[2] == 1:
                    got += fr[3]
                    if len(got) >= 7:
                        break
            assert got == lib.ws_frame(0x1, b"hello"), got
        return status
    finally:
        s.close()


def h2_statuses(port: int, requests: list, *, ca: Path, source: str = "127.0.0.1", timeout: float = 10.0) -> list:
    """Several requests, one after the other, on ONE HTTP/2 connection (ALPN h2):
    each (hostname, path, headers dict); their statuses."""
    import hostile_lib as hl
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    s = tls_context(ca, None, ["h2"]).wrap_socket(raw)
    out = []
    try:
        s.sendall(hl.MAGIC + hl.settings())
        r = hl.FrameReader(s)
        for i, (hostname, path, hdrs) in enumerate(requests):
            sid = 1 + 2 * i
            fields = [(":method", "GET"), (":scheme", "https"), (":path", path), (":authority", hostname)]
            fields += [(k.lower(), v) for k, v in hdrs.items()]
            s.sendall(hl.headers(sid, fields, end_stream=True))
            status = None
            for _ in range(1000):
                fr = r.next(timeout)
                assert fr is not None, f"no answer on stream {sid}"
                t, f, fsid, payload = fr
                if t == hl.SETTINGS and not f & hl.ACK:
                    s.sendall(hl.frame(hl.SETTINGS, hl.ACK, 0))
                if fsid != sid:
                    continue
                if t == hl.HEADERS and status is None:
                    status = h2_status(payload)
                if t == hl.RST_STREAM or (t in (hl.HEADERS, hl.DATA) and f & hl.END_STREAM):
                    break
            out.append(status)
        return out
    finally:
        s.close()
