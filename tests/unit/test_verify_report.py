"""`picluster verify`'s report: a check-by-node table, the failures with their fixes, the reasons
for skipping, and a count."""

from __future__ import annotations

import pytest

from builder.cli import main
from builder.verify import format_report
from tests.conftest import BUNDLED

RESULTS = [
    {"node": "cp1", "check": "hostname", "outcome": "passed", "message": ""},
    {"node": "w1", "check": "hostname", "outcome": "failed",
     "message": "hostname is 'raspberrypi', not 'w1'; fix: rebuild and reflash this card"},
    {"node": "cp1", "check": "module loaded vxlan", "outcome": "passed", "message": ""},
    {"node": "w1", "check": "module loaded vxlan", "outcome": "passed", "message": ""},
    {"node": "cp1", "check": "kubelet running with --node-ip", "outcome": "skipped",
     "message": "Kubernetes is not installed on this node (agent phase 'waiting: packages')"},
    {"node": "w1", "check": "kubelet running with --node-ip", "outcome": "passed", "message": ""},
]  # fmt: skip


def test_report_is_a_table_then_failures_skips_and_counts() -> None:
    assert format_report(RESULTS).splitlines() == [
        "check                           cp1   w1",
        "hostname                        ok    FAIL",
        "module loaded vxlan             ok    ok",
        "kubelet running with --node-ip  skip  ok",
        "",
        "FAIL w1: hostname: hostname is 'raspberrypi', not 'w1'; fix: rebuild and reflash this card",
        "",
        "skip cp1: Kubernetes is not installed on this node (agent phase 'waiting: packages'): "
        "kubelet running with --node-ip",
        "",
        "3 checks on 2 nodes: 4 ok, 1 failed, 1 skipped",
    ]


def test_verify_refuses_an_unknown_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "-f", str(BUNDLED), "--node", "w9"]) == 2
    error = capsys.readouterr().err
    assert "--node w9: no such node" in error and "choose from cp1, w1, w2" in error
