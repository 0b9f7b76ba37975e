"""kill -9 of the gateway under user load from 1,000 simulated devices (issue 8):
every device back and requests succeeding again within a bound, and no request
answered by the wrong device at any point. Numbers: `python3 bench/faults.py --only kill9`."""

import faults_lib


def test_gateway_sigkill_under_load_every_device_back_never_the_wrong_one(tmp_path):
    res = faults_lib.run_kill9(tmp_path, devices=1000, load_threads=8, back_limit=45)
    assert res["wrong_device"] == 0 and res["hung"] == 0
    assert res["kill_to_first_success_s"] is not None and res["kill_to_first_success_s"] < 10, res
