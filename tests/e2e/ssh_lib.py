"""Support for the TCP tunnel tests (issue 14): a real OpenSSH server started on
a loopback port with its own host key and authorized_keys, the ssh/scp command
lines that reach it through `fleet-connect` as ProxyCommand, and a small HTTP
CONNECT proxy (plain or TLS) that stands in for the gateway.

Everything listens on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import getpass
import os
import select
import shlex
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import e2e_lib as lib

SSHD = Path("/usr/sbin/sshd")


def fleet_connect_bin() -> Path:
    return Path(os.environ.get("RH_CONNECT") or (lib.bin_dir() / "fleet-connect")).resolve()


def have_openssh() -> bool:
    return SSHD.exists() and all(_which(t) for t in ("ssh", "scp", "ssh-keygen"))


def _which(tool: str) -> Optional[str]:
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d) / tool
        if p.exists() and os.access(p, os.X_OK):
            return str(p)
    return None


# --------------------------------------------------------------------------- sshd


@dataclass
class Sshd:
    proc: lib.Proc
    port: int
    dir: Path
    user: str
    client_key: Path
    known_hosts: Path

    def ssh_options(self, proxy_command: Optional[str] = None, alias: str = "dev1.example") -> list[str]:
        """Options for ssh and scp: this server's key only, no user configuration,
        the host key pinned under `alias` (the name the ProxyCommand is given)."""
        opts = ["-F", "/dev/null", "-i", str(self.client_key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlias={alias}",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=0"]
        if proxy_command:
            opts += ["-o", f"ProxyCommand={proxy_command}"]
        return opts


def start_sshd(pm: lib.ProcessManager, base: Path, name: str = "sshd") -> Sshd:
    """sshd -D -e -f CONFIG on a free loopback port: its own host key, an
    authorized_keys with a key made here, no PAM, SFTP inside sshd (scp uses it)."""
    base.mkdir(parents=True, exist_ok=True)
    host_key = base / "host_ed25519"
    client_key = base / "client_ed25519"
    for k in (host_key, client_key):
        if not k.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    auth = base / "authorized_keys"
    auth.write_text(client_key.with_suffix(".pub").read_text())
    auth.chmod(0o600)
    user = getpass.getuser()
    if os.geteuid() == 0:
        # sshd as root wants its privilege separation directory (the package's tmpfiles.d makes it at boot).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    last = ""
    for _ in range(3):
        port = lib.free_port()
        config = base / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {auth}",
            f"PidFile {base / 'sshd.pid'}",
            "UsePAM no",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            f"AllowUsers {user}",
            "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp",
            "MaxSessions 64",
            "MaxStartups 100:30:200",
            "LogLevel VERBOSE",
            "",
        ]))
        proc = pm.start(name, [str(SSHD), "-D", "-e", "-f", str(config)])
        state = lib.wait_until(lambda: "exited" if not proc.alive() else
                               ("ready" if "Server listening" in proc.log() and lib.port_open(port) else None),
                               lib.STARTUP_TIMEOUT, "sshd to listen")
        if state == "ready":
            known = base / "known_hosts"
            pub = host_key.with_suffix(".pub").read_text().split()
            # Pinned for every alias the tests use (HostKeyAlias names one of them).
            known.write_text("".join(f"{alias} {pub[0]} {pub[1]}\n" for alias in
                                     ("dev1.example", "dev2.example", "direct", "jump")))
            return Sshd(proc=proc, port=port, dir=base, user=user, client_key=client_key, known_hosts=known)
        last = proc.tail()
        proc.stop()
    raise AssertionError("sshd did not start:\n" + last)


def proxy_command(gateway: str, *, token_file: Optional[Path] = None, ca: Optional[Path] = None,
                  cert: Optional[Path] = None, key: Optional[Path] = None) -> str:
    """fleet-connect as ssh's ProxyCommand (%h %p filled in by ssh)."""
    parts = [str(fleet_connect_bin()), "%h", "%p", "--gateway", gateway]
    if token_file:
        parts += ["--token-file", str(token_file)]
    if cert and key:
        parts += ["--cert", str(cert), "--key", str(key)]
    if ca:
        parts += ["--ca", str(ca)]
    return " ".join(shlex.quote(p) for p in parts)


def ssh(sshd: Sshd, host: str, command: str, proxy: Optional[str], *, stdin=subprocess.DEVNULL,
        timeout: float = 120.0, port: int = 22) -> subprocess.CompletedProcess:
    args = ["ssh"] + sshd.ssh_options(proxy, alias=host) + ["-p", str(port), f"{sshd.user}@{host}", command]
    return subprocess.run(args, stdin=stdin, capture_output=True, timeout=timeout)


def scp(sshd: Sshd, src: str, dst: str, proxy: Optional[str], *, alias: str = "dev1.example",
        timeout: float = 300.0, port: int = 22) -> subprocess.CompletedProcess:
    args = ["scp", "-q", "-P", str(port)] + sshd.ssh_options(proxy, alias=alias) + [src, dst]
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


def file_sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def write_random_file(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return file_sha256(path)


# --------------------------------------------------------------------------- CONNECT proxy


class _Side:
    """The user's connection to the proxy, plain or TLS. TLS runs on memory BIOs
    (ssl.SSLObject) so that close_notify can be sent while still reading, as the
    gateway does on a half-close."""

    def __init__(self, sock: socket.socket, ctx: Optional[ssl.SSLContext]):
        self.sock = sock
        self.obj = None
        if ctx is not None:
            self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.obj = ctx.wrap_bio(self.inb, self.outb, server_side=True)
            deadline = time.monotonic() + 10
            while True:
                try:
                    self.obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    if time.monotonic() > deadline:
                        raise ConnectionError("TLS handshake timed out")
                    d = sock.recv(65536)
                    if not d:
                        raise ConnectionError("EOF in the TLS handshake")
                    self.inb.write(d)
            self._flush()

    def _flush(self):
        if self.obj is not None:
            d = self.outb.read()
            if d:
                self.sock.sendall(d)

    def read(self) -> tuple[bytes, bool]:
        """(bytes, end of data); blocks for the socket only when nothing is buffered
        (records that came with the handshake's last flight are decrypted first)."""
        if self.obj is not None:
            out, eof = self._decrypt(more=True)
            if out or eof:
                return out, eof
        d = self.sock.recv(65536)
        if self.obj is None:
            return d, not d
        if d:
            self.inb.write(d)
        else:
            self.inb.write_eof()
        return self._decrypt(more=bool(d))

    def _decrypt(self, more: bool) -> tuple[bytes, bool]:
        out = bytearray()
        while True:
            try:
                chunk = self.obj.read(65536)
                if not chunk:
                    return bytes(out), True
                out += chunk
            except ssl.SSLWantReadError:
                self._flush()
                return bytes(out), not more
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return bytes(out), True

    def send(self, data: bytes):
        if self.obj is None:
            self.sock.sendall(data)
        else:
            self.obj.write(data)
            self._flush()

    def finish_writing(self):
        if self.obj is not None:
            try:
                self.obj.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass
            self._flush()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class ConnectProxy:
    """A CONNECT-only HTTP/1.1 proxy in a thread, standing in for the gateway:
    checks `Authorization: Bearer <token>` (403 otherwise), maps the authority
    through `routes` ({"dev1.example:22": port}; 403 for an unknown one), answers
    502 when the port refuses, then relays bytes both ways with half-closes
    carried through (EOF one way while the other keeps flowing)."""

    def __init__(self, routes: dict, token: Optional[str], tls: Optional[tuple[Path, Path]] = None):
        self.routes = routes
        self.token = token
        self.ctx = None
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[str, Optional[str]]] = []
        self.errors: list[str] = []
        self.open_tunnels = 0
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.ctx else 'http'}://127.0.0.1:{self.port}"

    def close(self):
        self._stop = True
        try:
            self.listener.close()
        except OSError:
            pass

    def _accept(self):
        while not self._stop:
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    @staticmethod
    def _answer(side: _Side, status: int, reason: str, body: str = ""):
        b = body.encode()
        side.send(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(b)}\r\n"
                  f"Connection: close\r\n\r\n".encode() + b)
        side.finish_writing()

    def _serve(self, s: socket.socket):
        s.settimeout(30)
        up = None
        try:
            side = _Side(s, self.ctx)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d, eof = side.read()
                buf += d
                if eof or len(buf) > 8192:
                    return
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            fields = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
            auth = fields.get("authorization")
            with self._lock:
                self.requests.append((target, auth))
            if method != "CONNECT":
                return self._answer(side, 405, "Method Not Allowed", "CONNECT only\n")
            if fields.get("host") != target:
                return self._answer(side, 400, "Bad Request", "Host differs from the authority\n")
            if self.token is not None and auth != f"Bearer {self.token}":
                return self._answer(side, 403, "Forbidden", "no valid token for " + target + "\n")
            port = self.routes.get(target)
            if port is None:
                return self._answer(side, 403, "Forbidden", "no access to " + target + "\n")
            try:
                up = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError as e:
                return self._answer(side, 502, "Bad Gateway", f"the device's port refused: {e.strerror}\n")
            side.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with self._lock:
                self.open_tunnels += 1
            try:
                self._relay(side, up, rest)
            finally:
                with self._lock:
                    self.open_tunnels -= 1
        except Exception as e:  # noqa: BLE001 -- recorded for the test to show
            with self._lock:
                self.errors.append(repr(e))
        finally:
            if up is not None:
                up.close()
            s.close()

    @staticmethod
    def _relay(side: _Side, up: socket.socket, first: bytes):
        s = side.sock
        s.settimeout(None)
        up.settimeout(None)
        if first:
            up.sendall(first)
        user_open = device_open = True
        while user_open or device_open:
            rl = ([s] if user_open else []) + ([up] if device_open else [])
            r, _, _ = select.select(rl, [], [], 600)
            if not r:
                return
            if s in r:
                d, eof = side.read()
                if d:
                    up.sendall(d)
                if eof:
                    user_open = False
                    up.shutdown(socket.SHUT_WR)
            if up in r:
                d = up.recv(65536)
                if d:
                    side.send(d)
                else:
                    device_open = False
                    side.finish_writing()


def connect_status(port: int, authority: str, *, token: Optional[str] = None, ca: Optional[Path] = None,
                   timeout: float = 10.0) -> int:
    """The status a gateway answers to `CONNECT authority` (HTTPS when `ca` is given)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        if ca is not None:
            ctx = ssl.create_default_context(cafile=str(ca))
            ctx.check_hostname = False
            s = ctx.wrap_socket(s)
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        s.sendall((head + "\r\n").encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in buf and time.monotonic() < deadline:
            d = s.recv(4096)
            if not d:
                break
            buf += d
        line = buf.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) >= 2 and line[1].isdigit() else 0
    finally:
        s.close()
