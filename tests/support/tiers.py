"""`make test` tells the whole truth: a tier that cannot run fails the run, unless whoever runs it
opted out of that tier by name, and every run ends with a line per tier saying what ran.

The tiers are the folders under tests/: unit, integration (root: filesystems, loop devices,
network namespaces, mmdebstrap) and e2e (QEMU boots of built cards). A test that finds its
tier cannot run here (not root, a tool missing) calls pytest.skip with the reason; this plugin
turns that skip into a failure that names the reason and the way out, `PICLUSTER_SKIP=e2e make
test` (a comma-separated list of tiers). Tests of an opted-out tier are skipped, saying so.

Each tier's line gives its wall time as the sum of its tests' setup, call and teardown durations
(tests run one at a time, so this is the tier's share of the run, collection aside); a module's
fixture counts once, in the test that set it up or tore it down.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TIERS = ("unit", "integration", "e2e")
OPT_OUT = "PICLUSTER_SKIP"
TESTS = Path(__file__).resolve().parents[1]
ON_REQUEST = "skipped on request"


def opted_out() -> set[str]:
    names = {name.strip() for name in os.environ.get(OPT_OUT, "").split(",") if name.strip()}
    unknown = names - set(TIERS)
    if unknown:
        raise pytest.UsageError(
            f"{OPT_OUT}: no tier {', '.join(sorted(unknown))}; the tiers are {', '.join(TIERS)}"
        )
    return names


def tier_of(item: pytest.Item) -> str | None:
    try:
        parts = item.path.resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return parts[0] if parts and parts[0] in TIERS else None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_counts] = Counter()
    config.stash[_seconds] = dict.fromkeys(TIERS, 0.0)
    config.stash[_reasons] = {}
    config.stash[_skipped_tiers] = opted_out()


@pytest.hookimpl(trylast=True)  # after -k and --deselect have taken out what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if tier in config.stash[_skipped_tiers]:
            item.add_marker(pytest.mark.skip(reason=f"{ON_REQUEST} ({OPT_OUT}={tier})"))
        if tier is not None:
            config.stash[_counts][tier, "collected"] += 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    tier = tier_of(item)
    if tier is None:
        return
    item.config.stash[_seconds][tier] += report.duration
    if report.skipped:
        reason = _skip_reason(report)
        if ON_REQUEST not in reason:
            # the tier cannot run here: that is a failure of the run, not a quiet pass
            report.outcome = "failed"
            report.longrepr = (
                f"the {tier} tier cannot run here: {reason}\n"
                f"  fix: run `make test` as root on a Debian machine (it installs what it needs), "
                f"or leave the tier out by name: {OPT_OUT}={tier} make test"
            )
            item.config.stash[_reasons].setdefault(tier, reason)
    # one outcome per test: its call's, or the first phase that did not pass
    counted = item.stash.setdefault(_counted, [False])
    if not counted[0] and (report.when == "call" or report.outcome != "passed"):
        item.config.stash[_counts][tier, report.outcome] += 1
        counted[0] = True


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """One line per tier: what ran, passed, failed, skipped, how long it took and why."""
    counts, reasons, skipped = config.stash[_counts], config.stash[_reasons], config.stash[_skipped_tiers]
    terminalreporter.section("tiers")
    for tier in TIERS:
        if tier in skipped:
            line = f"{ON_REQUEST} ({OPT_OUT}={tier})"
        elif not counts[tier, "collected"]:
            line = "not run (not selected)"
        else:
            line = (
                f"{counts[tier, 'collected']} tests: {counts[tier, 'passed']} passed, "
                f"{counts[tier, 'failed']} failed, {counts[tier, 'skipped']} skipped; "
                f"{_took(config.stash[_seconds][tier])} (its tests' setup, call and teardown summed)"
            )
            if tier in reasons:
                line += f"; cannot run here: {reasons[tier]}"
        terminalreporter.write_line(f"tier {tier}: {line}")


def _took(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


_counts = pytest.StashKey[Counter[tuple[str, str]]]()
_reasons = pytest.StashKey[dict[str, str]]()
_seconds = pytest.StashKey[dict[str, float]]()
_skipped_tiers = pytest.StashKey[set[str]]()
_counted = pytest.StashKey[list[bool]]()
