#!/usr/bin/env python3
"""Idle-connection flood against fleet-gateway (issue 12, finding 3). Not a test:
it prints numbers. For each open-file limit given (default: the one this shell
gives, which the gateway raises to its hard limit, as under systemd with the
unit's LimitNOFILE=65536), and each flood:

  one-address   N idle keep-alive connections from 127.0.0.1 (a request, then nothing)
  many-address  N idle keep-alive connections from 127.0.0.2, .3, ... (10 each)
  h2c-preface   N prior-knowledge h2c connections from many addresses: preface, SETTINGS, nothing

it reports the descriptors and resident memory the gateway holds 2 s after the
flood, how many flood connections it still holds, whether a restarted device
re-dials and how long that took, and whether the admin listener answers.

    python3 bench/idle_flood.py [--count 2000] [--nofile 0,1024] [--gateway PATH]

Everything runs on 127.0.0.1 (127.0.0.0/8 gives the many source addresses).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import e2e_lib as lib  # noqa: E402
import hostile_lib as hl  # noqa: E402


def admin_ok(gw) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=3)
        c.request("GET", "/devices")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def flood(gw, kind: str, count: int) -> list:
    socks = []
    for i in range(count):
        src = "127.0.0.1" if kind == "one-address" else f"127.0.{1 + i // 2500}.{2 + (i // 10) % 250}"
        s = socket.socket()
        s.settimeout(5)
        try:
            s.bind((src, 0))
            s.connect(("127.0.0.1", gw.public_port))
            if kind == "h2c-preface":
                s.sendall(hl.MAGIC + hl.settings())
            else:
                s.sendall(b"GET /device HTTP/1.1\r\nHost: dev1.example\r\n\r\n")
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def held(socks: list) -> int:
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def run(nofile: int, count: int, kinds: list, gateway: str):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pki = lib.make_pki(tmp / "pki")
        pm = lib.ProcessManager(tmp / "logs")
        api = lib.LocalAPI("dev1.example")
        real = gateway
        if nofile:
            wrapper = tmp / "gw"
            wrapper.write_text(f"#!/bin/sh\nulimit -n {nofile} && exec '{real}' \"$@\"\n")
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
            real = str(wrapper)
        lib.gateway_bin = lambda: Path(real)
        try:
            for kind in kinds:
                gw = lib.start_gateway(pm, pki, name="gateway-" + kind, log_level="notice", extra=["--check-interval-ms", "0"])
                cap = next(l for l in gw.log().splitlines() if "user connections: at most" in l)
                agent = lib.start_agent(pm, gw.device_port, pki=pki, device="dev1.example", local_port=api.port,
                                        connections=1, log_level="notice")
                lib.wait_device(gw, "dev1.example")
                pid = gw.proc.pid
                base_fds, base_rss = hl.fd_count(pid), lib.rss_mib(pid)
                t0 = time.monotonic()
                socks = flood(gw, kind, count)
                flood_s = time.monotonic() - t0
                time.sleep(2)
                fds, rss = hl.fd_count(pid), lib.rss_mib(pid)
                agent.stop()
                t1 = time.monotonic()
                agent = lib.start_agent(pm, gw.device_port, pki=pki, device="dev1.example", local_port=api.port,
                                        connections=1, log_level="notice", name="again")
                try:
                    lib.wait_until(lambda: gw.log().count("as dev1.example") >= 2, 30, "re-dial")
                    redial = round(time.monotonic() - t1, 2)
                except AssertionError:
                    redial = None
                out = {"nofile": nofile or int(open(f"/proc/{pid}/limits").read().split("Max open files")[1].split()[0]),
                       "flood": kind, "count": count, "opened": len(socks), "flood_s": round(flood_s, 2),
                       "gateway_fds": fds, "fds_per_held": None, "rss_mib": round(rss, 1),
                       "rss_growth_mib": round(rss - base_rss, 1), "held_after_2s": held(socks),
                       "device_redial_s": redial, "admin_answers": admin_ok(gw), "budget": cap.split(": ", 1)[1]}
                out["fds_per_held"] = round((fds - base_fds) / max(1, out["held_after_2s"]), 2)
                print(json.dumps(out), flush=True)
                for s in socks:
                    s.close()
                agent.stop()
                gw.proc.stop()
        finally:
            pm.stop_all()
            api.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--nofile", default="0", help="comma-separated open-file limits (0: as inherited)")
    ap.add_argument("--kinds", default="one-address,many-address,h2c-preface")
    ap.add_argument("--gateway", default=str(lib.gateway_bin()))
    a = ap.parse_args()
    for n in a.nofile.split(","):
        run(int(n), a.count, a.kinds.split(","), a.gateway)


if __name__ == "__main__":
    main()
