"""admin_token (issue 13): every request to the admin listener needs
`Authorization: Bearer TOKEN`, else 401 with a Bearer challenge; the gateway
refuses to start with the admin listener off loopback and no token."""

from __future__ import annotations

import http.client
import json
import subprocess

import e2e_lib as lib

TOKEN = "e2e-admin-token-0123456789abcdef"


def admin(gw, method, path, token=None):
    c = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    headers = {"Authorization": "Bearer " + token} if token is not None else {}
    c.request(method, path, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, r.getheader("WWW-Authenticate"), body


def test_admin_requests_need_the_token(procs, api, tmp_path):
    conf = tmp_path / "gw.conf"
    conf.write_text(f"admin_token = {TOKEN}\nmetrics_per_device = true\n")
    gw = lib.start_gateway(procs, None, plaintext_name="dev1.example", extra=["--config", conf])
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, device="dev1.example", local_port=a.port, plaintext=True, connections=1)
    lib.wait_device(gw, "dev1.example")
    for method, path in [("GET", "/"), ("GET", "/devices"), ("GET", "/devices/dev1.example"), ("GET", "/metrics"),
                         ("POST", "/devices/dev1.example/disconnect")]:
        for token in (None, "wrong-" + TOKEN, TOKEN[:-1], TOKEN + "x"):
            status, challenge, _ = admin(gw, method, path, token)
            assert status == 401 and challenge == 'Bearer realm="fleet-gateway-admin"', (method, path, token, status)
    status, _, body = admin(gw, "GET", "/devices/dev1.example", TOKEN)
    d = json.loads(body)
    assert status == 200 and d["name"] == "dev1.example" and len(d["connections"]) == 1
    assert "last_access" in d
    status, _, body = admin(gw, "GET", "/metrics", TOKEN)
    text = body.decode()
    assert status == 200 and "rhttp_devices_connected 1" in text
    assert "# TYPE rhttp_access_decisions_total counter" in text
    assert "# TYPE rhttp_device_requests_total counter" in text
    assert admin(gw, "GET", "/", TOKEN)[0] == 200
    assert admin(gw, "GET", "/devices", TOKEN)[0] == 200
    # The device was never disconnected by the refused POSTs.
    assert len(json.loads(admin(gw, "GET", "/devices/dev1.example", TOKEN)[2])["connections"]) == 1
    assert admin(gw, "POST", "/devices/dev1.example/disconnect", TOKEN)[0] == 200
    # Origin and Host rules still apply with a token.
    c = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    c.request("GET", "/metrics", headers={"Authorization": "Bearer " + TOKEN, "Origin": "http://evil.example"})
    assert c.getresponse().status == 403
    c.close()


def test_admin_off_loopback_needs_a_token(tmp_path):
    def check(*args):
        r = subprocess.run([str(lib.gateway_bin()), "--plaintext-devices", *args, "--check-config"], capture_output=True,
                           timeout=20, env=lib.child_env(), stdin=subprocess.DEVNULL)
        return r.returncode, r.stderr.decode(errors="replace")
    code, err = check("--listen-admin", "0.0.0.0:9180")
    assert code == 2 and "not a loopback address" in err and "admin_token" in err, err
    code, err = check("--listen-admin", "0.0.0.0:9180", "--admin-token", "short")
    assert code == 2 and "at least 16" not in err and "16 to 1024" in err, err
    assert check("--listen-admin", "0.0.0.0:9180", "--admin-token", TOKEN) == (0, "configuration OK\n")
    assert check("--listen-admin", "[::1]:9180")[0] == 0
