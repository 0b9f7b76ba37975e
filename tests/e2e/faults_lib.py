"""Fault scenarios (issue 8), shared by the CI-sized tests (tests/e2e/test_faults_*.py)
and the measurements for the README (bench/faults.py): the same steps and the
same assertions, at two sizes.

- integrity: requests with random bodies through the real device-agent while its
  connections are cut and re-dialed; every completed response byte-identical,
  every failure visible to the user, no non-idempotent request run twice;
- kill9: the gateway killed with SIGKILL under user load from a device-sim fleet;
  how long until every device is back and requests succeed, never the wrong device;
- netns: the real agent in a network namespace behind a veth pair; the path cut
  without a FIN (link down) and either side frozen (SIGSTOP): when each side
  notices, and what the requests in flight get.

Every wait is bounded; pacing sleeps (the cutter's, the load's) generate load,
they never synchronise.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Optional

import e2e_lib as lib
import fleet_lib

HERE = Path(__file__).resolve().parent


def admin(port: int, method: str, path: str, timeout: float = 10) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def device_connections(admin_port: int, name: str) -> int:
    st, body = admin(admin_port, "GET", "/devices/" + name)
    if st != 200:
        return 0
    return len(json.loads(body).get("connections", []))


def streams_in_flight(admin_port: int, name: str) -> int:
    st, body = admin(admin_port, "GET", "/devices/" + name)
    if st != 200:
        return 0
    return sum(int(c.get("streams_in_flight", 0)) for c in json.loads(body).get("connections", []))


def log_count(proc: lib.Proc, pattern: str) -> int:
    return proc.log().count(pattern)


# --------------------------------------------------------------------------- integrity


def body_size(rng: random.Random, max_body: int) -> int:
    """0 bytes one time in ten, else log-uniform in [1, max_body]: many small
    bodies, some at the maximum, none skipped."""
    if rng.random() < 0.1:
        return 0
    if rng.random() < 0.02:
        return max_body
    return min(max_body, int(2 ** rng.uniform(0, max_body.bit_length())))


def run_integrity(workdir: Path, requests: int, max_body: int, *, concurrency: int = 8, cut_every: float = 0.5,
                  seed: int = 8, timeout: float = 60.0, log: Callable = print) -> dict:
    """Returns the counts; raises AssertionError on a corrupt or hung response, a
    failure not reported to the user, or a non-idempotent request run twice."""
    pm = lib.ProcessManager(workdir / "logs")
    api = lib.LocalAPI("dev1.example")
    res: dict = {"requests": requests, "max_body": max_body}
    stop = threading.Event()
    try:
        pki = lib.make_pki(workdir / "pki")
        gw = lib.start_gateway(pm, pki, log_level="notice", extra=["--access-log", "false", "--idle-ping-ms", "2000"])
        agents = [lib.start_agent(pm, gw.device_port, pki=pki, device="dev1.example", local_port=api.port,
                                  connections=2, log_level="notice", name="dev1-0")]
        lib.wait_device(gw, "dev1.example")
        cuts = {"admin-disconnect": 0, "agent-kill-9": 0}

        def cutter():
            rng = random.Random(seed + 1)
            n = 0
            while not stop.wait(rng.uniform(cut_every / 2, cut_every * 1.5)):  # pacing, not synchronisation
                n += 1
                if n % 4 == 0:
                    agents[-1].kill()  # SIGKILL: its connections end with the process
                    agents.append(lib.start_agent(pm, gw.device_port, pki=pki, device="dev1.example",
                                                  local_port=api.port, connections=2, log_level="notice",
                                                  name=f"dev1-{n}"))
                    cuts["agent-kill-9"] += 1
                else:
                    try:
                        admin(gw.admin_port, "POST", "/devices/dev1.example/disconnect")
                        cuts["admin-disconnect"] += 1
                    except OSError:
                        pass

        rng = random.Random(seed)
        plan = []
        for i in range(requests):
            r = rng.random()
            kind = "POST" if r < 0.7 else "PUT" if r < 0.85 else "GET"
            plan.append((i, kind, body_size(rng, max_body), rng.getrandbits(64)))

        outcomes: dict[str, int] = {}
        bad: list = []
        completed_posts: list[str] = []
        lock = threading.Lock()
        moved = [0]

        def one(item):
            i, kind, size, bseed = item
            rid = f"{i}-{uuid.uuid4().hex}"
            if kind == "GET":
                path, body = f"/bytes/{size}", None
                want = hashlib.sha256(lib.det_bytes(size)).hexdigest() if size <= (1 << 20) else None
            else:
                path, body = "/mirror", random.Random(bseed).randbytes(size)
                want = hashlib.sha256(body).hexdigest()
            c = http.client.HTTPConnection("127.0.0.1", gw.public_port, timeout=timeout)
            try:
                c.request(kind, path, body=body, headers={"Host": "dev1.example", "X-Request-Id": rid})
                r = c.getresponse()
                data = r.read()
                status = r.status
            except socket.timeout:
                return "hung", rid, kind, size, None
            except (OSError, http.client.HTTPException) as e:
                return "failed:" + type(e).__name__, rid, kind, size, None
            finally:
                c.close()
            if status != 200:
                return ("failed:%d" % status) if status in (502, 503, 504) else ("unexpected:%d" % status), rid, kind, size, data[:200]
            got = hashlib.sha256(data).hexdigest()
            if want is None:  # large GET: the deterministic bytes, checked by length and a slice
                ok = len(data) == size and data[:4096] == lib.det_bytes(size)[:4096] if size else len(data) == 0
                if ok and size:
                    ok = got == hashlib.sha256(lib.det_bytes(size)).hexdigest()
            else:
                ok = got == want and len(data) == size
            with lock:
                moved[0] += len(data) + (len(body) if body else 0)
            return ("completed" if ok else "corrupt"), rid, kind, size, None

        t0 = time.monotonic()
        th = threading.Thread(target=cutter, daemon=True)
        th.start()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for k, (outcome, rid, kind, size, detail) in enumerate(pool.map(one, plan)):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if outcome.startswith("failed"):
                    outcomes["failed"] = outcomes.get("failed", 0) + 1
                if outcome == "completed" and kind == "POST":
                    completed_posts.append(rid)
                if outcome in ("hung", "corrupt") or outcome.startswith("unexpected"):
                    bad.append((outcome, kind, size, detail))
                if (k + 1) % max(1, requests // 10) == 0:
                    log(f"  {k + 1}/{requests} requests, {outcomes.get('completed', 0)} completed, "
                        f"{outcomes.get('failed', 0)} failed")
        stop.set()
        th.join(30)
        seconds = time.monotonic() - t0
        with api._lock:
            ids = dict(api.request_ids)
        dups = {k: v for k, v in ids.items() if v > 1}
        missing = [r for r in completed_posts if ids.get(r, 0) != 1]
        res.update({
            "seconds": round(seconds, 1),
            "completed": outcomes.get("completed", 0),
            "failed_reported": outcomes.get("failed", 0),
            "failed_by_kind": {k.split(":", 1)[1]: v for k, v in outcomes.items() if k.startswith("failed:")},
            "corrupt": outcomes.get("corrupt", 0),
            "hung": outcomes.get("hung", 0),
            "unexpected": sum(v for k, v in outcomes.items() if k.startswith("unexpected")),
            "cuts": cuts,
            "non_idempotent_seen_by_device": len(ids),
            "duplicates_on_device": len(dups),
            "completed_posts_not_seen_once": len(missing),
            "mib_moved": round(moved[0] / (1 << 20), 1),
            "local_api_protocol_errors": api.protocol_errors,
        })
        log(f"integrity: {json.dumps(res)}")
        assert not bad, f"{len(bad)} responses corrupt, hung or unexpected: {bad[:5]}"
        assert not dups, f"non-idempotent requests run twice on the device: {list(dups.items())[:5]}"
        assert not missing, f"completed POSTs not seen exactly once by the device: {missing[:5]}"
        assert res["completed"] + res["failed_reported"] == requests
        assert sum(cuts.values()) > 0, "no connection was cut"
        return res
    finally:
        stop.set()
        pm.stop_all()
        api.close()


# --------------------------------------------------------------------------- kill -9 the gateway


def run_kill9(workdir: Path, devices: int, *, load_threads: int = 8, back_limit: float = 60.0,
              log: Callable = print) -> dict:
    """SIGKILL the gateway under load from `devices` simulated devices; restart it
    on the same ports. Raises AssertionError when a request is answered by the
    wrong device, or the fleet is not back within `back_limit` seconds."""
    pm = lib.ProcessManager(workdir / "logs")
    res: dict = {"devices": devices}
    stop = threading.Event()
    samples: list = []  # (started, ended, status, expected, who)
    lock = threading.Lock()
    try:
        pki = workdir / "pki"
        lib.run_pki(["init", pki, "--name", "gw.example", "--san", "127.0.0.1"])
        ports = (lib.free_port(), lib.free_port(), lib.free_port())
        gw = fleet_lib.start_gateway(pm, pki, ports, 10_000, "gateway")
        out, report = workdir / "sim.out", workdir / "sim-report.json"
        simproc = pm.start("device-sim", [fleet_lib.sim_bin(), "--gateway", f"127.0.0.1:{ports[0]}",
                                          "--server-name", "gw.example", "--ca-dir", pki, "--devices", str(devices),
                                          "--report", report, "--sample-ms", "250", "--log-level", "error"])
        sim = fleet_lib.Sim(simproc, simproc.log_path, report)
        lib.wait_until(lambda: sim.events("all-connected") or (not simproc.alive() and "exited"), 120,
                       f"all {devices} devices to connect")
        assert simproc.alive(), simproc.tail()

        def load(k: int):
            rng = random.Random(k)
            while not stop.is_set():
                name = f"dev-{rng.randint(1, devices):05d}"
                t = time.monotonic()
                try:
                    c = http.client.HTTPConnection("127.0.0.1", ports[1], timeout=30)
                    c.request("GET", "/device", headers={"Host": f"{name}.{fleet_lib.DOMAIN}"})
                    r = c.getresponse()
                    body = r.read().decode(errors="replace")
                    c.close()
                    status, who = r.status, (r.getheader("x-device"), body.strip())
                except socket.timeout:
                    status, who = "hung", None
                except (OSError, http.client.HTTPException):
                    status, who = "refused", None
                with lock:
                    samples.append((t, time.monotonic(), status, name, who))
                if status != 200:
                    stop.wait(0.02)  # pacing while the gateway is away

        def ok_count(since: float) -> int:
            with lock:
                return sum(1 for s in samples if s[0] >= since and s[2] == 200)

        threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(load_threads)]
        for th in threads:
            th.start()
        lib.wait_until(lambda: ok_count(0) >= 200, 60, "200 requests before the kill")
        before = sim.summary()
        seen = len(sim.events("all-connected"))
        killed_at = time.monotonic()
        gw.kill()  # SIGKILL: no GOAWAY, the kernel closes every socket
        gw = fleet_lib.start_gateway(pm, pki, ports, 10_000, "gateway-restarted")
        listening_at = time.monotonic()
        lib.wait_until(lambda: len(sim.events("all-connected")) > seen, back_limit + 5,
                       f"all {devices} devices back after the kill")
        back_at = time.monotonic()
        # Requests after the fleet is back: every one must succeed.
        lib.wait_until(lambda: ok_count(back_at + 0.5) >= 500, 60, "500 requests after the fleet is back")
        stop.set()
        for th in threads:
            th.join(40)
        after = sim.summary()
        with lock:
            all_samples = list(samples)
        wrong = [s for s in all_samples if s[2] == 200 and s[4] != (s[3], s[3])]
        hung = [s for s in all_samples if s[2] == "hung"]
        post = [s for s in all_samples if s[0] >= killed_at]
        first_ok = min((s[1] for s in post if s[2] == 200), default=None)
        failed_after_back = [s for s in all_samples if s[0] >= back_at + 0.5 and s[2] != 200]
        last_fail = max((s[1] for s in all_samples if s[2] != 200), default=killed_at)
        by_status: dict = {}
        for s in post:
            if s[2] != 200:
                by_status[str(s[2])] = by_status.get(str(s[2]), 0) + 1
        res.update({
            "kill_to_listening_s": round(listening_at - killed_at, 2),
            "kill_to_first_success_s": round(first_ok - killed_at, 2) if first_ok else None,
            "kill_to_all_devices_back_s": round(back_at - killed_at, 2),
            "kill_to_last_failed_request_s": round(last_fail - killed_at, 2),
            "dials_per_device": round((after["dial_attempts"] - before["dial_attempts"]) / devices, 2),
            "requests": len(all_samples),
            "requests_during_outage_by_status": by_status,
            "wrong_device": len(wrong),
            "hung": len(hung),
            "failed_after_back": len(failed_after_back),
        })
        log(f"kill9: {json.dumps(res)}")
        assert not wrong, f"answered by the wrong device: {wrong[:5]}"
        assert not hung, f"requests hung: {hung[:5]}"
        assert not failed_after_back, f"requests failed after the fleet was back: {failed_after_back[:5]}"
        assert back_at - killed_at <= back_limit
        return res
    finally:
        stop.set()
        pm.stop_all(grace=30)


# --------------------------------------------------------------------------- network namespace


class NetNS:
    """A network namespace joined to this one by a veth pair: 10.213.N.1 here,
    10.213.N.2 inside. Deleted by close(); `cut()` sets the link down (packets
    are dropped, nobody sends a FIN or RST), `mend()` sets it up again."""

    def __init__(self):
        n = os.getpid() % 250 + 1
        self.name = f"rhf{os.getpid()}"
        self.host_if, self.ns_if = f"rhfh{os.getpid() % 100000}", f"rhfn{os.getpid() % 100000}"
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self._run(["ip", "netns", "add", self.name])
        try:
            self._run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if])
            self._run(["ip", "link", "set", self.ns_if, "netns", self.name])
            self._run(["ip", "addr", "add", self.host_ip + "/30", "dev", self.host_if])
            self._run(["ip", "link", "set", self.host_if, "up"])
            self.exec(["ip", "addr", "add", self.ns_ip + "/30", "dev", self.ns_if])
            self.exec(["ip", "link", "set", self.ns_if, "up"])
            self.exec(["ip", "link", "set", "lo", "up"])
        except Exception:
            self.close()
            raise

    @staticmethod
    def usable() -> Optional[str]:
        """None when namespaces can be made here, else why not."""
        name = f"rhfprobe{os.getpid()}"
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10)
        if r.returncode != 0:
            return "`ip netns add` fails here: " + r.stderr.decode(errors="replace").strip()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        return None

    @staticmethod
    def _run(args: list):
        r = subprocess.run(args, capture_output=True, timeout=10)
        if r.returncode != 0:
            raise OSError(f"{' '.join(args)}: {r.stderr.decode(errors='replace').strip()}")

    def exec(self, args: list):
        self._run(["ip", "netns", "exec", self.name] + args)

    def prefix(self) -> list:
        return ["ip", "netns", "exec", self.name]

    def cut(self):
        self._run(["ip", "link", "set", self.host_if, "down"])

    def mend(self):
        self._run(["ip", "link", "set", self.host_if, "up"])

    def close(self):
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


def start_local_api_process(pm: lib.ProcessManager, device: str, prefix: list = (), name: str = "local-api",
                            port: int = 0) -> tuple[lib.Proc, int]:
    """The e2e local API in a process of its own (to kill it, or to run it in a namespace)."""
    p = pm.start(name, list(prefix) + [sys.executable, HERE / "local_api_main.py", device, str(port)])
    line = p.wait_log(r"^port \d+", regex=True)
    return p, int(line.split()[1])


class InFlight:
    """A request in a thread: its status (or error) and when it ended."""

    def __init__(self, port: int, method: str, path: str, host: str, timeout: float = 60):
        self.result: Optional[object] = None
        self.ended: Optional[float] = None
        self.started = time.monotonic()

        def go():
            try:
                self.result = lib.request(port, method, path, host, body=b"x" if method == "POST" else None,
                                          headers={"X-Request-Id": uuid.uuid4().hex}, timeout=timeout).status
            except socket.timeout:
                self.result = "hung"
            except (OSError, http.client.HTTPException) as e:
                self.result = type(e).__name__
            self.ended = time.monotonic()

        self.thread = threading.Thread(target=go, daemon=True)
        self.thread.start()

    def wait(self, timeout: float):
        self.thread.join(timeout)
        return self.result


def run_netns(workdir: Path, *, ping_ms: int = 1000, log: Callable = print) -> dict:
    """The agent in a namespace; path cut without FIN, agent frozen, gateway frozen.
    Returns seconds until each side noticed and what requests in flight got."""
    pm = lib.ProcessManager(workdir / "logs")
    ns = NetNS()
    res: dict = {"idle_ping_ms": ping_ms}
    bound = 2.25 * ping_ms / 1000 + 1.5  # liveness bound (2 intervals + a tick) + scheduling slack
    try:
        pki = lib.make_pki(workdir / "pki")
        dport = lib.free_port()
        gw = lib.start_gateway(pm, pki, log_level="info",
                               extra=["--listen-devices", f"{ns.host_ip}:{dport}", "--idle-ping-ms", str(ping_ms),
                                      "--grace-ms", "2000", "--response-timeout-ms", "60000"])
        _, api_port = start_local_api_process(pm, "dev1.example", ns.prefix())
        agent_args = ns.prefix() + [lib.agent_bin(), "--gateway", f"{ns.host_ip}:{dport}", "--server-name", "gw.example",
                                    "--ca", pki.ca, "--cert", pki.device_cert("dev1.example"),
                                    "--key", pki.device_key("dev1.example"), "--local", f"127.0.0.1:{api_port}",
                                    "--connections", "1", "--idle-ping-ms", str(ping_ms), "--log-level", "info"]
        agent = pm.start("agent-in-netns", agent_args)
        lib.wait_device(gw, "dev1.example")

        def noticed(proc: lib.Proc, n0: int, t0: float, what: str) -> float:
            lib.wait_until(lambda: log_count(proc, "peer unresponsive") > n0, bound + 5, what, interval=0.02)
            return round(time.monotonic() - t0, 2)

        def both_noticed(g0: int, a0: int, t0: float) -> tuple:
            """Seconds until the gateway and the agent each logged the dead peer (polled together)."""
            seen: dict = {}

            def poll():
                for key, proc, n0 in (("gw", gw.proc, g0), ("agent", agent, a0)):
                    if key not in seen and log_count(proc, "peer unresponsive") > n0:
                        seen[key] = round(time.monotonic() - t0, 2)
                return len(seen) == 2

            lib.wait_until(poll, bound + 5, f"both sides to notice the cut (so far: {seen})", interval=0.02)
            return seen["gw"], seen["agent"]

        # 1. The path cut without a FIN, with a POST (not repeatable) and a GET (repeatable) in flight.
        g0, a0 = log_count(gw.proc, "peer unresponsive"), log_count(agent, "peer unresponsive")
        post = InFlight(gw.public_port, "POST", "/sleep/30000", "dev1.example")
        get = InFlight(gw.public_port, "GET", "/sleep/30000", "dev1.example")
        lib.wait_until(lambda: streams_in_flight(gw.admin_port, "dev1.example") >= 2, 10, "both requests at the device")
        t0 = time.monotonic()
        ns.cut()
        res["cut_gateway_noticed_s"], res["cut_agent_noticed_s"] = both_noticed(g0, a0, t0)
        res["cut_post_in_flight"] = post.wait(10)
        res["cut_post_answered_s"] = round(post.ended - t0, 2) if post.ended else None
        res["cut_get_in_flight"] = get.wait(15)  # retried once the device is back, else 503 after grace_ms
        res["cut_get_answered_s"] = round(get.ended - t0, 2) if get.ended else None
        t1 = time.monotonic()
        ns.mend()
        lib.wait_device(gw, "dev1.example", timeout=40)
        res["mend_device_back_s"] = round(time.monotonic() - t1, 2)
        assert res["cut_gateway_noticed_s"] <= bound and res["cut_agent_noticed_s"] <= bound, res
        assert res["cut_post_in_flight"] == 502 and res["cut_post_answered_s"] <= bound, res
        assert res["cut_get_in_flight"] in (200, 502, 503), res

        # 2. The agent frozen (SIGSTOP): the gateway notices by its PING; the POST in flight gets 502.
        g0 = log_count(gw.proc, "peer unresponsive")
        post = InFlight(gw.public_port, "POST", "/sleep/30000", "dev1.example")
        lib.wait_until(lambda: streams_in_flight(gw.admin_port, "dev1.example") >= 1, 10, "the POST at the device")
        t0 = time.monotonic()
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            res["agent_frozen_gateway_noticed_s"] = noticed(gw.proc, g0, t0, "the gateway to notice the frozen agent")
            res["agent_frozen_post_in_flight"] = post.wait(10)
            res["agent_frozen_post_answered_s"] = round(post.ended - t0, 2) if post.ended else None
            t503 = time.monotonic()
            st = lib.request(gw.public_port, "GET", "/device", "dev1.example", timeout=20).status
            res["agent_frozen_new_request"] = st
            res["agent_frozen_new_request_s"] = round(time.monotonic() - t503, 2)
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        t1 = time.monotonic()
        lib.wait_device(gw, "dev1.example", timeout=40)
        res["agent_thawed_back_s"] = round(time.monotonic() - t1, 2)
        assert res["agent_frozen_gateway_noticed_s"] <= bound, res
        assert res["agent_frozen_post_in_flight"] == 502 and res["agent_frozen_post_answered_s"] <= bound, res
        assert res["agent_frozen_new_request"] == 503, res

        # 3. The gateway frozen (SIGSTOP): the agent notices by its PING and re-dials; a user
        #    request in flight cannot be answered by a frozen gateway, but it is answered
        #    (502) as soon as the gateway runs again, not left to the response timeout.
        a0 = log_count(agent, "peer unresponsive")
        post = InFlight(gw.public_port, "POST", "/sleep/30000", "dev1.example")
        lib.wait_until(lambda: streams_in_flight(gw.admin_port, "dev1.example") >= 1, 10, "the POST at the device")
        t0 = time.monotonic()
        os.kill(gw.proc.pid, signal.SIGSTOP)
        try:
            res["gateway_frozen_agent_noticed_s"] = noticed(agent, a0, t0, "the agent to notice the frozen gateway")
        finally:
            os.kill(gw.proc.pid, signal.SIGCONT)
        t1 = time.monotonic()
        res["gateway_thawed_post_in_flight"] = post.wait(10)
        res["gateway_thawed_post_answered_s"] = round(post.ended - t1, 2) if post.ended else None
        lib.wait_device(gw, "dev1.example", timeout=40)
        res["gateway_thawed_device_back_s"] = round(time.monotonic() - t1, 2)
        log(f"netns: {json.dumps(res)}")
        assert res["gateway_frozen_agent_noticed_s"] <= bound, res
        assert res["gateway_thawed_post_in_flight"] == 502, res
        return res
    finally:
        pm.stop_all()
        ns.close()
