"""`make test`'s verdict: a tier that cannot run fails the run, with the reason and the way out,
unless it was left out by name (tests/support/tiers.py). Shown on a run of an integration test whose
tools are missing (a PATH without them), as on a machine `make test` has not set up; a run as
a user other than root meets the same rule ("network namespaces need root")."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.project import REPO

pytestmark = pytest.mark.integration

NEEDS_TOOLS = "tests/integration/test_images.py::test_nothing_changed_rewrites_nothing"


def run_pytest_without_tools(*extra_env: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": "/nonexistent", **dict(extra_env)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", NEEDS_TOOLS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_tier_that_cannot_run_fails_the_run_and_says_why() -> None:
    done = run_pytest_without_tools()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the integration tier cannot run here: not installed on this machine: sfdisk" in done.stdout
    assert "PICLUSTER_SKIP=integration make test" in done.stdout
    assert re.search(
        r"tier integration: 1 tests: 0 passed, 1 failed, 0 skipped; \d+\.\d s "
        r"\(its tests' setup, call and teardown summed\); cannot run here:",
        done.stdout,
    ), done.stdout


def test_a_tier_left_out_by_name_is_skipped_and_says_so() -> None:
    done = run_pytest_without_tools(("PICLUSTER_SKIP", "integration"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tier integration: skipped on request (PICLUSTER_SKIP=integration)" in done.stdout


def test_an_unknown_tier_name_is_refused() -> None:
    done = run_pytest_without_tools(("PICLUSTER_SKIP", "e2e,lab"))
    assert done.returncode != 0
    assert "PICLUSTER_SKIP: no tier lab; the tiers are unit, integration, e2e" in done.stderr


def test_a_tier_counts_only_the_tests_selected_to_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/unit/test_cold_builds.py",
         "-k", "two_at_a_time"],
        cwd=REPO, env={**os.environ, "PICLUSTER_SKIP": ""}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tier unit: 1 tests: 1 passed, 0 failed, 0 skipped;" in done.stdout, done.stdout
