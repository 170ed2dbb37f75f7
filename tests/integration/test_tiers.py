"""`make test`'s verdict: a tier that cannot run fails the run, with the reason and the way out,
unless it was left out by name (tests/tiers.py). Run here as an unprivileged user, for whom the
integration tier cannot run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
A_ROOT_ONLY_TEST = "tests/integration/test_agent_links.py::test_a_member_keeps_links_that_match_its_lease"


def run_pytest_as_nobody(*extra_env: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root")
    env = {**os.environ, "HOME": "/tmp", **dict(extra_env)}
    return subprocess.run(
        [*NOBODY, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", A_ROOT_ONLY_TEST],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_tier_that_cannot_run_fails_the_run_and_says_why() -> None:
    done = run_pytest_as_nobody()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the integration tier cannot run here: network namespaces need root" in done.stdout
    assert "PICLUSTER_SKIP=integration make test" in done.stdout
    assert "tier integration: 1 tests: 0 passed, 1 failed, 0 skipped; cannot run here:" in done.stdout


def test_a_tier_left_out_by_name_is_skipped_and_says_so() -> None:
    done = run_pytest_as_nobody(("PICLUSTER_SKIP", "integration"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tier integration: skipped on request (PICLUSTER_SKIP=integration)" in done.stdout


def test_an_unknown_tier_name_is_refused() -> None:
    done = run_pytest_as_nobody(("PICLUSTER_SKIP", "e2e,lab"))
    assert done.returncode != 0
    assert "PICLUSTER_SKIP: no tier lab; the tiers are unit, integration, e2e" in done.stderr
