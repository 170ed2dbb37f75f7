"""The suite's slow builds, two at a time, before the first test that needs one of them.

An empty cache costs a run these builds: the e2e card's Debian base (with room for the container
images it carries), the bundled cluster's Debian base (test_base), the Raspberry Pi OS stand-in and
the base customised from it, flannel's image, and the flannel lab's Go builds of flanneld, the
flannel CNI plugin and cnitool. One after the other they are most of a cold run's extra time; each
is mostly one process at a time (dpkg under qemu-user, one Go build), so on the 2-core build
machine two side by side take little longer than one (figures in docs/developing.md).

Each build here goes through the cached function its fixture calls, so that fixture then finds it
built; a build that fails here is left to its fixture, which tries again and fails the tests that
need it with its own error. The e2e and integration tiers each set this up before their first
test (an autouse fixture), for what the session's selected tests need (NEEDS, by the fixtures
they use): the first of them to run does the building and counts its time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.image import debian
from builder.image.base import ensure_base
from builder.image.context import default_cache
from builder.image.flannel_image import build_flannel_image
from builder.progress import silent
from builder.run import Runner
from builder.spec.load import load_cluster
from tests.support.machines import card_data, quiet_context
from tests.support.project import BUNDLED
from tests.support.raspios_standin import ensure_standin, served
from tests.support.upstream import LAB_PROGRAMS, ensure_built

LANES = 2
"""Builds side by side: the build machine's cores."""
CACHED_S = 5
"""A build done sooner was found in the cache, and goes unsaid."""
MIRROR = "http://127.0.0.1:5000"
"""Any registry: where a card's images come from is not in its base's key."""


@dataclass(frozen=True)
class Build:
    name: str
    make: Callable[[Path], object]
    """Builds into the cache (a scratch folder for what it writes besides)."""


def _base(folder: Path, data: dict[str, Any]) -> None:
    (folder / "cluster.yaml").write_text(yaml.safe_dump(data))
    ensure_base(load_cluster(folder / "cluster.yaml"), quiet_context())


def _standin_and_its_base(folder: Path) -> None:
    with served(ensure_standin(default_cache(), silent())) as source:
        _base(folder, card_data("pi5", None, source))


def _card_base(folder: Path) -> None:
    _base(folder, card_data("pi4", None, None, MIRROR))


def _bundled_base(_: Path) -> None:
    ensure_base(load_cluster(BUNDLED), quiet_context())


def _flannel_image(_: Path) -> None:
    build_flannel_image(default_cache(), Runner())


def _lab_programs(_: Path) -> None:
    for program in LAB_PROGRAMS:
        ensure_built(program, default_cache())


RASPIOS = Build("the Raspberry Pi OS stand-in and the base customised from it", _standin_and_its_base)
CARD_BASE = Build("the e2e card's Debian base", _card_base)
BUNDLED_BASE = Build("the bundled cluster's Debian base", _bundled_base)
FLANNEL = Build("flannel's image", _flannel_image)
LAB = Build("the flannel lab's Go builds", _lab_programs)
ORDER = (RASPIOS, CARD_BASE, BUNDLED_BASE, FLANNEL, LAB)
"""The longest first, so that the last to finish is a short one."""
NEEDS = {
    "card": (CARD_BASE, FLANNEL),
    "raspios_card": (RASPIOS, FLANNEL),
    "real_base": (BUNDLED_BASE,),
    "flannel": (FLANNEL,),
    "started": (LAB,),
}
"""What a fixture's first use builds, by the fixture's name."""


def needed(items: Iterable[pytest.Item]) -> list[Build]:
    """The builds the tests that will run need, in ORDER."""
    wanted = {
        build
        for item in items
        if item.get_closest_marker("skip") is None
        for name in getattr(item, "fixturenames", ())
        for build in NEEDS.get(name, ())
    }
    return [build for build in ORDER if build in wanted]


def build_all(builds: list[Build], scratch: Path, say: Callable[[str], None]) -> None:
    """Make each build, LANES at a time, saying how long each that was not cached took; a failure
    is said, not raised."""

    def timed(build: Build) -> None:
        start = time.monotonic()
        folder = scratch / str(ORDER.index(build))
        folder.mkdir()
        try:
            build.make(folder)
        except Exception as error:  # its fixture builds it again and reports it
            say(f"cold builds: {build.name}: failed after {time.monotonic() - start:.0f} s ({error})")
            return
        took = time.monotonic() - start
        if took >= CACHED_S:
            say(f"cold builds: {build.name}: {took:.0f} s")

    start = time.monotonic()
    try:
        debian.ensure_binfmt(Runner())  # once, before two builds race to register it
    except Exception as error:  # each build's fixture meets it and reports it
        say(f"cold builds: none, arm64 programs cannot run here ({error})")
        return
    with ThreadPoolExecutor(max_workers=LANES) as pool:
        list(pool.map(timed, builds))
    took = time.monotonic() - start
    if took >= CACHED_S:
        say(f"cold builds: done in {took:.0f} s, {LANES} at a time")


_done = pytest.StashKey[bool]()


@pytest.fixture(scope="session", autouse=True)
def cold_builds(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    config = request.config
    if config.stash.get(_done, False) or os.geteuid() != 0:  # without root each fixture says why
        return
    config.stash[_done] = True
    builds = needed(request.session.items)
    if not builds:
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    build_all(builds, tmp_path_factory.mktemp("cold-builds"), say)
