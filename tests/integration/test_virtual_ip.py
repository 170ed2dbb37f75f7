"""Debian's real keepalived and haproxy, with the rendered configuration of three control planes,
serve the control_plane_endpoint and move it when the control plane holding it fails
(tests/support/virtual_ip_lab.py). Waits are bounded; how long the client saw no answer is
measured in bench/virtual_ip_failover.py, not asserted here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.virtual_ip_lab import Lab, missing_requirements, virtual_ip_lab

pytestmark = pytest.mark.integration

SETTLE_S = 30.0
"""Longest wait for an election, a check to fail or haproxy to mark a server down: keepalived's
timings as rendered are a few seconds each."""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    missing = missing_requirements()
    if missing:
        pytest.skip("the virtual IP lab needs: " + "; ".join(missing) + " (make test installs the packages)")
    with virtual_ip_lab(tmp_path / "lab") as started:
        started.wait_for(
            "cp1, the first control plane, holds the virtual IP",
            lambda: started.holders() == ["cp1"],
            SETTLE_S,
        )
        started.wait_for(
            "the client gets /healthz through the endpoint", lambda: started.request() == 200, SETTLE_S
        )
        yield started


def test_the_endpoint_moves_when_the_api_server_of_its_holder_stops(lab: Lab) -> None:
    lab.kill("cp1", "apiserver")
    lab.wait_for("cp2, the next in order, takes the virtual IP", lambda: lab.holders() == ["cp2"], SETTLE_S)
    lab.wait_for("the client gets /healthz again", lambda: lab.request() == 200, SETTLE_S)


def test_the_endpoint_moves_when_its_holder_dies_and_only_one_plane_holds_it(lab: Lab) -> None:
    lab.kill("cp1", "keepalived", "haproxy", "apiserver")
    lab.wait_for("cp2 takes the virtual IP", lambda: "cp2" in lab.holders(), SETTLE_S)
    assert lab.holders() == ["cp2"]
    lab.wait_for("the client gets /healthz again", lambda: lab.request() == 200, SETTLE_S)
    # cp2 dies as well; cp3, the last, holds it, and haproxy there reaches its own API server only
    lab.kill("cp2", "keepalived", "haproxy", "apiserver")
    lab.wait_for("cp3 takes the virtual IP", lambda: lab.holders() == ["cp3"], SETTLE_S)
    lab.wait_for("the client gets /healthz through cp3", lambda: lab.request() == 200, SETTLE_S)


def test_the_endpoint_moves_when_its_holder_loses_power(lab: Lab) -> None:
    lab.power_off("cp1")
    lab.wait_for("cp2 takes the virtual IP", lambda: "cp2" in lab.holders(), SETTLE_S)
    lab.wait_for("the client gets /healthz through cp2", lambda: lab.request() == 200, SETTLE_S)
