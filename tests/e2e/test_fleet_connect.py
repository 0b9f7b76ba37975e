"""fleet-connect (issue 14) against a stand-in gateway: a small CONNECT proxy in
this process (plain HTTP or TLS with the test PKI's gateway certificate) in
front of a real OpenSSH server on a loopback port. Needs neither the agent nor
the gateway's CONNECT (tests/e2e/test_tcp_tunnel.py runs the whole chain).

- ssh runs a command with fleet-connect as ProxyCommand (plain and TLS)
- scp of a few MiB both ways, SHA-256 equal
- `ssh host cat < file` returns every byte and exits (stdin EOF through the tunnel)
- half-close in both orders without ssh, stdin/stdout as pipes or files
- refusals: 403 (bad token), 502 (port closed), a gateway certificate from another CA;
  exit status 1 and one line naming the status; bad options exit 2
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import e2e_lib as lib
import ssh_lib

pytestmark = pytest.mark.skipif(not ssh_lib.have_openssh(), reason="needs openssh-server and openssh-client")

TOKEN = "rht_test_token_for_fleet_connect"


@pytest.fixture(scope="module")
def fc_bin():
    b = ssh_lib.fleet_connect_bin()
    if not os.access(b, os.X_OK):
        pytest.fail(f"{b} not found (swift build --product fleet-connect, or set RH_CONNECT)", pytrace=False)
    return b


@pytest.fixture(scope="module")
def sshd(module_procs, tmp_path_factory):
    return ssh_lib.start_sshd(module_procs, tmp_path_factory.mktemp("sshd"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("token") / "token"
    p.write_text(TOKEN + "\n")
    p.chmod(0o600)
    return p


@pytest.fixture(scope="module")
def proxies(sshd, pki):
    closed = lib.closed_port()
    routes = {"dev1.example:22": sshd.port, "dev2.example:22": closed}
    plain = ssh_lib.ConnectProxy(routes, TOKEN)
    tls = ssh_lib.ConnectProxy(routes, TOKEN, tls=(pki.gateway_cert, pki.gateway_key))
    yield {"plain": plain, "tls": tls}
    plain.close()
    tls.close()


def proxy_cmd(proxies, which, token_file, pki, token=True) -> str:
    p = proxies[which]
    return ssh_lib.proxy_command(p.url, token_file=token_file if token else None,
                                 ca=pki.ca if which == "tls" else None)


def run_fc(fc_bin, args, *, stdin=subprocess.DEVNULL, timeout=60.0, input=None):
    return subprocess.run([str(fc_bin)] + [str(a) for a in args], stdin=None if input is not None else stdin,
                          input=input, capture_output=True, timeout=timeout)


# --------------------------------------------------------------------------- through ssh


@pytest.mark.parametrize("which", ["plain", "tls"])
def test_ssh_runs_a_command(fc_bin, sshd, proxies, token_file, pki, which):
    r = ssh_lib.ssh(sshd, "dev1.example", "echo hello from $(hostname) && echo err >&2 && exit 3",
                    proxy_cmd(proxies, which, token_file, pki))
    assert r.returncode == 3, r.stderr.decode(errors="replace")
    assert r.stdout.startswith(b"hello from "), r.stdout
    assert b"err" in r.stderr
    target, auth = proxies[which].requests[-1]
    assert target == "dev1.example:22"
    assert auth == f"Bearer {TOKEN}"
    assert not proxies[which].errors


def test_scp_both_ways(fc_bin, sshd, proxies, token_file, pki, tmp_path):
    proxy = proxy_cmd(proxies, "tls", token_file, pki)
    src = tmp_path / "up.bin"
    digest = ssh_lib.write_random_file(src, 6 * 1024 * 1024 + 17)
    remote = tmp_path / "remote.bin"
    r = ssh_lib.scp(sshd, str(src), f"{sshd.user}@dev1.example:{remote}", proxy)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert ssh_lib.file_sha256(remote) == digest
    back = tmp_path / "down.bin"
    r = ssh_lib.scp(sshd, f"{sshd.user}@dev1.example:{remote}", str(back), proxy)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert ssh_lib.file_sha256(back) == digest


@pytest.mark.parametrize("which", ["plain", "tls"])
def test_ssh_cat_returns_every_byte(fc_bin, sshd, proxies, token_file, pki, tmp_path, which):
    src = tmp_path / "in.bin"
    digest = ssh_lib.write_random_file(src, 3 * 1024 * 1024 + 5)
    with open(src, "rb") as f:
        r = ssh_lib.ssh(sshd, "dev1.example", "cat", proxy_cmd(proxies, which, token_file, pki), stdin=f)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert hashlib.sha256(r.stdout).hexdigest() == digest


def test_ssh_refused_names_the_status(fc_bin, sshd, proxies, pki, tmp_path):
    bad = tmp_path / "bad-token"
    bad.write_text("rht_wrong\n")
    r = ssh_lib.ssh(sshd, "dev1.example", "true", ssh_lib.proxy_command(proxies["tls"].url, token_file=bad, ca=pki.ca))
    assert r.returncode == 255
    assert b"403 Forbidden" in r.stderr, r.stderr


# --------------------------------------------------------------------------- fleet-connect alone


def test_refusals_exit_1_with_one_line(fc_bin, proxies, token_file, pki, tmp_path):
    bad = tmp_path / "bad-token"
    bad.write_text("rht_wrong\n")
    r = run_fc(fc_bin, ["dev1.example", 22, "--gateway", proxies["plain"].url, "--token-file", bad])
    assert r.returncode == 1
    line = r.stderr.decode()
    assert line.count("\n") == 1, line
    assert line == (f"fleet-connect: dev1.example:22 via {proxies['plain'].url}: "
                    "gateway answered 403 Forbidden: no valid token for dev1.example:22\n")
    assert r.stdout == b""

    r = run_fc(fc_bin, ["dev2.example", 22, "--gateway", proxies["tls"].url, "--token-file", token_file, "--ca", pki.ca])
    assert r.returncode == 1
    assert "gateway answered 502 Bad Gateway: the device's port refused" in r.stderr.decode(), r.stderr
    assert r.stderr.decode().count("\n") == 1

    r = run_fc(fc_bin, ["dev3.example", 22, "--gateway", proxies["plain"].url])
    assert r.returncode == 1
    assert "403 Forbidden" in r.stderr.decode()
    assert proxies["plain"].requests[-1] == ("dev3.example:22", None)


def test_gateway_certificate_from_another_ca(fc_bin, proxies, token_file, pki):
    r = run_fc(fc_bin, ["dev1.example", 22, "--gateway", proxies["tls"].url, "--token-file", token_file,
                        "--ca", pki.foreign_ca])
    assert r.returncode == 1
    msg = r.stderr.decode()
    assert "TLS handshake failed" in msg and msg.count("\n") == 1, msg


def test_nothing_listening(fc_bin, token_file):
    r = run_fc(fc_bin, ["dev1.example", 22, "--gateway", f"http://127.0.0.1:{lib.closed_port()}",
                        "--token-file", token_file])
    assert r.returncode == 1
    assert "Connection refused" in r.stderr.decode(), r.stderr


@pytest.mark.parametrize("args", [
    ["dev1", "22"],
    ["dev1", "--gateway", "https://gw"],
    ["dev1", "0", "--gateway", "https://gw"],
    ["dev1", "22", "--gateway", "http://192.0.2.1"],
    ["dev1", "22", "--gateway", "https://gw", "--cert", "c.pem"],
    ["dev1", "22", "--gateway", "https://gw", "--token-file", "/nonexistent/token"],
    ["dev1", "22", "--gateway", "https://gw", "--frobnicate"],
])
def test_bad_options_exit_2(fc_bin, args):
    r = run_fc(fc_bin, args)
    assert r.returncode == 2, (args, r.stderr)
    assert r.stderr.decode().startswith("fleet-connect: ") and r.stderr.decode().count("\n") == 1


def test_help_and_version(fc_bin):
    r = run_fc(fc_bin, ["--help"])
    assert r.returncode == 0 and b"ProxyCommand" in r.stderr
    r = run_fc(fc_bin, ["--version"])
    assert r.returncode == 0 and r.stderr.startswith(b"fleet-connect ")


class OneShotServer:
    """A TCP server for one connection on loopback, running `behave(conn)` in a thread."""

    def __init__(self, behave):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.result: dict = {}
        self.done = threading.Event()

        def run():
            try:
                c, _ = self.sock.accept()
                c.settimeout(60)
                with c:
                    behave(c, self.result)
            except Exception as e:  # noqa: BLE001
                self.result["error"] = repr(e)
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()

    def close(self):
        self.sock.close()


def read_to_eof(c, limit=1 << 30) -> bytes:
    out = bytearray()
    while len(out) < limit:
        d = c.recv(65536)
        if not d:
            break
        out += d
    return bytes(out)


@pytest.mark.parametrize("which", ["plain", "tls"])
@pytest.mark.parametrize("stdio", ["pipes", "files"])
def test_half_close_stdin_ends_first(fc_bin, proxies, token_file, pki, tmp_path, which, stdio):
    """stdin's EOF reaches the device as EOF; the device answers after it, and
    every byte of that answer comes out before fleet-connect exits 0."""
    payload = os.urandom(2 * 1024 * 1024 + 3)
    answer_tail = os.urandom(1024 * 1024)

    def behave(c, res):
        got = read_to_eof(c)
        res["sha"] = hashlib.sha256(got).hexdigest()
        c.sendall(res["sha"].encode() + b"\n" + answer_tail)

    srv = OneShotServer(behave)
    proxies[which].routes["echo.example:7"] = srv.port
    try:
        args = ["echo.example", 7, "--gateway", proxies[which].url, "--token-file", token_file]
        if which == "tls":
            args += ["--ca", pki.ca]
        if stdio == "pipes":
            r = run_fc(fc_bin, args, input=payload)
            out = r.stdout
        else:
            inp, outp = tmp_path / "in", tmp_path / "out"
            inp.write_bytes(payload)
            with open(inp, "rb") as fi, open(outp, "wb") as fo:
                r = subprocess.run([str(fc_bin)] + [str(a) for a in args], stdin=fi, stdout=fo,
                                   stderr=subprocess.PIPE, timeout=60)
            out = outp.read_bytes()
        assert r.returncode == 0, r.stderr
        assert srv.done.wait(10) and "error" not in srv.result, srv.result
        assert out == hashlib.sha256(payload).hexdigest().encode() + b"\n" + answer_tail
    finally:
        srv.close()


@pytest.mark.parametrize("which", ["plain", "tls"])
def test_half_close_device_ends_first(fc_bin, proxies, token_file, pki, which):
    """The device's EOF closes fleet-connect's stdout while stdin keeps flowing to it."""
    payload = os.urandom(1024 * 1024 + 11)

    def behave(c, res):
        c.sendall(b"hello, then EOF\n")
        c.shutdown(socket.SHUT_WR)
        res["got"] = read_to_eof(c)

    srv = OneShotServer(behave)
    proxies[which].routes["sink.example:9"] = srv.port
    try:
        args = ["sink.example", 9, "--gateway", proxies[which].url, "--token-file", token_file]
        if which == "tls":
            args += ["--ca", pki.ca]
        p = subprocess.Popen([str(fc_bin)] + [str(a) for a in args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            # stdout ends (EOF) while our end of stdin is still open.
            out = p.stdout.read()
            assert out == b"hello, then EOF\n"
            assert p.poll() is None, "fleet-connect exited before its stdin ended"
            p.stdin.write(payload)
            p.stdin.close()
            assert p.wait(timeout=30) == 0, p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert srv.done.wait(10) and "error" not in srv.result, srv.result
        assert srv.result["got"] == payload
    finally:
        srv.close()


def test_idle_tunnel_then_bytes(fc_bin, proxies, token_file):
    """Nothing in either direction for a while, then both ways: no timeout of fleet-connect's ends it."""
    def behave(c, res):
        d = c.recv(16)
        res["first"] = d
        c.sendall(b"pong:" + d)
        res["rest"] = read_to_eof(c)

    srv = OneShotServer(behave)
    proxies["plain"].routes["idle.example:5"] = srv.port
    try:
        p = subprocess.Popen([str(fc_bin), "idle.example", "5", "--gateway", proxies["plain"].url,
                              "--token-file", str(token_file)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            lib.wait_until(lambda: proxies["plain"].open_tunnels > 0, 10, "the tunnel to open")
            time.sleep(3)  # idle on purpose: the thing under test is silence
            p.stdin.write(b"ping")
            p.stdin.flush()
            assert p.stdout.read(9) == b"pong:ping"
            p.stdin.close()
            assert p.wait(timeout=20) == 0, p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    finally:
        srv.close()


def test_terminal_stdin_and_stdout(fc_bin, proxies, token_file):
    """stdin and stdout one terminal (a pty): bytes both ways, ^D ends stdin, and
    the terminal is blocking again afterwards (its mode is shared with the shell)."""
    import fcntl
    import pty

    def behave(c, res):
        res["got"] = read_to_eof(c)
        c.sendall(b"bye\n")

    srv = OneShotServer(behave)
    proxies["plain"].routes["tty.example:3"] = srv.port
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([str(fc_bin), "tty.example", "3", "--gateway", proxies["plain"].url,
                              "--token-file", str(token_file)], stdin=slave, stdout=slave, stderr=subprocess.PIPE)
        lib.wait_until(lambda: proxies["plain"].open_tunnels > 0 or p.poll() is not None, 10, "the tunnel to open")
        os.write(master, b"typed line\n\x04")  # a line, then ^D: end of input in canonical mode
        assert p.wait(timeout=20) == 0, p.stderr.read()
        assert srv.done.wait(10) and srv.result.get("got") == b"typed line\n", srv.result
        out = b""
        deadline = time.monotonic() + 5
        while b"bye" not in out and time.monotonic() < deadline:
            out += os.read(master, 4096)
        assert b"bye" in out, out
        assert fcntl.fcntl(slave, fcntl.F_GETFL) & os.O_NONBLOCK == 0, "the terminal was left non-blocking"
    finally:
        os.close(master)
        os.close(slave)
        srv.close()
