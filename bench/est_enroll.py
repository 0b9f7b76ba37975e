#!/usr/bin/env python3
"""EST enrollment storm (issue 17). Not a test: it prints and writes numbers.

    swift build -c release --product fleet-gateway && swift build -c release --product device-sim
    python3 bench/est_enroll.py [--devices 1000] [--ramp 0] [--timeout 900] [--out bench/results/est-enroll.json]

One fleet-gateway (with --pki-dir: EST on its device listener) and one
device-sim (release builds) on 127.0.0.1. The simulator mints one enrollment
token per device in the gateway's PKI directory (`--mint-tokens`, as `pki
enroll-token` does), then starts all N devices at once without certificates:
each makes its key, asks /cacerts and /simpleenroll with its token (the agent's
Enrollment), writes its key and certificate, and dials with them. Measured:
  - wall time from the devices' start until every one has its certificate, and
    until every one is connected (the simulator's clock);
  - each device's time to enroll (start -> certificate written): p50, p99, max;
  - the gateway's CPU seconds (/proc utime + stime) over the storm, and its RSS
    before, at peak and after; the simulator's too;
  - the gateway's EST answers by result (rhttp_est_requests_total).
Then a few requests through the public listener, each answered by the device it
named. Bounded by --timeout: if not every device is online by then, the numbers
so far are printed and it exits 1.

The devices' files (token, key, certificate) are on a tmpfs (/dev/shm) unless
--devices-on-disk: a board syncs its own two files, but the simulator's one
loop would serialize 1,000 devices' fsyncs (4 each, ~6 ms apiece here) and
measure the disk instead of EST. The gateway's PKI directory (its token file,
synced at every enrollment) is on disk either way.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
os.environ.setdefault("RH_BIN", str(REPO / ".build" / "release"))
import e2e_lib as lib  # noqa: E402
import fleet_lib  # noqa: E402


def est_answers(admin_port: int) -> dict:
    """rhttp_est_requests_total by its labels ({'operation="cacerts",result="ok"': n, ...})."""
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("rhttp_est_requests_total{"):
                labels, value = line[len("rhttp_est_requests_total{"):].rsplit("} ", 1)
                out[labels] = int(float(value))
    return out


def run(workdir: Path, devices_dir: Path, devices: int, timeout: float, ramp: float = 0) -> dict:
    pm = lib.ProcessManager(workdir / "logs")
    res: dict = {"devices": devices, "ramp_per_second": ramp}
    try:
        pki = workdir / "pki"
        lib.run_pki(["init", pki, "--name", "gw.example", "--san", "127.0.0.1", "--issuing-ca"])
        lib.run_pki(["crl", pki])
        dport, pport, aport = lib.free_port(), lib.free_port(), lib.free_port()
        gw = pm.start("gateway", [lib.gateway_bin(), "--listen-devices", f"127.0.0.1:{dport}",
                                  "--listen-public", f"127.0.0.1:{pport}", "--listen-admin", f"127.0.0.1:{aport}",
                                  "--ca", pki / "ca.crt", "--cert", pki / "gateway.crt", "--key", pki / "gateway.key",
                                  "--pki-dir", pki, "--check-interval-ms", "0", "--log-level", "warning"])
        lib.wait_until(lambda: (not gw.alive()) or lib.port_open(pport), lib.STARTUP_TIMEOUT, "the gateway to listen")
        assert gw.alive(), gw.tail()
        res["gateway_rss_before_mib"] = round(lib.rss_mib(gw.pid), 1)

        tokens, report = devices_dir / "devices", workdir / "sim-report.json"
        t_launch = time.monotonic()
        cpu0 = lib.cpu_seconds(gw.pid)
        sim_proc = pm.start("device-sim", [fleet_lib.sim_bin(), "--gateway", f"127.0.0.1:{dport}", "--server-name", "gw.example",
                                           "--enroll-token-dir", tokens, "--mint-tokens", pki, "--devices", str(devices),
                                           "--report", report, "--sample-ms", "250", "--ramp", str(ramp),
                                           "--log-level", "error"])
        sim = fleet_lib.Sim(sim_proc, sim_proc.log_path, report)
        peak = lib.PeakRSS({"gateway": gw.pid, "sim": sim_proc.pid})
        try:
            lib.wait_until(lambda: sim.events("all-connected") or (not sim_proc.alive() and "exited"), timeout,
                           f"all {devices} devices enrolled and connected")
            res["complete"] = True
        except AssertionError:
            res["complete"] = False  # timed out: the numbers so far are still written
        finally:
            peaks = peak.stop()
        assert sim_proc.alive(), sim_proc.tail()
        cpu1 = lib.cpu_seconds(gw.pid)
        launch_to_now = time.monotonic() - t_launch
        s = sim.summary()
        e = s["enrollment"]
        res["all_enrolled_seconds"] = e["all_enrolled_seconds"]
        res["all_online_seconds"] = s["all_connected_seconds"]
        res["online"] = s["connected_devices"]
        res["mint_seconds"] = round(launch_to_now - s["elapsed_seconds"], 2)  # before the devices start
        res["gateway_cpu_seconds"] = round(cpu1 - cpu0, 2)
        res["gateway_cpu_ms_per_enrollment"] = round(1000 * (cpu1 - cpu0) / max(1, e["enrolled"]), 2)
        res["gateway_rss_peak_mib"] = round(peaks["gateway"], 1)
        res["gateway_rss_after_mib"] = round(lib.rss_mib(gw.pid), 1)
        res["sim_rss_peak_mib"] = round(peaks["sim"], 1)
        res.update({"enrolled": e["enrolled"], "failed_attempts": e["failed_attempts"], "devices_failed": e["devices_failed"],
                    "enroll_p50_ms": e["p50_ms"], "enroll_p99_ms": e["p99_ms"], "enroll_max_ms": e["max_ms"],
                    "dial_attempts": s["dial_attempts"], "reconnects": s["reconnects"], "last_error": e["last_error"]})
        res["est_answers"] = est_answers(aport)
        if not res["complete"]:
            return res
        lib.wait_until(lambda: fleet_lib.metric(aport, "rhttp_devices_connected") >= devices, 30,
                       "the gateway to list every device")
        assert e["enrolled"] == devices, e

        # A few devices, chosen at random, answer through the public listener on their new certificates.
        rng = random.Random(17)
        for n in rng.sample(range(1, devices + 1), min(devices, 20)):
            name = f"dev-{n:05d}"
            r = lib.request(pport, "GET", "/device", name)
            assert (r.status, r.body) == (200, f"{name}\n".encode()), (name, r.status, r.body[:200])
        sim_proc.stop(grace=30)
        return res
    finally:
        pm.stop_all()


def secs(v) -> str:
    return "not reached" if v is None else f"{v:.2f}"


def table(res: dict) -> str:
    rows = [
        ("devices enrolling" + (f" (started {res['ramp_per_second']:g}/s)" if res["ramp_per_second"] else " at once"),
         f"{res['devices']}"),
        ("all enrolled (s, from start)", secs(res["all_enrolled_seconds"])),
        ("all online (s, from start)", secs(res["all_online_seconds"])),
        ("enrolled / online at the end", f"{res['enrolled']} / {res['online']}"),
        ("time to enroll p50 / p99 / max (ms)", f"{res['enroll_p50_ms']} / {res['enroll_p99_ms']} / {res['enroll_max_ms']}"),
        ("failed attempts (devices), reconnects", f"{res['failed_attempts']} ({res['devices_failed']}), {res['reconnects']}"),
        ("gateway CPU (s) / per enrollment (ms)", f"{res['gateway_cpu_seconds']:.2f} / {res['gateway_cpu_ms_per_enrollment']:.2f}"),
        ("gateway RSS before / peak / after (MiB)",
         f"{res['gateway_rss_before_mib']} / {res['gateway_rss_peak_mib']} / {res['gateway_rss_after_mib']}"),
        ("simulator RSS peak (MiB)", f"{res['sim_rss_peak_mib']}"),
        ("tokens minted before the start (s)", f"{res['mint_seconds']:.2f}"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=900, help="seconds the storm may take at most")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "est-enroll.json")
    ap.add_argument("--ramp", type=float, default=0, help="devices started per second (default 0: all at once)")
    ap.add_argument("--devices-on-disk", action="store_true", help="the devices' files on disk, not on /dev/shm")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * a.devices + 1000:
        print(f"the open-files limit ({hard}) is too low for {a.devices} devices", file=sys.stderr)
        return 1
    shm = Path("/dev/shm")
    files_base = None if a.devices_on_disk or not shm.is_dir() else shm
    with tempfile.TemporaryDirectory(prefix="est-enroll-") as d, \
            tempfile.TemporaryDirectory(prefix="est-enroll-devices-", dir=files_base) as files:
        res = run(Path(d), Path(files), a.devices, a.timeout, a.ramp)
        res["devices_files_on"] = "disk" if files_base is None else str(files_base)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print("EST answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(res["est_answers"].items())))
    if res["last_error"]:
        print("last failure: " + res["last_error"])
    print(f"written to {a.out}")
    if not res["complete"]:
        print(f"NOT COMPLETE: {res['online']} of {a.devices} devices online after {a.timeout:g} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
