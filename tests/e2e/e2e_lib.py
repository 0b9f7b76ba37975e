"""Support code for the loopback end-to-end tests: paths to the programs, free
ports, bounded waits, a process manager with logs in files, the local HTTP API a
device agent forwards to, and small HTTP client helpers (http.client / socket /
ssl only).

Everything here runs on 127.0.0.1 and every wait has a deadline.
"""

from __future__ import annotations

import functools
import base64
import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable, Optional

REPO = Path(__file__).resolve().parents[2]

# Default timeouts (seconds).
HTTP_TIMEOUT = 15.0
BIG_TIMEOUT = 60.0
STARTUP_TIMEOUT = 15.0
DEVICE_TIMEOUT = 20.0


# --------------------------------------------------------------------------- paths


def bin_dir() -> Path:
    return Path(os.environ.get("RH_BIN") or (REPO / ".build" / "debug")).resolve()


def gateway_bin() -> Path:
    return bin_dir() / "fleet-gateway"


def agent_bin() -> Path:
    return Path(os.environ.get("RH_AGENT") or (bin_dir() / "device-agent")).resolve()


def child_env(extra: Optional[dict] = None) -> dict:
    """Environment for the programs: logs as plain lines on stderr (never the
    journal), no systemd notification socket."""
    env = dict(os.environ)
    for k in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"):
        env.pop(k, None)
    env["REVERSEHTTP_LOG_STDERR"] = "1"
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------- waiting


def wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Calls pred until it returns a truthy value (returned) or `timeout` passes
    (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (OSError, http.client.HTTPException) as e:  # not up yet
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


def free_port() -> int:
    # Free on every address, not only loopback: some tests listen on 0.0.0.0.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port with (very probably) nothing listening on it."""
    return free_port()


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# --------------------------------------------------------------------------- processes

_LIVE: list["Proc"] = []
_LIVE_LOCK = threading.Lock()


def live_procs() -> list["Proc"]:
    with _LIVE_LOCK:
        return list(_LIVE)


class Proc:
    def __init__(self, name: str, args: list[str], log_path: Path, env: Optional[dict] = None,
                 cwd: Optional[Path] = None):
        self.name = name
        self.args = [str(a) for a in args]
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env or child_env(), cwd=cwd)
        with _LIVE_LOCK:
            _LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_log(self, pattern: str, timeout: float = STARTUP_TIMEOUT, regex: bool = False) -> str:
        """Waits until the log contains `pattern` (substring, or regex); returns the matching line."""
        rx = re.compile(pattern) if regex else None

        def find():
            for line in self.log().splitlines():
                if (rx.search(line) if rx else pattern in line):
                    return line
            return None

        try:
            return wait_until(find, timeout, f"{self.name} to log {pattern!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- {self.name} log (alive={self.alive()}):\n{self.tail()}") from None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Only this process, by its pid."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    self.popen.kill()
                except ProcessLookupError:
                    pass
                try:
                    self.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self._close_log()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._close_log()

    def _close_log(self):
        try:
            self._log.close()
        except OSError:
            pass
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)

    def __repr__(self):
        return f"<Proc {self.name} pid={self.pid} alive={self.alive()}>"


class ProcessManager:
    """Starts processes with their output in log files; stop_all() ends every one
    of them (SIGTERM, then SIGKILL after a bounded wait)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self._n = 0

    def start(self, name: str, args: list, env: Optional[dict] = None, cwd: Optional[Path] = None) -> Proc:
        self._n += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        p = Proc(name, args, self.log_dir / f"{self._n:02d}-{safe}.log", env=env, cwd=cwd)
        self.procs.append(p)
        return p

    def stop_all(self, grace: float = 5.0) -> None:
        # Signal everything first, then wait: teardown stays short.
        for p in self.procs:
            if p.alive():
                try:
                    p.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in self.procs:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                p.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            if p.alive():
                p.kill()
            else:
                p._close_log()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, in seconds (Linux /proc)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


class PeakRSS:
    """Peak VmRSS (MiB) of some pids ({name: pid}), sampled every 20 ms in a thread."""

    def __init__(self, pids: dict):
        self.pids = {k: v for k, v in pids.items() if v}
        self.peak = {k: 0.0 for k in self.pids}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _sample(self):
        for k, pid in self.pids.items():
            try:
                self.peak[k] = max(self.peak[k], rss_mib(pid))
            except OSError:
                pass

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.02)

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        self._sample()
        return self.peak


def rss_mib(pid: int) -> float:
    """Resident set size of a process, in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise OSError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------- PKI


@dataclass
class PKI:
    dir: Path
    foreign_dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def gateway_cert(self) -> Path:
        return self.dir / "gateway.crt"

    @property
    def gateway_key(self) -> Path:
        return self.dir / "gateway.key"

    def device_cert(self, name: str) -> Path:
        return self.dir / "devices" / f"{name}.crt"

    def device_key(self, name: str) -> Path:
        return self.dir / "devices" / f"{name}.key"

    def device_pem(self, name: str) -> Path:
        return self.dir / "devices" / f"{name}.pem"

    @property
    def wrong_name_cert(self) -> Path:
        return self.dir / "servers" / "other.example.crt"

    @property
    def wrong_name_key(self) -> Path:
        return self.dir / "servers" / "other.example.key"

    @property
    def foreign_ca(self) -> Path:
        return self.foreign_dir / "ca.crt"

    def foreign_device_cert(self, name: str) -> Path:
        return self.foreign_dir / "devices" / f"{name}.crt"

    def foreign_device_key(self, name: str) -> Path:
        return self.foreign_dir / "devices" / f"{name}.key"


def run_pki(args: list) -> None:
    cmd = [str(gateway_bin()), "pki"] + [str(a) for a in args]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env=child_env())
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr.decode(errors='replace')}")


def gateway_cmd(*args) -> str:
    """Runs `fleet-gateway ARGS...` (pki, token commands); its standard output, stripped. Fails on an error."""
    r = subprocess.run([str(gateway_bin())] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60, env=child_env(), text=True)
    assert r.returncode == 0, f"fleet-gateway {args}: {r.stderr}"
    return r.stdout.strip()


def make_est_pki(d: Path) -> PKI:
    """A two-tier PKI (`pki init --issuing-ca`) with its CRL, for a gateway with --pki-dir."""
    gateway_cmd("pki", "init", d, "--name", "gw.example", "--san", "127.0.0.1", "--issuing-ca")
    gateway_cmd("pki", "crl", d)
    return PKI(dir=d, foreign_dir=d)


def make_pki(base: Path) -> PKI:
    main = base / "main"
    foreign = base / "foreign"
    run_pki(["init", main, "--name", "gw.example", "--san", "127.0.0.1"])
    run_pki(["issue", main, "dev1.example"])
    run_pki(["issue", main, "dev2.example"])
    run_pki(["issue-server", main, "other.example", "--san", "127.0.0.1"])
    run_pki(["init", foreign, "--name", "gw.example", "--san", "127.0.0.1"])
    run_pki(["issue", foreign, "dev1.example"])
    return PKI(dir=main, foreign_dir=foreign)


# --------------------------------------------------------------------------- programs


@dataclass
class Gateway:
    proc: Proc
    device_port: int
    public_port: int
    https: bool = False
    admin_port: int = 0

    def log(self) -> str:
        return self.proc.log()


def start_gateway(pm: ProcessManager, pki: Optional[PKI], *, extra: Iterable = (), cert: Optional[Path] = None,
                  key: Optional[Path] = None, plaintext_name: Optional[str] = None, public_tls: bool = False,
                  name: str = "gateway", log_level: str = "debug", attempts: int = 3) -> Gateway:
    """Starts fleet-gateway on free ports; ready once it logged its listeners and
    the public port accepts connections. Retries with other ports if it exits early
    (a port taken between our probe and its bind)."""
    last_log = ""
    for attempt in range(attempts):
        dport, pport, aport = free_port(), free_port(), free_port()
        while len({dport, pport, aport}) < 3:
            pport, aport = free_port(), free_port()
        args = [gateway_bin(), "--listen-devices", f"127.0.0.1:{dport}", "--listen-public", f"127.0.0.1:{pport}",
                "--listen-admin", f"127.0.0.1:{aport}", "--log-level", log_level]
        if plaintext_name is not None:
            args += ["--plaintext-devices", "--plaintext-device-name", plaintext_name]
        else:
            assert pki is not None
            args += ["--ca", pki.ca, "--cert", cert or pki.gateway_cert, "--key", key or pki.gateway_key]
        if public_tls:
            assert pki is not None
            args += ["--public-cert", pki.gateway_cert, "--public-key", pki.gateway_key]
        args += list(extra)
        proc = pm.start(f"{name}", args)

        def ready():
            if not proc.alive():
                return "exited"
            if "devices on" in proc.log() and port_open(pport):
                return "ready"
            return None

        state = wait_until(ready, STARTUP_TIMEOUT, f"{name} to listen")
        if state == "ready":
            return Gateway(proc=proc, device_port=dport, public_port=pport, https=public_tls, admin_port=aport)
        last_log = proc.tail()
        proc.stop()
    raise AssertionError(f"{name} did not start after {attempts} attempts; last log:\n{last_log}")


def start_agent(pm: ProcessManager, gw_port: int, *, pki: Optional[PKI] = None, device: str = "dev1.example",
                local_port: int, cert: Optional[Path] = None, key: Optional[Path] = None, ca: Optional[Path] = None,
                server_name: Optional[str] = "gw.example", connections: int = 2, plaintext: bool = False,
                extra: Iterable = (), name: Optional[str] = None, log_level: str = "debug") -> Proc:
    args = [agent_bin(), "--gateway", f"127.0.0.1:{gw_port}", "--local", f"127.0.0.1:{local_port}",
            "--connections", str(connections), "--name", name or device, "--log-level", log_level]
    if plaintext:
        args += ["--plaintext"]
    else:
        assert pki is not None
        args += ["--ca", ca or pki.ca, "--cert", cert or pki.device_cert(device),
                 "--key", key or pki.device_key(device)]
        if server_name:
            args += ["--server-name", server_name]
    args += list(extra)
    return pm.start(f"agent-{name or device}", args)


# --------------------------------------------------------------------------- HTTP client


@dataclass
class Resp:
    status: int
    headers: list  # [(name, value)] as received
    body: bytes
    reason: str = ""

    def header(self, name: str) -> Optional[str]:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def header_names(self) -> set:
        return {n.lower() for n, _ in self.headers}

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def request(port: int, method: str, path: str, host: Optional[str], body=None, headers: Optional[dict] = None,
            timeout: float = HTTP_TIMEOUT, conn: Optional[http.client.HTTPConnection] = None,
            encode_chunked: bool = False) -> Resp:
    """One request. With `conn`, uses (and leaves open) that connection."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {}
        if host is not None:
            h["Host"] = host
        h.update(headers or {})
        c.request(method, path, body=body, headers=h, encode_chunked=encode_chunked)
        r = c.getresponse()
        data = r.read()
        return Resp(r.status, list(r.getheaders()), data, r.reason)
    finally:
        if own:
            c.close()


def wait_device(gw: Gateway, host: str, timeout: float = DEVICE_TIMEOUT, path: str = "/device",
                ssl_ctx: Optional[ssl.SSLContext] = None) -> Resp:
    """Polls the public port with Host `host` until the answer is not 503."""
    last: list = [None]

    def probe():
        if ssl_ctx is not None:
            c = http.client.HTTPSConnection("127.0.0.1", gw.public_port, timeout=5, context=ssl_ctx)
            r = request(gw.public_port, "GET", path, host, conn=c, timeout=5)
            c.close()
        else:
            r = request(gw.public_port, "GET", path, host, timeout=5)
        last[0] = r
        return r if r.status != 503 else None

    try:
        return wait_until(probe, timeout, f"device {host} to answer through the gateway", interval=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}; last response: {last[0]!r}\n--- gateway log:\n{gw.proc.tail()}") from None


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, until_close: bool = True) -> tuple[bytes, bool]:
    """Sends `data` on a fresh socket and reads until the peer closes (or the
    deadline). Returns (bytes received, peer closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_until_close(s, timeout)


def read_until_close(s: socket.socket, timeout: float) -> tuple[bytes, bool]:
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return buf, False
        s.settimeout(remaining)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return buf, False
        except ConnectionResetError:
            return buf, True
        if not chunk:
            return buf, True
        buf += chunk


def parse_responses(data: bytes) -> list[tuple[int, dict, bytes]]:
    """Splits a byte stream into HTTP/1.1 responses (Content-Length or chunked
    framing only). Returns [(status, {lower name: value}, body)]."""
    out = []
    i = 0
    while i < len(data):
        end = data.find(b"\r\n\r\n", i)
        if end < 0:
            raise ValueError(f"incomplete head at {i}: {data[i:i+200]!r}")
        head = data[i:end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        hdrs = {}
        for line in head[1:]:
            n, _, v = line.partition(":")
            hdrs[n.strip().lower()] = v.strip()
        i = end + 4
        if "content-length" in hdrs:
            n = int(hdrs["content-length"])
            body = data[i:i + n]
            i += n
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                le = data.index(b"\r\n", i)
                size = int(data[i:le].split(b";")[0], 16)
                i = le + 2
                if size == 0:
                    te = data.index(b"\r\n", i)
                    while te != i:  # trailers
                        i = te + 2
                        te = data.index(b"\r\n", i)
                    i += 2
                    break
                body += data[i:i + size]
                i += size + 2
        else:
            body = data[i:]
            i = len(data)
        out.append((status, hdrs, body))
    return out


# --------------------------------------------------------------------------- content


@functools.lru_cache(maxsize=8)
def det_bytes(n: int) -> bytes:
    """n deterministic pseudo-random bytes (same n -> same bytes, in every process)."""
    return random.Random(0x5EED_0000 + n).randbytes(n)


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------- local API


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode: int, payload: bytes, mask: bool = False) -> bytes:
    """One final WebSocket frame; clients mask (RFC 6455 §5.3), servers do not."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mbit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_read_frame(f):
    """(opcode, payload) of the next frame from a file-like object; None at EOF."""
    h = f.read(2)
    if len(h) < 2:
        return None
    opcode, n, masked = h[0] & 0x0F, h[1] & 0x7F, h[1] & 0x80
    if n == 126:
        n = int.from_bytes(f.read(2), "big")
    elif n == 127:
        n = int.from_bytes(f.read(8), "big")
    key = f.read(4) if masked else b""
    data = f.read(n)
    if masked:
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return opcode, data


class _ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-local-api/1"
    server: "LocalAPI"

    def log_message(self, fmt, *args):  # quiet; count instead
        pass

    def send_error(self, code, message=None, explain=None):
        # A request the agent garbled (a stray chunk, a bad request line) shows up here.
        with self.server._lock:
            self.server.protocol_errors += 1
        super().send_error(code, message, explain)

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, OSError, ValueError):
            self.close_connection = True

    # --- request body

    def _iter_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("EOF in chunk size")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, 1 << 20))
                    if not piece:
                        raise ConnectionError("EOF in chunk")
                    left -= len(piece)
                    yield piece
                self.rfile.readline(3)
            return
        cl = self.headers.get("Content-Length")
        if cl:
            left = int(cl)
            while left:
                piece = self.rfile.read(min(left, 1 << 20))
                if not piece:
                    raise ConnectionError("EOF in body")
                left -= len(piece)
                yield piece

    def _digest_body(self) -> tuple[str, int]:
        h = hashlib.sha256()
        n = 0
        for piece in self._iter_body():
            h.update(piece)
            n += len(piece)
        return h.hexdigest(), n

    # --- responses

    def _send(self, status: int, body: bytes, ctype: str = "text/plain", extra: Optional[list] = None,
              head_only: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("X-Device", self.server.device)
        for n, v in extra or []:
            self.send_header(n, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only and body:
            self.wfile.write(body)

    def _dispatch(self, head_only: bool = False):
        self.server.count_request(self)
        try:
            self._route(head_only)
        finally:
            with self.server._lock:
                self.server.active -= 1

    def _route(self, head_only: bool):
        path, _, qs = self.path.partition("?")
        query = urllib.parse.parse_qs(qs)
        dev = self.server.device
        if path == "/device":
            self._digest_body()
            return self._send(200, dev.encode(), head_only=head_only)
        if path == "/page":  # a device's web page (the browser test)
            self._digest_body()
            page = (f"<!doctype html><html><head><title>{dev}</title></head>"
                    f"<body><h1 id=\"device\">device page of {dev}</h1></body></html>").encode()
            return self._send(200, page, "text/html; charset=utf-8", head_only=head_only)
        if path == "/echo":
            digest, n = self._digest_body()
            hdr: dict = {}
            for k, v in self.headers.items():
                k = k.lower()
                hdr[k] = v if k not in hdr else hdr[k] + ", " + v
            doc = {"device": dev, "method": self.command, "path": self.path, "version": self.request_version,
                   "headers": hdr, "header_list": [[k, v] for k, v in self.headers.items()],
                   "body_sha256": digest, "body_len": n}
            return self._send(200, json.dumps(doc).encode(), "application/json", head_only=head_only)
        if path == "/mirror":  # the request body back, as it came (integrity through the tunnel)
            data = b"".join(self._iter_body())
            self.send_response(200)
            self.send_header("X-Device", dev)
            self.send_header("X-Body-Sha256", hashlib.sha256(data).hexdigest())
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            mv = memoryview(data)
            for off in range(0, len(data), 256 * 1024):
                self.wfile.write(mv[off:off + 256 * 1024])
            return
        if path == "/vanish":  # reads the request, then closes without an answer (a crash)
            self._digest_body()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if path == "/upload":
            digest, n = self._digest_body()
            doc = {"device": dev, "sha256": digest, "length": n,
                   "chunked": "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()}
            return self._send(200, json.dumps(doc).encode(), "application/json")
        m = re.fullmatch(r"/bytes/(\d+)", path)
        if m:
            self._digest_body()
            data = det_bytes(int(m.group(1)))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("X-Device", dev)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head_only:
                mv = memoryview(data)
                for off in range(0, len(data), 256 * 1024):
                    self.wfile.write(mv[off:off + 256 * 1024])
            return
        m = re.fullmatch(r"/chunked/(\d+)", path)
        if m:
            self._digest_body()
            data = det_bytes(int(m.group(1)))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("X-Device", dev)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if head_only:
                return
            mv = memoryview(data)
            off = 0
            sizes = [1, 7, 1000, 4096, 65536, 100_000, 262_144]  # varied chunk sizes
            k = 0
            while off < len(data):
                n = min(sizes[k % len(sizes)], len(data) - off)
                k += 1
                self.wfile.write(b"%x\r\n" % n + bytes(mv[off:off + n]) + b"\r\n")
                off += n
            self.wfile.write(b"0\r\n\r\n")
            return
        m = re.fullmatch(r"/sleep/(\d+)", path)
        if m:
            self._digest_body()
            time.sleep(int(m.group(1)) / 1000.0)
            return self._send(200, b"slept\n")
        m = re.fullmatch(r"/status/(\d+)", path)
        if m:
            self._digest_body()
            st = int(m.group(1))
            if st in (204, 304):
                self.send_response(st)
                self.send_header("X-Device", dev)
                self.end_headers()
                return
            return self._send(st, f"status {st}\n".encode())
        if path == "/trailers":  # a chunked response ending with trailer fields
            self._digest_body()
            self.send_response(200)
            self.send_header("X-Device", dev)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n0\r\nX-Checksum: sha256-abc\r\n\r\n")
            return
        if path == "/ws":  # a WebSocket echo (RFC 6455), as device UIs use them
            return self._websocket_echo()
        m = re.fullmatch(r"/early/(\d+)", path)
        if m:  # answers at once, never reading the request body (413, 401 ...)
            self.close_connection = True
            return self._send(int(m.group(1)), b"answered early\n", extra=[("Connection", "close")])
        m = re.fullmatch(r"/drip/(\d+)/(\d+)", path)
        if m:  # N bytes, one every MS milliseconds: a slow stream, not a slow answer
            self._digest_body()
            n, ms = int(m.group(1)), int(m.group(2))
            self.send_response(200)
            self.send_header("X-Device", dev)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            for _ in range(n):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(ms / 1000.0)
            return
        if path == "/garbage":
            self._digest_body()
            self.wfile.write(b"NOT HTTP\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if path in ("/truncated-cl", "/truncated-chunked"):
            # Announces 100000 bytes (Content-Length or chunked), sends half, waits
            # ?hold=MS (so the head is already on its way to the user), then closes.
            self._digest_body()
            self.send_response(200)
            self.send_header("X-Device", dev)
            if path == "/truncated-cl":
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(det_bytes(100000)[:50000])
            else:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"%x\r\n" % 50000 + det_bytes(100000)[:50000] + b"\r\n")
            self.wfile.flush()
            time.sleep(int(query.get("hold", ["0"])[0]) / 1000.0)
            self.close_connection = True
            return
        m = re.fullmatch(r"/zeros/(\d+)", path)
        if m:  # N zero bytes, cheap to produce (for flow-control / memory tests)
            self._digest_body()
            n = int(m.group(1))
            self.send_response(200)
            self.send_header("X-Device", dev)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = bytes(1 << 20)
            while n > 0:
                k = min(n, len(block))
                self.wfile.write(block[:k])
                n -= k
            return
        if path == "/health":
            self._digest_body()
            self.server.health_checks += 1
            return self._send(200, b"ok\n") if self.server.healthy else self._send(500, b"failing\n")
        if path == "/http10-until-close":  # HTTP/1.0 response, no length: body ends at close
            self._digest_body()
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Device: " + dev.encode() + b"\r\n\r\n" + det_bytes(123457))
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/cl-and-te-response":  # ambiguous framing: must not be passed on as valid
            self._digest_body()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\n0\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/cookies":
            self._digest_body()
            return self._send(200, json.dumps({"cookie": self.headers.get_all("Cookie")}).encode(),
                              "application/json", extra=[("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"),
                                                         ("X-Multi", "one"), ("X-Multi", "two")])
        if path == "/early-hints":  # an interim 103 before the final response
            self._digest_body()
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            return self._send(200, b"after hints\n")
        if path == "/reflect":  # X-Reflect-* request fields back as response fields, their bytes as they came
            self._digest_body()
            got = [(k, v) for k, v in self.headers.items() if k.lower().startswith("x-reflect-")]
            # http.server decodes field bytes as Latin-1 and send_header encodes them so: bytes in, same bytes out.
            doc = [[k, v.encode("latin-1").hex()] for k, v in got]
            return self._send(200, json.dumps(doc).encode(), "application/json", extra=got)
        if path == "/hop-response":
            self._digest_body()
            return self._send(200, b"hop\n", extra=[("Connection", "X-Resp-Hop"), ("X-Resp-Hop", "secret"),
                                                    ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
                                                    ("X-End-To-End", "kept")])
        self._digest_body()
        return self._send(404, b"no such path\n")

    def _websocket_echo(self):
        key = self.headers.get("Sec-WebSocket-Key")
        if (self.headers.get("Upgrade", "").lower() != "websocket" or not key
                or "upgrade" not in self.headers.get("Connection", "").lower()):
            return self._send(400, b"not a websocket handshake\n")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        proto = self.headers.get("Sec-WebSocket-Protocol")
        if proto:
            self.send_header("Sec-WebSocket-Protocol", proto.split(",")[0].strip())
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            frame = ws_read_frame(self.rfile)
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 0x8:
                self.wfile.write(ws_frame(0x8, payload))
                self.wfile.flush()
                return
            if opcode == 0x9:
                self.wfile.write(ws_frame(0xA, payload))
            else:
                self.wfile.write(ws_frame(opcode, payload))
            self.wfile.flush()

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch(head_only=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET


class LocalAPI(ThreadingHTTPServer):
    """The device's local HTTP API, on 127.0.0.1:<free port>, in a thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, device: str, port: int = 0):
        super().__init__(("127.0.0.1", port), _ApiHandler)
        self.device = device
        self.requests = 0
        # X-Request-Id of every non-idempotent request that reached the API (duplicates show up as counts > 1),
        # and the requests in progress now and at most.
        self.request_ids: dict[str, int] = {}
        self.active = 0
        self.max_active = 0
        self.protocol_errors = 0
        self.healthy = True
        self.health_checks = 0
        self.connections: set = set()
        self.last_headers: Optional[dict] = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"api-{device}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def count_request(self, h: BaseHTTPRequestHandler):
        with self._lock:
            self.requests += 1
            self.connections.add(h.client_address)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            rid = h.headers.get("X-Request-Id")
            if rid and h.command not in ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"):
                self.request_ids[rid] = self.request_ids.get(rid, 0) + 1

    def handle_error(self, request, client_address):  # broken pipes after 504/resets: expected
        pass

    def close(self):
        self.shutdown()
        self.server_close()
