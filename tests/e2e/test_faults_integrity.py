"""Integrity through the tunnel while its connections are cut and re-dialed
(issue 8): every completed response byte-identical (checksums), every failure
reported to the user (an error status or a broken connection, never a short
response that looks whole, never a hang), and no non-idempotent request run
twice on the device (the local API counts each request's X-Request-Id).

CI size: 600 requests, bodies of 0 bytes to 2 MiB. The full run (10,000
requests, up to 16 MiB): `python3 bench/faults.py --only integrity`."""

import faults_lib


def test_random_bodies_survive_connection_cuts(tmp_path):
    res = faults_lib.run_integrity(tmp_path, requests=600, max_body=2 << 20, cut_every=0.4, timeout=60)
    assert res["completed"] >= 300, res  # the cuts must not starve the run
    assert res["corrupt"] == 0 and res["hung"] == 0 and res["duplicates_on_device"] == 0
