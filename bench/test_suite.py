"""How long the README's `make test` takes in a fresh clone: cold (an empty picluster cache, so the
Debian bases, the Raspberry Pi OS stand-in, flannel's image and the Go builds of the upstream
sources are made first) and then warm (the same cache, as every later run finds it), one after
the other.

Run as root, on a quiet machine (about 80 minutes on 2 cores):

    sudo .venv/bin/python bench/test_suite.py [FOLDER]

The clone (of this checkout's HEAD) and its cache go in FOLDER (default: a new folder under
/var/tmp), with ../shared linked beside the clone as the README asks. Prints each run's wall time
and tier lines beside the previous run's figures (kept in bench/test_suite.json). A run whose
tests fail is timed and recorded all the same, marked failed, and the bench exits 1 after both.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.files import write_atomic

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_suffix(".json")
TIER = re.compile(r"^tier (\w+): (\d+) tests: .*; (.+?) \(its tests'", re.MULTILINE)


def make_test(clone: Path, cache: Path, log: Path) -> dict[str, object]:
    """One `make test` in the clone: its wall time in seconds and each tier's count and time."""
    start = time.monotonic()
    with log.open("w") as sink:
        done = subprocess.run(["make", "test"], cwd=clone, env={**os.environ, "PICLUSTER_CACHE": str(cache)},
                              stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    seconds = round(time.monotonic() - start)
    output = log.read_text(errors="replace")
    if done.returncode != 0:
        failed = "\n".join(line for line in output.splitlines() if line.startswith(("FAILED", "ERROR")))
        print(f"make test failed ({done.returncode}) after {seconds} s; {log}:\n{failed or output[-3000:]}")
    tiers = {name: f"{count} tests, {took}" for name, count, took in TIER.findall(output)}
    return {"wall_s": seconds, "tiers": tiers, "failed": done.returncode != 0}


def minutes(seconds: object) -> str:
    return f"{int(str(seconds)) // 60} min {int(str(seconds)) % 60:02d} s" if seconds is not None else "-"


def main(folder: Path) -> None:
    clone, cache = folder / "picluster", folder / "cache"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (folder / "shared").symlink_to(REPO.parent / "shared")
    cache.mkdir()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    figures: dict[str, object] = {"commit": commit}
    for run in ("cold", "warm"):
        print(f"make test, {run} cache ({cache}) ...", flush=True)
        figures[run] = make_test(clone, cache, folder / f"make-test-{run}.log")
    this_run, last_run = f"this run ({commit})", f"previous ({previous.get('commit', '-')})"
    print(f"\n{'':26} {this_run:>24} {last_run:>24}")
    for run in ("cold", "warm"):
        now, before = figures[run], previous.get(run, {})
        assert isinstance(now, dict)
        label = f"make test, {run}" + (" (failed)" if now["failed"] else "")
        print(f"{label:26} {minutes(now['wall_s']):>24} {minutes(before.get('wall_s')):>24}")
        for tier, line in now["tiers"].items():
            print(f"{'  ' + tier:26} {line:>24} {before.get('tiers', {}).get(tier, '-'):>24}")
    write_atomic(RESULTS, (json.dumps(figures, indent=2, sort_keys=True) + "\n").encode())
    if any(isinstance(run, dict) and run["failed"] for run in figures.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main(
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(tempfile.mkdtemp(prefix="picluster-suite-", dir="/var/tmp"))
    )
