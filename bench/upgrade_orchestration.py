"""picluster upgrade's own time per node: everything but the node's programs, which are stood in
(tests/support/upgrade_lab.py: kubeadm, apt and systemctl answer at once, the API server is a
stand-in on a LAN of the bench's own). What is left is picluster's share of an upgrade: starting
each node's agent (here locally, on a Pi over SSH as well), the drain's API calls and polling, the
wait for Ready, and recording each step.

Run as root (a network namespace), a few seconds a round:

    sudo .venv/bin/python bench/upgrade_orchestration.py [WORKERS] [ROUNDS]

Prints, for a cluster of one control plane and WORKERS workers, the median and worst per node
over the rounds, beside the figures of the previous run (kept in bench/upgrade_orchestration.json).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.progress import silent
from tests.support.api_standin import on_a_lan_of_its_own
from tests.support.upgrade_lab import upgrade_lab

RESULTS = Path(__file__).with_suffix(".json")


def one_round(workers: int) -> float:
    """Seconds per node of one whole upgrade."""
    with (
        tempfile.TemporaryDirectory(prefix="picluster-bench-") as scratch,
        on_a_lan_of_its_own() as lan,
        upgrade_lab(Path(scratch), lan, workers) as lab,
    ):
        start = time.monotonic()
        lab.run(silent())
        return (time.monotonic() - start) / (workers + 1)


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    per_node = [one_round(workers) for _ in range(rounds)]
    now = {"workers": workers, "rounds": rounds, "median_s_per_node": round(statistics.median(per_node), 2),
           "worst_s_per_node": round(max(per_node), 2)}  # fmt: skip
    before = json.loads(RESULTS.read_text()) if RESULTS.exists() else None
    print(f"{'':24}{'this run':>12}{'previous':>12}")
    for key in ("median_s_per_node", "worst_s_per_node"):
        previous = f"{before[key]:.2f}" if before else "-"
        print(f"{key:24}{now[key]:>12.2f}{previous:>12}")
    RESULTS.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
