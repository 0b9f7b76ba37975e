"""The path between agent and gateway cut without a FIN, and either side frozen
(issue 8). The agent runs in a network namespace behind a veth pair whose link
is set down: packets are dropped, nobody sends FIN or RST. Each side must notice
within its idle_ping bound (about 2.25 x idle_ping_ms), and requests in flight
get a prompt error instead of waiting for response_timeout_ms.
Needs root (`ip netns add`); skipped, with the reason, where that fails."""

import os

import pytest

import faults_lib


def test_cut_path_and_frozen_peers_are_noticed_and_requests_fail_promptly(tmp_path):
    why = "not root" if os.geteuid() != 0 else faults_lib.NetNS.usable()
    if why:
        pytest.skip("network namespaces unavailable: " + why)
    res = faults_lib.run_netns(tmp_path, ping_ms=1000)
    assert res["cut_post_in_flight"] == 502
    assert res["agent_frozen_post_in_flight"] == 502
    assert res["gateway_thawed_post_in_flight"] == 502
