"""The suite's cold builds (tests/support/cold_builds.py): two at a time, each the very build its
fixture would make, and only what the selected tests need."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import yaml

from builder.image.base import manifest
from builder.spec.load import load_cluster
from builder.spec.model import ImageSource
from tests.support import cold_builds
from tests.support.cold_builds import LANES, NEEDS, Build, build_all, needed
from tests.support.machines import card_data

TESTS = Path(__file__).resolve().parents[1]


def test_builds_run_two_at_a_time_and_a_failure_is_said_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cold_builds.debian, "ensure_binfmt", lambda runner: None)
    running, most, lock = [0], [0], threading.Lock()

    def slow(_: Path) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1

    def broken(_: Path) -> None:
        raise RuntimeError("mmdebstrap failed")

    builds = [*(Build(f"slow {n}", slow) for n in range(4)), Build("broken", broken)]
    monkeypatch.setattr(cold_builds, "ORDER", tuple(builds))
    monkeypatch.setattr(cold_builds, "CACHED_S", 0)
    said: list[str] = []
    build_all(builds, tmp_path, said.append)
    assert most[0] == LANES == 2
    assert "cold builds: broken: failed after 0 s (mmdebstrap failed)" in said
    assert sum(line.startswith("cold builds: slow") for line in said) == 4


class Item:
    def __init__(self, *fixtures: str, skipped: bool = False) -> None:
        self.fixturenames = fixtures
        self.skipped = skipped

    def get_closest_marker(self, name: str) -> object:
        return "skipped" if name == "skip" and self.skipped else None


def test_only_what_the_tests_that_run_need_is_built() -> None:
    assert needed([Item("tmp_path")]) == []
    assert needed([Item("card", "tmp_path"), Item("flannel")]) == [cold_builds.CARD_BASE, cold_builds.FLANNEL]
    assert needed([Item("raspios_card", skipped=True), Item("started")]) == [cold_builds.LAB]


def test_each_fixture_named_is_one_the_tests_define() -> None:
    defined = {
        match
        for path in TESTS.rglob("*.py")
        for match in re.findall(r"@pytest\.fixture[^\n]*\ndef (\w+)\(", path.read_text())
    }
    assert set(NEEDS) <= defined, f"no fixture named {sorted(set(NEEDS) - defined)}"


def test_the_cards_bases_are_the_ones_the_e2e_fixtures_build(tmp_path: Path) -> None:
    """Built here with the bundled key and another mirror, a card's base has its fixture's key."""

    def base_inputs(data: dict[str, object]) -> dict[str, object]:
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump(data))
        return manifest(load_cluster(path))

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBgSKNWaK4hJhZ6t3x0gPOx5ZNdXy/UTf1qE5cW8CqDr e2e"
    fixture = base_inputs(card_data("pi4", key, None, "http://127.0.0.1:39211"))
    assert base_inputs(card_data("pi4", None, None, cold_builds.MIRROR)) == fixture
    assert fixture != base_inputs(card_data("pi4", key)), "room for the card's images is in the key"
    source = ImageSource(url="http://127.0.0.1:40001/raspios.img.xz", sha256="ab" * 32)
    assert base_inputs(card_data("pi5", None, source)) == base_inputs(card_data("pi5", key, source))
