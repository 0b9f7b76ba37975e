"""Fixtures for the loopback end-to-end tests.

Run from the repository root:   python3 -m pytest tests/e2e -q
Programs:  $RH_BIN (default <repo>/.build/debug) holds fleet-gateway and device-agent;
           $RH_AGENT (default $RH_BIN/device-agent) picks another agent build, e.g.
           .build-embedded/release/device-agent.
Interop:   $HAPROXY (HAProxy >= 3.2) and $RH_SHARED (default <repo>/../shared).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e_lib as lib  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "haproxy: interoperability test against HAProxy (needs $HAPROXY)")


def pytest_report_header(config):
    return [f"rh-e2e: gateway={lib.gateway_bin()} agent={lib.agent_bin()}"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of every running program's log to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        managers = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, lib.ProcessManager)]
        procs = [p for pm in managers for p in pm.procs] or lib.live_procs()
        for p in procs:
            rep.sections.append((f"log of {p.name} (pid {p.pid}, {p.log_path})", p.tail(40)))


@pytest.fixture(scope="session", autouse=True)
def programs():
    missing = [str(p) for p in (lib.gateway_bin(), lib.agent_bin()) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail("programs not found: " + ", ".join(missing)
                    + " (run `swift build`, or set RH_BIN / RH_AGENT)", pytrace=False)
    return lib.gateway_bin(), lib.agent_bin()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> lib.PKI:
    """Fleet CA + gateway cert (gw.example, SAN 127.0.0.1), devices dev1/dev2.example,
    a server cert for the wrong name (other.example), and a second, independent CA
    that also issued a dev1.example certificate."""
    return lib.make_pki(tmp_path_factory.mktemp("pki"))


def _manager(tmp_path_factory, name):
    return lib.ProcessManager(tmp_path_factory.mktemp("logs-" + name))


@pytest.fixture
def procs(request, tmp_path_factory):
    pm = _manager(tmp_path_factory, request.node.name[:40])
    yield pm
    pm.stop_all()


@pytest.fixture(scope="module")
def module_procs(request, tmp_path_factory):
    pm = _manager(tmp_path_factory, request.module.__name__.split(".")[-1])
    yield pm
    pm.stop_all()


class _APIs:
    def __init__(self):
        self.servers: list[lib.LocalAPI] = []

    def __call__(self, device: str) -> lib.LocalAPI:
        s = lib.LocalAPI(device)
        self.servers.append(s)
        return s

    def close(self):
        for s in self.servers:
            s.close()


@pytest.fixture
def api():
    """api("dev1.example") -> a running local API that answers as that device."""
    a = _APIs()
    yield a
    a.close()


@pytest.fixture(scope="module")
def module_api():
    a = _APIs()
    yield a
    a.close()
