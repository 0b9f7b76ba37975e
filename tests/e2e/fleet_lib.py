"""The fleet-scale scenario (issue 5): one fleet-gateway, one device-sim with N
devices, then routing, memory, health checks and a gateway restart. Shared by
the CI-sized test (tests/e2e/test_fleet_scale.py, N = 1,000) and the benchmark
(bench/fleet_scale.py, N = 10,000): the same steps and the same assertions.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import random
import signal
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import e2e_lib as lib

DOMAIN = "fleet.test"


def sim_bin() -> Path:
    return lib.bin_dir() / "device-sim"


def metric(admin_port: int, name: str, label: str = "") -> float:
    """Sum of a Prometheus metric's samples from the admin listener: all label sets,
    or those whose labels contain `label` (say 'state="up"')."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        total, found = 0.0, False
        for line in r.read().decode().splitlines():
            if (line.startswith(name + " ") or line.startswith(name + "{")) and label in line:
                total += float(line.rsplit(" ", 1)[1])
                found = True
    if not found:
        raise AssertionError(f"no metric {name} {label}")
    return total


@dataclass
class Sim:
    proc: lib.Proc
    out: Path
    report: Path

    def events(self, kind: str) -> list:
        out = []
        for line in self.out.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                ev = json.loads(line)
                if ev.get("event") == kind:
                    out.append(ev)
        return out

    def summary(self) -> dict:
        """The simulator's report now (SIGUSR1 writes it)."""
        before = self.report.stat().st_mtime_ns if self.report.exists() else 0
        self.proc.popen.send_signal(signal.SIGUSR1)
        lib.wait_until(lambda: self.report.exists() and self.report.stat().st_mtime_ns != before, 30, "the report")
        return json.loads(self.report.read_text())


@dataclass
class FleetRun:
    devices: int
    results: dict = field(default_factory=dict)


def start_gateway(pm: lib.ProcessManager, pki: Path, ports: tuple, check_interval_ms: int, name: str) -> lib.Proc:
    dport, pport, aport = ports
    proc = pm.start(name, [lib.gateway_bin(), "--listen-devices", f"127.0.0.1:{dport}",
                           "--listen-public", f"127.0.0.1:{pport}", "--listen-admin", f"127.0.0.1:{aport}",
                           "--ca", pki / "ca.crt", "--cert", pki / "gateway.crt", "--key", pki / "gateway.key",
                           "--hostname-template", "{cn}." + DOMAIN, "--check-interval-ms", str(check_interval_ms),
                           "--log-level", "warning"])
    lib.wait_until(lambda: (not proc.alive()) or lib.port_open(pport), lib.STARTUP_TIMEOUT, f"{name} to listen")
    assert proc.alive(), proc.tail()
    return proc


def ask(port: int, name: str) -> tuple:
    """GET /device from `name` through the public listener: (status, body, x-device)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", "/device", headers={"Host": f"{name}.{DOMAIN}"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace"), r.getheader("x-device")
    finally:
        c.close()


def run_fleet(workdir: Path, devices: int, *, requests: int = 1000, check_interval_ms: int = 10_000,
              health_rounds: int = 3, connect_timeout: float = 120, restart_limit: float = 60,
              log=print) -> dict:
    """Runs the scenario; returns the measurements. Raises AssertionError when a
    requirement is not met (every device connected, every request answered by
    the right device, every device back within `restart_limit` seconds)."""
    pm = lib.ProcessManager(workdir / "logs")
    res: dict = {"devices": devices}
    try:
        pki = workdir / "pki"
        lib.run_pki(["init", pki, "--name", "gw.example", "--san", "127.0.0.1"])
        ports = (lib.free_port(), lib.free_port(), lib.free_port())
        gw = start_gateway(pm, pki, ports, check_interval_ms, "gateway")
        res["gateway_rss_empty_mib"] = round(lib.rss_mib(gw.pid), 1)

        out, report = workdir / "sim.out", workdir / "sim-report.json"
        simproc = pm.start("device-sim", [sim_bin(), "--gateway", f"127.0.0.1:{ports[0]}", "--server-name", "gw.example",
                                          "--ca-dir", pki, "--devices", str(devices), "--report", report,
                                          "--sample-ms", "500", "--log-level", "error"])
        sim = Sim(simproc, simproc.log_path, report)

        # 1. Every device connects.
        started = time.monotonic()
        lib.wait_until(lambda: sim.events("all-connected") or (not simproc.alive() and "exited"),
                       connect_timeout, f"all {devices} devices to connect")
        assert simproc.alive(), simproc.tail()
        res["all_connected_seconds"] = sim.events("all-connected")[0]["seconds"]
        log(f"all {devices} connected in {res['all_connected_seconds']:.1f} s "
            f"(wall {time.monotonic() - started:.1f} s)")
        lib.wait_until(lambda: metric(ports[2], "rhttp_devices_connected") >= devices, 30,
                       "the gateway to list every device")
        time.sleep(1.0)  # let allocations settle before reading memory (a reading, not a synchronisation)
        rss = lib.rss_mib(gw.pid)
        res["gateway_rss_mib"] = round(rss, 1)
        res["gateway_kib_per_connection"] = round((rss - res["gateway_rss_empty_mib"]) * 1024 / devices, 1)
        res["sim_rss_mib"] = round(lib.rss_mib(simproc.pid), 1)
        res["sim_kib_per_device"] = round(lib.rss_mib(simproc.pid) * 1024 / devices, 1)
        log(f"gateway {rss:.1f} MiB ({res['gateway_kib_per_connection']} KiB per connection), "
            f"simulator {res['sim_rss_mib']} MiB")

        # 2. Requests to random devices through the public listener, each answered by that device.
        rng = random.Random(5)
        names = [f"dev-{rng.randint(1, devices):05d}" for _ in range(requests)]
        wrong, failed = [], []
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            for name, (status, body, who) in zip(names, pool.map(lambda n: ask(ports[1], n), names)):
                if status != 200:
                    failed.append((name, status, body[:100]))
                elif body != name + "\n" or who != name:
                    wrong.append((name, body[:40], who))
        res["requests"] = requests
        res["requests_right_device"] = requests - len(wrong) - len(failed)
        res["requests_seconds"] = round(time.monotonic() - t0, 2)
        log(f"{res['requests_right_device']} of {requests} requests answered by the right device")
        assert not wrong, f"answered by the wrong device: {wrong[:5]}"
        assert not failed, f"failed: {failed[:5]}"

        # 3. Health checks: every device checked over its own connection and up (after
        #    check_rise rounds), then the steady rate and the gateway's CPU over whole rounds.
        lib.wait_until(lambda: metric(ports[2], "rhttp_devices_healthy", 'state="up"') >= devices,
                       6 * check_interval_ms / 1000 + 30, "every device to be checked healthy")
        checks0 = metric(ports[2], "rhttp_health_checks_total")
        cpu0, t0 = lib.cpu_seconds(gw.pid), time.monotonic()
        window = health_rounds * check_interval_ms / 1000
        time.sleep(window)  # a measurement window of whole check rounds, not a synchronisation
        cpu1, t1 = lib.cpu_seconds(gw.pid), time.monotonic()
        checks = metric(ports[2], "rhttp_health_checks_total") - checks0
        res["health_check_interval_ms"] = check_interval_ms
        res["health_checks_per_second"] = round(checks / (t1 - t0), 1)
        res["gateway_cpu_percent_idle_with_checks"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 2)
        log(f"health checks: {res['health_checks_per_second']}/s, gateway CPU {res['gateway_cpu_percent_idle_with_checks']} %")
        assert checks >= devices * (health_rounds - 1), f"only {checks} checks in {health_rounds} rounds"
        healthy = metric(ports[2], "rhttp_devices_healthy", 'state="up"')
        res["devices_healthy"] = int(healthy)
        assert healthy == devices, f"{healthy} of {devices} devices healthy"

        # 4. Gateway restart: every device back, jittered, no storm.
        before = sim.summary()
        seen = len(sim.events("all-connected"))
        restart_at = time.monotonic()
        gw.stop(grace=30)
        res["gateway_stop_seconds"] = round(time.monotonic() - restart_at, 2)
        gw = start_gateway(pm, pki, ports, check_interval_ms, "gateway-restarted")
        up_at = time.monotonic()
        lib.wait_until(lambda: len(sim.events("all-connected")) > seen, restart_limit + 5,
                       f"all {devices} devices back after the restart")
        back = time.monotonic() - restart_at
        after = sim.summary()
        res["restart_all_back_seconds"] = round(back, 2)
        res["restart_back_after_listening_seconds"] = round(time.monotonic() - up_at, 2)
        res["restart_dial_attempts"] = after["dial_attempts"] - before["dial_attempts"]
        res["restart_dials_per_device"] = round(res["restart_dial_attempts"] / devices, 2)
        t_restart_ms = after["elapsed_seconds"] * 1000 - back * 1000
        res["restart_curve"] = [p for p in after["curve"] if p["ms"] >= t_restart_ms - 1000]
        log(f"restart: all back {back:.1f} s after SIGTERM ({res['restart_dials_per_device']} dials per device)")
        assert back <= restart_limit, f"devices took {back:.1f} s to come back"
        lib.wait_until(lambda: metric(ports[2], "rhttp_devices_connected") >= devices, 30,
                       "the restarted gateway to list every device")
        status, body, who = ask(ports[1], "dev-00001")
        assert status == 200 and who == "dev-00001", (status, body)

        simproc.stop(grace=30)
        res["sim_summary"] = json.loads(report.read_text())
        res["sim_summary"].pop("curve", None)
        return res
    finally:
        pm.stop_all(grace=30)
