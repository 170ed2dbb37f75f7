"""How long a client of the control_plane_endpoint gets no answer when the control plane holding
the virtual IP fails, with Debian's real keepalived and haproxy and the rendered configuration
(tests/support/virtual_ip_lab.py: three control planes in network namespaces).

Run as root (network namespaces), about a minute per round:

    sudo .venv/bin/python bench/virtual_ip_failover.py [ROUNDS]

Two failures of cp1, the holder, each in a fresh lab: its API server stops (keepalived's check
fails, haproxy marks it down), and it loses power (every program killed, its link down). The
client asks for /healthz through the endpoint every POLL_S for WINDOW_S after the failure, each
request allowed REQUEST_TIMEOUT_S; the outage is from the failure to the end of the last request
that got no answer (haproxy's round robin may answer the first request and fail the next, so the
first answer does not end it). Prints the median and worst over the rounds, and the failed
requests, beside the figures of the previous run (kept in bench/virtual_ip_failover.json).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.virtual_ip_lab import REQUEST_TIMEOUT_S, Lab, virtual_ip_lab

RESULTS = Path(__file__).with_suffix(".json")
POLL_S = 0.1
SETTLE_S = 30.0
WINDOW_S = 20.0
"""Longer than keepalived's and haproxy's checks take to act, as rendered."""
FAILURES: dict[str, Callable[[Lab], None]] = {
    "API server stops": lambda lab: lab.kill("cp1", "apiserver"),
    "holder loses power": lambda lab: lab.power_off("cp1"),
}


def outage(lab: Lab, fail: Callable[[Lab], None]) -> tuple[float, int]:
    """Seconds from the failure to the end of the last unanswered request, and how many failed."""
    lab.wait_for("cp1 holds the virtual IP", lambda: lab.holders() == ["cp1"], SETTLE_S)
    lab.wait_for("the client gets /healthz", lambda: lab.request() == 200, SETTLE_S)
    fail(lab)
    failed_at = time.monotonic()
    last_failure, failures = failed_at, 0
    while time.monotonic() - failed_at < WINDOW_S:
        if lab.request() != 200:
            last_failure, failures = time.monotonic(), failures + 1
        time.sleep(POLL_S)
    if last_failure > failed_at + WINDOW_S - REQUEST_TIMEOUT_S - POLL_S:
        raise SystemExit(f"still no answer {WINDOW_S} s after cp1 failed")
    return last_failure - failed_at, failures


def main(rounds: int) -> None:
    figures: dict[str, list[tuple[float, int]]] = {name: [] for name in FAILURES}
    for _ in range(rounds):
        for name, fail in FAILURES.items():
            with tempfile.TemporaryDirectory() as folder, virtual_ip_lab(Path(folder) / "lab") as lab:
                figures[name].append(outage(lab, fail))
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    now = {
        name: {
            "median_s": round(statistics.median(s for s, _ in found), 1),
            "worst_s": round(max(s for s, _ in found), 1),
            "failed_requests": max(n for _, n in found),
            "rounds": len(found),
        }
        for name, found in figures.items()
    }
    for name, figure in now.items():
        before = previous.get(name)
        was = f"  (previous: median {before['median_s']} s, worst {before['worst_s']} s)" if before else ""
        print(f"{name}: client-visible outage median {figure['median_s']} s, worst {figure['worst_s']} s, "
              f"at most {figure['failed_requests']} failed requests, over {rounds} rounds{was}")  # fmt: skip
    RESULTS.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
