"""A local API's leftovers must not reach the next user (issue 12, findings 2 and 13).

The agent keeps connections to the local API alive and shares them between
requests, which may be different users'. Here the local API is hostile (a raw
socket server): it answers 101 to a plain GET and keeps writing, sends a body
to HEAD or bytes after a complete response, or answers with
`Transfer-Encoding: gzip`. With `local_max_connections` 1, user A asks first,
then user B asks for `/honest`: B must get exactly the honest answer, never A's
leftovers (here a response carrying A's cookie). Runs against either agent
(RH_AGENT). The same cases, byte by byte, are in
Tests/EngineTests/LocalReuseTests.swift.
"""

from __future__ import annotations

import gzip
import os
import signal
import socket
import threading

import pytest

import e2e_lib as lib

HOST = "dev1.example"
SECRET = b"victim-secret"
LEFTOVER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nSet-Cookie: session=victim\r\n\r\n%s" % (len(SECRET), SECRET)
HONEST = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest"
WAIT = 10.0


class HostileAPI:
    """Raw-socket local API, one thread per connection, requests (no bodies) in order:
    /honest   a clean answer;
    /switch   101 to a plain GET, stale bytes after it, and the same stale response
              to whatever it reads later (the "new protocol");
    /late     a clean answer (a head only to HEAD), then, once `spill` is set, LEFTOVER
              on the same connection: the body of the HEAD, or bytes after the response;
    /gzip     Transfer-Encoding: gzip, delimited by closing the connection."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.spill = threading.Event()
        self.spilled = threading.Event()
        self.late_peer_port = 0  # the agent's port on the /late connection
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection number, method, path)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        n = 0
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            n += 1
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int):
        conn.settimeout(30)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                method, path = head.split(b" ")[:2]
                self.requests.append((n, method, path))
                if path == b"/honest":
                    conn.sendall(HONEST)
                elif path == b"/switch":
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: stale\r\nConnection: Upgrade\r\n\r\n"
                                 + LEFTOVER)
                    while conn.recv(65536):
                        conn.sendall(LEFTOVER)
                    return
                elif path == b"/late":
                    if method == b"HEAD":
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LEFTOVER))
                    else:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    self.late_peer_port = conn.getpeername()[1]
                    if not self.spill.wait(WAIT):
                        return
                    conn.sendall(LEFTOVER)
                    self.spilled.set()
                elif path == b"/gzip":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + gzip.compress(SECRET))
                    return
                else:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self.closed = True
        self.sock.close()


def rx_queue(local_port: int, remote_port: int) -> int:
    """Bytes waiting unread in the receive queue of the IPv4 TCP socket
    127.0.0.1:local_port -> 127.0.0.1:remote_port (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
                return int(queues.split(":")[1], 16)
    return 0


def agent_gateway_port(gateway_device_port: int) -> int:
    """The agent's port on its (one) connection to the gateway's device listener."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == gateway_device_port and fields[3] == "01":  # ESTABLISHED
                return int(fields[1].split(":")[1], 16)
    return 0


@pytest.fixture
def env(procs, pki):
    api = HostileAPI()
    gw = lib.start_gateway(procs, pki, log_level="info", extra=["--check-interval-ms", "0"])
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device=HOST, local_port=api.port, connections=1,
                            log_level="info", extra=["--local-max-connections", "1", "--idle-ping-ms", "0"])
    assert lib.wait_device(gw, HOST, path="/honest").body == b"honest"
    yield gw, agent, api
    api.close()


def honest_for_b(gw):
    r = lib.request(gw.public_port, "GET", "/honest", HOST, timeout=WAIT)
    assert SECRET not in r.body and r.header("set-cookie") is None, ("user B got user A's leftovers", r)
    assert (r.status, r.body) == (200, b"honest"), r
    return r


def test_101_to_a_plain_get_is_502_and_its_connection_is_never_reused(env):
    gw, _, _ = env
    r = lib.request(gw.public_port, "GET", "/switch", HOST, timeout=WAIT)
    assert r.status == 502 and SECRET not in r.body, r
    honest_for_b(gw)
    honest_for_b(gw)


def test_transfer_coding_other_than_chunked_is_502_not_silently_decoded_bytes(env):
    gw, _, _ = env
    r = lib.request(gw.public_port, "GET", "/gzip", HOST, timeout=WAIT)
    assert r.status == 502 and SECRET not in r.body and b"\x1f\x8b" not in r.body, r
    honest_for_b(gw)


@pytest.mark.parametrize("method", ["HEAD", "GET"], ids=["body-after-HEAD", "bytes-after-a-complete-response"])
def test_leftovers_the_agent_has_not_read_yet_do_not_reach_the_next_user(env, method):
    """A's answer is clean; then, while the agent is not looking (stopped), B's
    request reaches it first and A's leftovers second. The agent, resumed, gets
    B's request before it notices the leftovers on the idle connection: only a
    look at the socket before reusing it keeps them from B."""
    gw, agent, api = env
    a = lib.request(gw.public_port, method, "/late", HOST, timeout=WAIT)
    assert a.status == 200 and a.body == (b"" if method == "HEAD" else b"ok"), a
    dev_port = agent_gateway_port(gw.device_port)
    assert dev_port and api.late_peer_port
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        result: list = []
        t = threading.Thread(target=lambda: result.append(
            lib.request(gw.public_port, "GET", "/honest", HOST, timeout=WAIT)), daemon=True)
        t.start()
        lib.wait_until(lambda: rx_queue(dev_port, gw.device_port) > 0, WAIT, "B's request waiting at the stopped agent")
        api.spill.set()
        assert api.spilled.wait(WAIT)
        if method == "GET":
            lib.wait_until(lambda: rx_queue(api.late_peer_port, api.port) > 0, WAIT, "A's leftovers at the stopped agent")
        # After HEAD the agent keeps no local connection at all (a HEAD body may come
        # late, after every look at the socket): A's leftovers have nowhere to wait.
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    t.join(WAIT + 5)
    assert result, "no answer for B"
    r = result[0]
    assert SECRET not in r.body and r.header("set-cookie") is None, ("user B got user A's leftovers", r)
    assert (r.status, r.body) == (200, b"honest"), r
    honest_for_b(gw)
