"""HPACK decompression bombs (issue 12, finding 1).

One header block of ~128 KiB on the wire adds a 4,000-byte field to the HPACK
dynamic table and then references it ~127,000 times (one byte each): ~500 MB
once decoded. Before the fix the gateway held all of it (1.7 GiB resident for
the issue's 144 KiB block), stalled its loop for seconds and every other device
dropped. Now a block past max_header_bytes (users) or 64 KiB (devices) is
dropped as it is decoded.

User side (h2c, public listener): three connections that never end their block,
then whole bombs: each bomb's stream is reset (PROTOCOL_ERROR) and the same
connection serves its next stream; a head only a little over the limit gets 431. Device side (the hostile dev1.example of test_hostile_http2): the bomb
as a response head: that stream is reset, the user gets 502, the device's next
answer goes through. Throughout, a bystander device (dev2) answers in time and
the gateway's peak resident memory (VmHWM) grows by less than 64 MiB.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

import e2e_lib as lib
import hostile_lib as hl
from hostile_lib import CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, PROTOCOL_ERROR, RST_STREAM, frame
from test_hostile_http2 import Env, HostileDevice

HWM_GROWTH_MIB = 64.0
# A bystander request must never wait this long (before the fix: many seconds).
BYSTANDER_MAX_S = 2.0
FRAME = 16384


def hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise OSError("no VmHWM")


def bomb_block(prefix: bytes, wire: int) -> bytes:
    """`prefix`, a 4,000-byte field into the dynamic table, then references to it up to `wire` bytes."""
    big = b"a" * 4000
    block = prefix + b"\x40" + hl._hpack_int(5, 7) + b"x-big" + hl._hpack_int(len(big), 7) + big
    return block + b"\xbe" * (wire - len(block))  # 0xbe: indexed field 62, the newest entry


def header_frames(stream: int, block: bytes, end_stream: bool, end_headers: bool = True) -> bytes:
    out = b""
    chunks = [block[i:i + FRAME] for i in range(0, len(block), FRAME)]
    for i, c in enumerate(chunks):
        last = i == len(chunks) - 1
        flags = (END_HEADERS if last and end_headers else 0) | (END_STREAM if i == 0 and end_stream else 0)
        out += frame(HEADERS if i == 0 else CONTINUATION, flags, stream, c)
    return out


REQUEST = hl.hpack([(":method", "GET"), (":scheme", "http"), (":path", "/device"), (":authority", "dev2.example")])


class Bystander:
    """Requests to dev2 in a loop (bounded) while an attack runs; records each latency."""

    def __init__(self, env: Env):
        self.env = env
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        for _ in range(2000):
            if self._stop.is_set():
                return
            t0 = time.monotonic()
            try:
                r = lib.request(self.env.gw.public_port, "GET", "/device", "dev2.example", timeout=20)
                if r.status != 200 or r.body != b"dev2.example":
                    self.failures.append(repr(r))
            except OSError as e:
                self.failures.append(repr(e))
            self.latencies.append(time.monotonic() - t0)
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._t.join(30)
        assert not self.failures, self.failures[:3]
        assert self.latencies, "no bystander request ran"
        return max(self.latencies)


@pytest.fixture(scope="module")
def env(module_procs, module_api, pki):
    gw = lib.start_gateway(module_procs, pki, name="gateway-hpack-bomb", log_level="info",
                           extra=["--check-interval-ms", "0", "--grace-ms", "0", "--response-timeout-ms", "5000"])
    a2 = module_api("dev2.example")
    lib.start_agent(module_procs, gw.device_port, pki=pki, device="dev2.example", local_port=a2.port,
                    connections=1, log_level="info")
    assert lib.wait_device(gw, "dev2.example").status == 200
    return Env(gw, pki, a2)


def read_head(u: socket.socket, until: bytes = b"\r\n\r\n", timeout: float = 15.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while until not in data and time.monotonic() < deadline:
        u.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = u.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def start_measure(env: Env):
    pid = env.gw.proc.pid
    return max(hwm_mib(pid), lib.rss_mib(pid)), Bystander(env)


def end_measure(env: Env, base: float, by: Bystander, what: str):
    worst = by.stop()
    grown = hwm_mib(env.gw.proc.pid) - base
    print(f"\n{what}: gateway peak RSS +{grown:.1f} MiB, slowest bystander request {worst * 1000:.0f} ms "
          f"({len(by.latencies)} requests)")
    assert grown < HWM_GROWTH_MIB, f"the gateway's peak RSS grew by {grown:.0f} MiB"
    assert worst < BYSTANDER_MAX_S, f"a bystander request took {worst:.1f} s"
    env.bystander_ok()


def ask(s: socket.socket, data: bytes, streams: set) -> tuple[hl.FrameReader, dict, dict]:
    """Sends `data` on an h2c connection; reads until each of `streams` ended or was reset."""
    s.sendall(data)
    r = hl.FrameReader(s)
    body = {k: b"" for k in streams}
    reset = {}

    def done(f):
        if f[0] == DATA and f[2] in body:
            body[f[2]] += f[3]
        if f[0] == RST_STREAM and f[2] in body:
            reset[f[2]] = int.from_bytes(f[3], "big")
        return all(k in reset or any(g[0] == DATA and g[2] == k and g[1] & END_STREAM for g in r.seen) for k in streams)

    assert r.until(done, 30), f"no answer to {streams}: {r.seen}"
    return r, body, reset


def test_user_header_block_over_the_limit_gets_431(env):
    """A request head a little over max_header_bytes (one 20 KB cookie): 431."""
    s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=30)
    try:
        block = REQUEST + hl.hpack([("cookie", "c" * 20000)])
        r, body, reset = ask(s, hl.MAGIC + hl.settings() + header_frames(1, block, True), {1})
        status = next(f[3] for f in r.seen if f[0] == HEADERS and f[2] == 1)
        assert status.startswith(b"\x48\x03431"), status  # :status 431 (literal, indexed name)
        assert b"header block over 16384 bytes" in body[1], body
    finally:
        s.close()


def test_user_hpack_bomb_is_reset_and_memory_stays_bounded(env):
    base, by = start_measure(env)
    opened = []
    try:
        # Three users who never end their header block (HEADERS + 7 CONTINUATION, no END_HEADERS).
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=30)
            s.sendall(hl.MAGIC + hl.settings() + header_frames(1, bomb_block(REQUEST, 8 * FRAME), True, False))
            opened.append(s)
        # Whole bombs (about 500 MB each once decoded), each followed by an ordinary
        # request on the same connection: the bomb's stream is reset, the next one served.
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=30)
            opened.append(s)
            _, body, reset = ask(s, hl.MAGIC + hl.settings() + header_frames(1, bomb_block(REQUEST, 8 * FRAME - 100), True)
                                 + frame(HEADERS, END_HEADERS | END_STREAM, 3, REQUEST), {1, 3})
            assert reset.get(1) == PROTOCOL_ERROR, (body, reset)
            assert body[3] == b"dev2.example", (body, reset)
            s.close()
    finally:
        for s in opened:
            s.close()
    end_measure(env, base, by, "user bombs")


def test_device_hpack_bomb_resets_the_stream(env):
    dev = HostileDevice(env)
    base, by = start_measure(env)
    try:
        u = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=30)
        u.sendall(b"GET /x HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
        sid = dev.next_request()
        dev.send(header_frames(sid, bomb_block(b"\x88", 8 * FRAME), False))  # :status 200, then the bomb
        fr = dev.r.until(lambda f: f[0] == RST_STREAM and f[2] == sid, 30)
        assert fr and int.from_bytes(fr[3], "big") == PROTOCOL_ERROR, f"no RST_STREAM(PROTOCOL_ERROR): {dev.r.seen}"
        data = read_head(u)
        assert data.startswith(b"HTTP/1.1 502"), data[:200]
        u.close()
        # The device's connection still works: its next answer reaches the user.
        u = socket.create_connection(("127.0.0.1", env.gw.public_port), timeout=30)
        u.sendall(b"GET /y HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
        sid = dev.next_request()
        dev.send(hl.headers(sid, [(":status", "200"), ("content-length", "2")]) + frame(DATA, END_STREAM, sid, b"ok"))
        data = read_head(u, until=b"ok")
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok"), data[:200]
        u.close()
    finally:
        dev.close()
    end_measure(env, base, by, "device bomb")
