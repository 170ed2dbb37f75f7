"""Golden render cases: a folder per case with cluster.yaml and the exact expected tree.

Each case's expected/ holds every rendered file but private keys (which never go into git) and
files copied verbatim from overlays/ (the agent's code, say: a copy per node would only repeat
the overlay), and MANIFEST lists every file, those included, with mode, link and SHA-256, so
modes, keys and copies are compared too. After an intended change, regenerate with
PICLUSTER_UPDATE_GOLDEN=1 and review the diff like code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from builder.render.node import render_cluster
from builder.render.plan import FileEntry, NodePlan
from builder.resources import OVERLAYS_DIR
from builder.spec.load import load_cluster
from tests.support.project import fixed_secrets

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "cluster.yaml").exists())


def manifest(plans: list[NodePlan]) -> str:
    lines = []
    for plan in plans:
        for entry in plan.files:
            what = f"-> {entry.link}" if entry.link else hashlib.sha256(entry.data).hexdigest()
            lines.append(f"{plan.node}/{entry.partition}/{entry.path} {entry.mode:04o} {what}")
    return "\n".join(lines) + "\n"


def expected_tree(plans: list[NodePlan]) -> dict[str, bytes]:
    return {
        f"{plan.node}/{entry.partition}/{entry.path}": entry.data
        for plan in plans
        for entry in plan.files
        if entry.link is None and entry.path.suffix != ".key" and not copied_verbatim(entry)
    }


def copied_verbatim(entry: FileEntry) -> bool:
    sources = [layer / entry.path for layer in OVERLAYS_DIR.iterdir() if layer.is_dir()]
    return any(source.is_file() and source.read_bytes() == entry.data for source in sources)


def stored_tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and path.name != "MANIFEST"
    }


@pytest.mark.parametrize("case", CASES)
def test_golden_render(case: str) -> None:
    plans = render_cluster(load_cluster(GOLDEN / case / "cluster.yaml"), fixed_secrets())
    expected = GOLDEN / case / "expected"
    if os.environ.get("PICLUSTER_UPDATE_GOLDEN") == "1":
        shutil.rmtree(expected, ignore_errors=True)
        for name, data in expected_tree(plans).items():
            (expected / name).parent.mkdir(parents=True, exist_ok=True)
            (expected / name).write_bytes(data)
        (expected / "MANIFEST").write_text(manifest(plans))
    assert (expected / "MANIFEST").read_text() == manifest(plans)
    actual, stored = expected_tree(plans), stored_tree(expected)
    assert sorted(actual) == sorted(stored)
    for name in actual:
        assert actual[name].decode() == stored[name].decode(), name


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 2
