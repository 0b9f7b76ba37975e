"""The fleet-scale scenario in CI size: one gateway and one device-sim with 1,000
devices (mutual TLS, one connection each). The same steps and assertions as
bench/fleet_scale.py, which runs it with 10,000: every device connects, 1,000
requests to random devices are each answered by the device they named, health
checks reach every device, and after a gateway restart every device is back
within 60 s."""

from __future__ import annotations

import resource

import fleet_lib


def test_a_thousand_devices(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    res = fleet_lib.run_fleet(tmp_path, 1000, requests=1000, check_interval_ms=2000, health_rounds=2,
                              connect_timeout=120, restart_limit=60)
    assert res["requests_right_device"] == 1000
    assert res["devices_healthy"] == 1000
    assert res["restart_all_back_seconds"] <= 60
    # Jittered backoff: a restart costs each device a few dials, not a storm.
    assert res["restart_dials_per_device"] <= 6, res["restart_dials_per_device"]
