#!/usr/bin/env python3
"""Fault measurements (issue 8). Not a test: it prints numbers and writes a
Markdown table (the README's "Faults" section) and the raw JSON.

    swift build -c release --product fleet-gateway && swift build -c release --product device-sim \
      && swift build -c release --product device-agent
    python3 bench/faults.py [--only kill9|netns|integrity] [--out bench/results/faults]

  kill9      SIGKILL the gateway under user load from 1,000 simulated devices; restart it:
             time until every device is back and requests succeed, requests answered by the
             wrong device (must be 0);
  netns      the real agent in a network namespace behind a veth pair: the link set down
             (no FIN), the agent frozen, the gateway frozen (SIGSTOP): time until each side
             notices, what a request in flight gets and when; at idle_ping_ms 4000 (default)
             and 1000; needs root;
  integrity  10,000 requests, bodies 0 bytes to 16 MiB, through the real agent while its
             connections are cut (admin disconnect, agent SIGKILL) and re-dialed: completed
             byte-identical, failures reported, no POST run twice.
The same scenarios, smaller, are the CI tests tests/e2e/test_faults_*.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
os.environ.setdefault("RH_BIN", str(REPO / ".build" / "release"))
import faults_lib  # noqa: E402


def table(results: dict) -> str:
    out = ["| scenario | measured |", "|---|---|"]
    k = results.get("kill9")
    if k:
        out.append(f"| gateway `kill -9` under load, {k['devices']:,} devices (device-sim), "
                   f"{k['requests']:,} user requests | listening again {k['kill_to_listening_s']} s after the kill; "
                   f"first success {k['kill_to_first_success_s']} s; every device back {k['kill_to_all_devices_back_s']} s "
                   f"({k['dials_per_device']} dials per device); last failed request {k['kill_to_last_failed_request_s']} s; "
                   f"failures while it was away: {k['requests_during_outage_by_status']}; "
                   f"**wrong device: {k['wrong_device']}**, hung: {k['hung']} |")
    for n in results.get("netns", []):
        p = n["idle_ping_ms"]
        out.append(f"| path cut without FIN (veth link down), `idle_ping_ms` {p} | gateway noticed after "
                   f"{n['cut_gateway_noticed_s']} s, agent after {n['cut_agent_noticed_s']} s; POST in flight: "
                   f"{n['cut_post_in_flight']} after {n['cut_post_answered_s']} s; GET in flight (retried): "
                   f"{n['cut_get_in_flight']} after {n['cut_get_answered_s']} s; back {n['mend_device_back_s']} s after "
                   f"the link came up |")
        out.append(f"| agent frozen (SIGSTOP), `idle_ping_ms` {p} | gateway noticed after "
                   f"{n['agent_frozen_gateway_noticed_s']} s; POST in flight: {n['agent_frozen_post_in_flight']} after "
                   f"{n['agent_frozen_post_answered_s']} s; a new request: {n['agent_frozen_new_request']} in "
                   f"{n['agent_frozen_new_request_s']} s; back {n['agent_thawed_back_s']} s after SIGCONT |")
        out.append(f"| gateway frozen (SIGSTOP), `idle_ping_ms` {p} | agent noticed after "
                   f"{n['gateway_frozen_agent_noticed_s']} s and re-dialed; POST in flight: "
                   f"{n['gateway_thawed_post_in_flight']} {n['gateway_thawed_post_answered_s']} s after SIGCONT; "
                   f"device back {n['gateway_thawed_device_back_s']} s after SIGCONT |")
    i = results.get("integrity")
    if i:
        out.append(f"| {i['requests']:,} requests, bodies 0 B to {i['max_body'] >> 20} MiB "
                   f"({i['mib_moved']:,} MiB moved), connections cut {sum(i['cuts'].values())} times "
                   f"({i['cuts']['admin-disconnect']} admin disconnects, {i['cuts']['agent-kill-9']} agent `kill -9`) | "
                   f"completed byte-identical: {i['completed']:,}; failed and reported: {i['failed_reported']} "
                   f"({i['failed_by_kind']}); **corrupt: {i['corrupt']}, hung: {i['hung']}, POSTs run twice: "
                   f"{i['duplicates_on_device']}**; {i['seconds']} s |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["kill9", "netns", "integrity"], action="append")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--max-body", type=int, default=16 << 20)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "faults"))
    a = ap.parse_args()
    only = set(a.only or ["kill9", "netns", "integrity"])
    results: dict = {}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if Path(str(out) + ".json").exists():
        results = json.loads(Path(str(out) + ".json").read_text())  # keep the other scenarios' numbers
    with tempfile.TemporaryDirectory(prefix="rh-faults-") as tmp:
        t = Path(tmp)
        if "kill9" in only:
            print(f"== kill -9 the gateway, {a.devices} devices")
            results["kill9"] = faults_lib.run_kill9(t / "kill9", a.devices, load_threads=8)
        if "netns" in only:
            results["netns"] = []
            for ping in (4000, 1000):
                print(f"== path cut and freezes, idle_ping_ms {ping}")
                results["netns"].append(faults_lib.run_netns(t / f"netns-{ping}", ping_ms=ping))
        if "integrity" in only:
            print(f"== integrity, {a.requests} requests up to {a.max_body} bytes")
            results["integrity"] = faults_lib.run_integrity(t / "integrity", a.requests, a.max_body,
                                                            concurrency=8, cut_every=1.0, timeout=120)
    Path(str(out) + ".json").write_text(json.dumps(results, indent=2) + "\n")
    md = table(results)
    Path(str(out) + ".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
