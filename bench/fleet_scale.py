#!/usr/bin/env python3
"""Fleet-scale benchmark (issue 5). Not a test: it prints and writes numbers.

    swift build -c release --product fleet-gateway --product device-sim
    python3 bench/fleet_scale.py [--devices 10000] [--out bench/results/fleet-scale.json]

One fleet-gateway and one device-sim (release builds) on 127.0.0.1, N devices
with one mutual-TLS connection each:
  - the time until all N are connected;
  - 1,000 requests to random device hostnames through the public listener, each
    checked to come from the device it named;
  - gateway resident memory per device connection, and the simulator's;
  - health checks of every device at the default interval (10 s), with the
    gateway's CPU use over three rounds;
  - a gateway restart (SIGTERM, start again): the time until every device is
    back, the dial attempts it took, and the curve of connected devices.
The same steps, with the same assertions, run in CI with 1,000 devices
(tests/e2e/test_fleet_scale.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
os.environ.setdefault("RH_BIN", str(REPO / ".build" / "release"))
import fleet_lib  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=1_000)
    ap.add_argument("--check-interval-ms", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fleet-scale.json")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < a.devices + 1000:
        print(f"the open-files limit ({hard}) is too low for {a.devices} devices", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as d:
        res = fleet_lib.run_fleet(Path(d), a.devices, requests=a.requests, check_interval_ms=a.check_interval_ms,
                                  connect_timeout=600, restart_limit=60)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    curve = res.pop("restart_curve")
    print(json.dumps(res, indent=2))
    print("connected devices after the restart (ms since the simulator started: connected, dials):")
    for p in curve:
        print(f"  {p['ms']:>8} ms  {p['connected']:>6}  {p['dials']:>7}")
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
