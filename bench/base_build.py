"""Cold base build: picluster's base image versus a plain mmdebstrap of the same packages.

Run as root on the build machine (about 20 minutes; both builds run one after the other in the
same run, so they see the same mirror and the same machine):

    sudo .venv/bin/python bench/base_build.py

Prints wall-clock seconds for each, and the base image's size and allocated size.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.image import base, debian
from builder.image.context import BuildContext
from builder.progress import Reporter
from builder.run import Runner
from builder.spec.load import load_cluster

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


def plain_mmdebstrap(root: Path) -> float:
    cluster = load_cluster(CLUSTER)
    command = [
        "mmdebstrap", "--mode=root", "--variant=apt", f"--arch={cluster.base.arch}",
        f"--include={','.join(debian.packages(cluster))}",
        cluster.base.suite, str(root), *debian.apt_sources(cluster.base.suite),
    ]  # fmt: skip
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def picluster_base(cache: Path) -> tuple[float, Path]:
    cluster = load_cluster(CLUSTER)
    start = time.monotonic()
    built = base.ensure_base(
        cluster, BuildContext(cache, cache, Reporter(stream=None), Runner(), rebuild_base=True)
    )
    return time.monotonic() - start, built.image


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="picluster-bench-", dir="/var/tmp") as scratch:
        work = Path(scratch)
        ours, image = picluster_base(work / "cache")
        plain = plain_mmdebstrap(work / "plain-root")
        stat = image.stat()
        print(f"picluster base build (cold)      {ours:8.1f} s")
        print(f"plain mmdebstrap, same packages   {plain:8.1f} s")
        print(f"speed-up                          {plain / ours:8.2f} x")
        print(f"base image size                   {stat.st_size / 2**30:8.2f} GiB")
        print(f"base image allocated              {stat.st_blocks * 512 / 2**30:8.2f} GiB")
        base.remove_tree(work / "plain-root")


if __name__ == "__main__":
    main()
