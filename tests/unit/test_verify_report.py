"""`picluster verify`'s report: a check-by-node table, the failures with their fixes, the reasons
for skipping, and a count."""

from __future__ import annotations

import pytest

from builder.cli import main
from builder.cluster.verify import Progress, format_report
from tests.support.project import BUNDLED

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


def test_progress_follows_the_report_as_pytest_writes_it() -> None:
    """The count comes at most every 5 s and only when it moved; a line cut mid-write waits for its end."""
    passed, failed = (
        '{"node": "cp1", "check": "hostname", "outcome": "passed", "message": ""}\n',
        '{"node": "w1", "check": "hostname", "outcome": "failed", "message": "not w1"}\n',
    )
    progress = Progress(every=5.0)
    assert progress.feed('{"planned": 4}\n' + passed[:30], elapsed=1.0) is None
    assert progress.line(elapsed=1.0) == "checks: 0/4 done (1 s)"
    assert progress.feed(passed[30:], elapsed=4.9) is None
    assert progress.feed(failed, elapsed=6.2) == "checks: 2/4 done, 1 failed (6 s)"
    assert progress.feed("", elapsed=20.0) is None
    assert progress.feed(passed.replace("hostname", "swap off"), elapsed=20.0) == (
        "checks: 3/4 done, 1 failed (20 s)"
    )
    assert [r["outcome"] for r in progress.results] == ["passed", "failed", "passed"]
