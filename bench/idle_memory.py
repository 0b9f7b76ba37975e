#!/usr/bin/env python3
"""Gateway memory per idle device connection (issue 18). Not a test: it prints numbers.

    swift build -c release --product fleet-gateway --product device-sim
    python3 bench/idle_memory.py [--devices 2000] [--trim]

One fleet-gateway and one device-sim (release builds) on 127.0.0.1, N devices
with one mutual-TLS connection each, then the gateway's resident memory per
device (RSS minus the empty gateway's, divided by N) at three points:
  - connected: 1 s after the gateway lists every device (what bench/fleet_scale.py reports);
  - idle: `--idle-seconds` later (liveness ticks have released idle buffers);
  - checked: once every device was health-checked (a request and a response on
    each connection, HPACK tables in use), then `--idle-seconds` of idling.
With --trim, also after malloc_trim(0) (called with gdb): the difference is heap
the allocator held free, not memory the connections use. With --malloc-stats,
glibc's malloc_stats() goes to the gateway's log (printed at the end).
`--wrap "valgrind --tool=massif ..."` runs the gateway under a tool.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
os.environ.setdefault("RH_BIN", str(REPO / ".build" / "release"))
import e2e_lib as lib  # noqa: E402
import fleet_lib  # noqa: E402


def rollup(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def gdb_call(pid: int, expr: str) -> None:
    subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", f"call {expr}"], capture_output=True, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--idle-seconds", type=float, default=6.0)
    ap.add_argument("--check-interval-ms", type=int, default=10_000)
    ap.add_argument("--trim", action="store_true")
    ap.add_argument("--malloc-stats", action="store_true")
    ap.add_argument("--wrap", default="")
    ap.add_argument("--log-level", default="warning", help="the gateway's (notice shows its heap trims)")
    ap.add_argument("--hold", type=float, default=0, help="seconds to keep running at the end (for a profiler)")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    res: dict = {"devices": a.devices}
    with tempfile.TemporaryDirectory(prefix="idle-memory-") as d:
        work = Path(d)
        pm = lib.ProcessManager(work / "logs")
        try:
            pki = work / "pki"
            lib.run_pki(["init", pki, "--name", "gw.example", "--san", "127.0.0.1"])
            dport, pport, aport = lib.free_port(), lib.free_port(), lib.free_port()
            args = shlex.split(a.wrap) + [
                lib.gateway_bin(), "--listen-devices", f"127.0.0.1:{dport}",
                "--listen-public", f"127.0.0.1:{pport}", "--listen-admin", f"127.0.0.1:{aport}",
                "--ca", pki / "ca.crt", "--cert", pki / "gateway.crt", "--key", pki / "gateway.key",
                "--hostname-template", "{cn}." + fleet_lib.DOMAIN, "--check-interval-ms", str(a.check_interval_ms),
                "--log-level", a.log_level]
            gw = pm.start("gateway", args)
            lib.wait_until(lambda: (not gw.alive()) or lib.port_open(pport), 120, "the gateway to listen")
            assert gw.alive(), gw.tail()
            time.sleep(0.5)
            empty = lib.rss_mib(gw.pid)
            res["gateway_rss_empty_mib"] = round(empty, 1)

            def sample(label: str) -> None:
                rss = lib.rss_mib(gw.pid)
                r = rollup(gw.pid)
                res[label] = {"rss_mib": round(rss, 1),
                              "kib_per_device": round((rss - empty) * 1024 / a.devices, 2),
                              "anonymous_kib": r.get("Anonymous"), "private_dirty_kib": r.get("Private_Dirty")}
                print(f"{label:>10}: {rss:8.1f} MiB  {res[label]['kib_per_device']:6.2f} KiB per device", flush=True)

            report = work / "sim-report.json"
            sim = pm.start("device-sim", [fleet_lib.sim_bin(), "--gateway", f"127.0.0.1:{dport}",
                                          "--server-name", "gw.example", "--ca-dir", pki, "--devices", str(a.devices),
                                          "--report", report, "--sample-ms", "500", "--log-level", "error"])
            s = fleet_lib.Sim(sim, sim.log_path, report)
            lib.wait_until(lambda: s.events("all-connected") or (not sim.alive() and "exited"), 900, "all devices")
            assert sim.alive(), sim.tail()
            lib.wait_until(lambda: fleet_lib.metric(aport, "rhttp_devices_connected") >= a.devices, 120, "the listing")
            time.sleep(1.0)  # a reading, not a synchronisation (as bench/fleet_scale.py)
            sample("connected")
            time.sleep(a.idle_seconds)
            sample("idle")
            lib.wait_until(lambda: fleet_lib.metric(aport, "rhttp_devices_healthy", 'state="up"') >= a.devices,
                           6 * a.check_interval_ms / 1000 + 120, "every device healthy")
            time.sleep(a.idle_seconds)
            sample("checked")
            if a.trim:
                gdb_call(gw.pid, "(int)malloc_trim(0)")
                sample("trimmed")
            if a.malloc_stats:
                gdb_call(gw.pid, "(void)malloc_stats()")
            if a.hold:
                print(f"holding {a.hold} s (gateway pid {gw.pid})", flush=True)
                time.sleep(a.hold)
        finally:
            pm.stop_all(grace=30)
            for line in gw.log_path.read_text(errors="replace").splitlines():
                if "free heap" in line:
                    print("gateway:", line)
            if a.malloc_stats:
                lines = gw.log_path.read_text(errors="replace").splitlines()
                print("\n".join(l for l in lines if "Arena" in l or "bytes" in l or "mmap" in l))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
