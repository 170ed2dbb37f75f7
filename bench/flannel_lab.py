"""The real flanneld v0.10.0 on the flannel lab's three nodes (tests/support/flannel_lab.py):
seconds from flanneld's start to a lease, and to the first pod-to-pod ping across nodes.

Run as root (network namespaces); the first run builds flanneld (about 2 minutes), later ones
use the cache:

    sudo .venv/bin/python bench/flannel_lab.py

Prints, per node, start to lease for the first start (flanneld annotates its node) and for a
restart of all three at once (the annotations already agree); then start to the first ping from
cp1's pod to w1's, with each node's pod added by cnitool as soon as the leases are there.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.image.context import default_cache
from tests.support.flannel_lab import flannel_lab


def main() -> None:
    with tempfile.TemporaryDirectory() as folder, flannel_lab(Path(folder), default_cache()) as lab:
        started = min(node.started for node in lab.nodes.values())
        pods = {name: lab.add_pod(name) for name in lab.nodes}
        ping = [
            "ip",
            "netns",
            "exec",
            pods["cp1"].netns,
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            str(pods["w1"].address.ip),
        ]
        while subprocess.run(ping, capture_output=True).returncode != 0:
            time.sleep(0.05)
        first_ping = time.monotonic() - started
        lab.stop_flanneld(*lab.nodes)
        for name in lab.nodes:
            lab.start_flanneld(name)
        restarted = lab.wait_for_leases(lab.nodes)
        print(f"{'node':<5} {'start -> lease':>15} {'restart -> lease':>17}")
        for name in lab.nodes:
            print(f"{name:<5} {lab.lease_seconds[name]:>13.2f} s {restarted[name]:>15.2f} s")
        print(f"first flanneld start -> first ping cp1 pod -> w1 pod: {first_ping:.2f} s")


if __name__ == "__main__":
    main()
