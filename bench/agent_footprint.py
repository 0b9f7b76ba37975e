#!/usr/bin/env python3
"""device-agent footprint benchmark (issue 3's targets). Not a test: it prints
numbers. Run after scripts/build:

    python3 bench/agent_footprint.py [--agent PATH] [--unreachable-seconds 300]

Measures, for the given agent binary (default: the Embedded build):
  - stripped size;
  - resident memory idle with 2 mTLS connections;
  - peak resident memory while serving 64 concurrent downloads and a 1 GiB download;
  - peak resident memory during a 1 GiB download read slowly, and a 1 GiB upload;
  - CPU time while the gateway is unreachable (connection refused) for N seconds.
Everything runs on 127.0.0.1, against the release fleet-gateway
(`swift build -c release --product fleet-gateway`; the debug one is too slow
to load the agent).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import e2e_lib as lib  # noqa: E402


def download(port: int, path: str, slow: bool = False) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("GET", path, headers={"Host": "dev1.example"})
    r = c.getresponse()
    n = 0
    while True:
        b = r.read(64 * 1024)
        if not b:
            break
        n += len(b)
        if slow:
            time.sleep(0.001)  # a reader at roughly 50 MB/s, far below the tunnel's speed
    c.close()
    return n


def upload(port: int, size: int) -> dict:
    block = bytes(1 << 20)

    def body():
        left = size
        while left > 0:
            k = min(left, len(block))
            yield block[:k]
            left -= k
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/upload", body=body(), headers={"Host": "dev1.example", "Content-Length": str(size)})
    r = c.getresponse()
    doc = json.loads(r.read())
    c.close()
    return doc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", default=str(REPO / ".build-embedded" / "device-agent"))
    ap.add_argument("--unreachable-seconds", type=int, default=300)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    os.environ["RH_AGENT"] = args.agent
    release = REPO / ".build" / "release"
    if not (release / "fleet-gateway").exists():
        sys.exit("build the release gateway first: swift build -c release --product fleet-gateway")
    os.environ["RH_BIN"] = str(release)
    out: dict = {"agent": args.agent}
    stripped = Path(tempfile.mkdtemp()) / "agent"
    subprocess.run(["strip", "-o", stripped, args.agent], check=True)
    out["stripped_bytes"] = stripped.stat().st_size

    work = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    pki = lib.make_pki(work)
    pm = lib.ProcessManager(work / "logs")
    api = lib.LocalAPI("dev1.example")
    try:
        gw = lib.start_gateway(pm, pki, log_level="notice")

        def fresh_agent(name):
            """Each scenario gets a new agent, so one scenario's peak is not the next one's floor."""
            a = lib.start_agent(pm, gw.device_port, pki=pki, device="dev1.example", local_port=api.port,
                                connections=2, log_level="notice", name=name)
            lib.wait_until(lambda: a.log().count("connected to") >= 2, 15, "two connections")
            time.sleep(0.5)
            return a

        agent = fresh_agent("idle")
        time.sleep(1.0)
        out["idle_rss_mib"] = round(lib.rss_mib(agent.pid), 2)
        agent.stop()

        agent = fresh_agent("busy")
        s = lib.PeakRSS({"agent": agent.pid})
        big = threading.Thread(target=lambda: out.__setitem__("big_download_bytes",
                                                                download(gw.public_port, "/zeros/1073741824")))
        big.start()
        stop = time.monotonic() + 10
        counts = [0] * 64

        def worker(i):
            while time.monotonic() < stop:
                counts[i] += download(gw.public_port, "/bytes/262144") > 0
        ws = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        big.join()
        out["busy_peak_rss_mib"] = round(s.stop()["agent"], 2)
        out["busy_requests"] = sum(counts)
        agent.stop()

        agent = fresh_agent("slow-reader")
        s = lib.PeakRSS({"agent": agent.pid})
        t0 = time.monotonic()
        out["slow_download_bytes"] = download(gw.public_port, "/zeros/1073741824", slow=True)
        out["slow_download_seconds"] = round(time.monotonic() - t0, 1)
        out["slow_download_peak_rss_mib"] = round(s.stop()["agent"], 2)
        agent.stop()

        agent = fresh_agent("upload")
        s = lib.PeakRSS({"agent": agent.pid})
        t0 = time.monotonic()
        doc = upload(gw.public_port, 1 << 30)
        out["upload_seconds"] = round(time.monotonic() - t0, 1)
        out["upload_bytes_seen_by_api"] = doc["length"]
        out["upload_peak_rss_mib"] = round(s.stop()["agent"], 2)
        agent.stop()

        # Gateway unreachable: connection refused on every dial.
        port = lib.closed_port()
        lonely = pm.start("agent-unreachable", [args.agent, "--gateway", f"127.0.0.1:{port}", "--plaintext",
                                                "--connections", "2"])
        time.sleep(args.unreachable_seconds)
        out["unreachable_seconds"] = args.unreachable_seconds
        out["unreachable_cpu_seconds"] = round(lib.cpu_seconds(lonely.pid), 3)
        out["unreachable_log_lines"] = len(lonely.log().splitlines())
    finally:
        pm.stop_all()
        api.close()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
