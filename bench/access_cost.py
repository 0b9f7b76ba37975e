#!/usr/bin/env python3
"""The gateway's cost of access control, in instructions per request (valgrind's
callgrind counts instructions, not seconds: repeatable on a shared or virtual
machine where req/s moves by ±30 % between rounds).

    swift build -c release --product fleet-gateway --product device-agent
    python3 bench/access_cost.py [--requests 4000] [--gateway-bin .build/release/fleet-gateway]
                                 [--kinds none,token,jwt] [--keep DIR]

For each path (no access policy; a token + bench/compare.py's 20-rule policy; an
ES256 JWT + the same policy) it starts the gateway under callgrind and an agent
over mTLS in front of a local API, sends warm-up requests, zeroes the counters,
sends --requests 1 KiB GETs with h2load (HTTP/2, h2c, 16 clients) and then with
one keep-alive HTTP/1.1 client, dumps, and prints the gateway's instructions per
request and the ratio to the path without a policy. Needs valgrind, h2load.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
sys.path.insert(0, str(HERE))

import e2e_lib as lib  # noqa: E402
import compare  # noqa: E402  (BENCH_POLICY, access_setup, HOST)


def callgrind_total(out_file: Path) -> int:
    text = out_file.read_text(errors="replace")
    m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    if not m:
        raise SystemExit(f"no totals in {out_file}")
    return int(m.group(1))


def h1_requests(port: int, n: int, auth: str) -> None:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Host": compare.HOST}
    if auth:
        headers["Authorization"] = auth
    for _ in range(n):
        c.request("GET", "/bytes/1024", headers=headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"HTTP/1.1 answered {r.status}")
    c.close()


def h2_requests(port: int, n: int, auth: str) -> None:
    cmd = ["h2load", "-n", str(n), "-c", "16", "-m", "4", "-H", f":authority: {compare.HOST}"]
    if auth:
        cmd += ["-H", f"authorization: {auth}"]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/bytes/1024"], capture_output=True, text=True, timeout=600).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not m or int(m.group(1)) != n:
        raise SystemExit("h2load: not every request succeeded:\n" + out)


def measure(kind: str, args, work: Path, n: int) -> tuple[float, float]:
    work.mkdir(parents=True, exist_ok=True)
    pki = lib.make_pki(work / "pki")
    api = lib.LocalAPI(compare.HOST)
    pm = lib.ProcessManager(work)
    try:
        extra, auth = ([], "") if kind == "none" else compare.access_setup(work, Path(args.gateway_bin), kind)
        out = work / "callgrind.out"
        dport, pport = lib.free_port(), lib.free_port()
        gw = pm.start("gateway", ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=yes",
                                  args.gateway_bin, "--listen-devices", f"127.0.0.1:{dport}",
                                  "--listen-public", f"127.0.0.1:{pport}", "--listen-admin", "off",
                                  "--ca", pki.ca, "--cert", pki.gateway_cert, "--key", pki.gateway_key,
                                  "--access-log=false", "--check-interval-ms", "0", "--log-level", "notice", *extra])
        lib.wait_until(lambda: lib.port_open(pport), 120, "the gateway under valgrind to listen")
        pm.start("agent", [args.agent_bin, "--gateway", f"127.0.0.1:{dport}", "--local", f"127.0.0.1:{api.port}",
                           "--connections", "2", "--name", compare.HOST, "--ca", pki.ca,
                           "--cert", pki.device_cert(compare.HOST), "--key", pki.device_key(compare.HOST),
                           "--server-name", "gw.example", "--log-level", "notice"])
        hdrs = {"Authorization": auth} if auth else None

        def up():
            try:
                return lib.request(pport, "GET", "/bytes/16", compare.HOST, headers=hdrs).status == 200
            except OSError:
                return False
        lib.wait_until(up, 120, "the device through the gateway")
        h2_requests(pport, 400, auth)  # warm-up (HPACK tables, pools, caches)
        results = []

        def control(*what):
            # Valgrind takes a command when the process next runs: a request wakes it.
            c = subprocess.Popen(["callgrind_control", *what, str(gw.popen.pid)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            for _ in range(100):
                up()
                try:
                    c.wait(timeout=0.2)
                    return
                except subprocess.TimeoutExpired:
                    pass
            c.kill()
            raise SystemExit("callgrind_control " + " ".join(what) + " got no answer")
        for name, fn in (("h2", h2_requests), ("h1", h1_requests)):
            control("-z")
            fn(pport, n, auth)
            control("-d", name)
            dumps = [d for d in glob.glob(str(out) + ".*") if os.path.getsize(d) > 0]
            dumps.sort(key=os.path.getmtime)
            results.append(callgrind_total(Path(dumps[-1])) / n)
            if args.keep:  # for callgrind_annotate: where the instructions go
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(dumps[-1], Path(args.keep) / f"callgrind.{kind}.{name}")
            for d in dumps:
                os.unlink(d)
        return results[0], results[1]
    finally:
        pm.stop_all()
        api.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--gateway-bin", default=".build/release/fleet-gateway")
    ap.add_argument("--agent-bin", default=".build/release/device-agent")
    ap.add_argument("--kinds", default="none,token,jwt", help="paths to measure (comma-separated)")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps there (callgrind.KIND.h2|h1)")
    args = ap.parse_args()
    os.environ["RH_BIN"] = str(Path(args.gateway_bin).resolve().parent)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="access-cost-") as tmp:
        for kind in args.kinds.split(","):
            rows[kind] = measure(kind, args, Path(tmp) / kind, args.requests)
    print(f"gateway instructions per 1 KiB request ({args.requests} requests each, callgrind):")
    print("| path | HTTP/2 (h2load) | ratio | HTTP/1.1 keep-alive | ratio |")
    print("|---|---|---|---|---|")
    for kind, label in (("none", "no access policy"), ("token", "token + 20 rules"), ("jwt", "ES256 JWT + 20 rules")):
        if kind not in rows or "none" not in rows:
            continue
        h2, h1 = rows[kind]
        print(f"| {label} | {h2:,.0f} | {h2 / rows['none'][0]:.3f} | {h1:,.0f} | {h1 / rows['none'][1]:.3f} |")


if __name__ == "__main__":
    main()
