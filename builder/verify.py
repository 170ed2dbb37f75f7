"""`picluster verify`: reach every node over SSH, run the testinfra suite (tests/verify) against
those that answer, and print one table, a row per check
and a column per node, then what failed and how to fix it."""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from builder import run
from builder.boards import ROOT
from builder.errors import UserError
from builder.model import Cluster, Node
from builder.progress import Reporter

SUITE = ROOT / "tests" / "verify"
CELLS = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}
CONNECT_TIMEOUT_S = 5
"""Ample for a Pi on a LAN; the suite itself waits 10 s per command, minutes for a node that is off."""
UNREACHABLE_FIX = "is each node powered and on the LAN? try the ssh command shown"


def verify(
    cluster_file: Path,
    cluster: Cluster,
    nodes: Sequence[str],
    ssh_config: Path | None,
    skip: Sequence[str],
    verbose: bool,
    reporter: Reporter,
) -> int:
    """Reach the nodes, run the suite on those that answer, print the report; return non-zero
    when a check failed or a node did not answer."""
    if not SUITE.is_dir():
        raise UserError(f"the verify suite is missing ({SUITE})", "run picluster from its source checkout")
    names = check_names(SUITE)
    unknown = sorted(set(skip) - set(names))
    if unknown:
        raise UserError(f"--skip {', '.join(unknown)}: no such check", f"choose from {', '.join(names)}")
    config = ssh_config.resolve() if ssh_config else None
    selected = [node for node in cluster.nodes if not nodes or node.name in nodes]
    reaches = reach_nodes(selected, cluster.access.user, config, reporter.say)
    answered = [r.node for r in reaches if not r.reason]
    unreachable = [r for r in reaches if r.reason]
    if not answered:
        raise UserError(
            f"no node answers over SSH, so nothing was checked:\n{format_unreachable(unreachable)}",
            UNREACHABLE_FIX,
        )
    if unreachable:
        reporter.say(f"checking {', '.join(answered)} only")
    status, results = run_suite(cluster_file, answered, config, skip, verbose)
    print(format_report(results))
    if unreachable:
        print(f"\nnot checked, no answer over SSH:\n{format_unreachable(unreachable)}")
        print(f"  fix: {UNREACHABLE_FIX}")
        return status or 1
    return status


def check_names(suite: Path) -> list[str]:
    """What --skip accepts: each check's test function without `test_`, read from the suite's
    source, so a wrong name is refused before any node is reached."""
    return [
        statement.name.removeprefix("test_")
        for module in sorted(suite.glob("test_*.py"))
        for statement in ast.parse(module.read_text()).body
        if isinstance(statement, ast.FunctionDef) and statement.name.startswith("test_")
    ]


@dataclass(frozen=True)
class Reach:
    """How a node answered ssh before the suite ran: in how long, or ssh's reason it did not."""

    node: str
    by_hand: str
    """The ssh command that reaches it, for the user to try."""
    seconds: float
    reason: str = ""


def reach(node: Node, user: str, ssh_config: Path | None) -> Reach:
    """ssh to the node as the suite's testinfra does (same user, address and ssh_config) and run `true`."""
    config = ["-F", str(ssh_config)] if ssh_config else []
    target = f"{user}@{node.address.ip}"
    by_hand = shlex.join(["ssh", *config, target])
    start = time.monotonic()
    try:
        # BatchMode: a missing key or an unknown host key fails here with ssh's reason, where the
        # suite would wait at a prompt
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        run.run(["ssh", *config, *options, target, "true"])
    except run.CommandError as error:
        said = error.output.strip().splitlines()
        reason = said[-1] if said else f"ssh failed with status {error.status}"
        return Reach(node.name, by_hand, time.monotonic() - start, reason)
    return Reach(node.name, by_hand, time.monotonic() - start)


def reach_nodes(
    nodes: Sequence[Node], user: str, ssh_config: Path | None, say: Callable[[str], None]
) -> list[Reach]:
    """Try every node at once, saying each as it answers; return them in the nodes' order."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = [pool.submit(reach, node, user, ssh_config) for node in nodes]
        for done in as_completed(futures):
            say(describe_reach(done.result()))
    return [future.result() for future in futures]


def describe_reach(reach: Reach) -> str:
    if reach.reason:
        return f"{reach.node}: unreachable: {reach.reason}"
    return f"{reach.node}: reachable ({reach.seconds:.1f} s)"


def format_unreachable(reaches: Sequence[Reach]) -> str:
    return "\n".join(f"  {r.node}: {r.reason}\n      by hand: `{r.by_hand}`" for r in reaches)


def run_suite(
    cluster_file: Path, nodes: Sequence[str], ssh_config: Path | None, skip: Sequence[str], verbose: bool
) -> tuple[int, list[dict[str, str]]]:
    """Run pytest on the suite; return its status and the results."""
    with tempfile.TemporaryDirectory(prefix="picluster-verify-") as scratch:
        report = Path(scratch) / "report.json"
        command = [
            sys.executable, "-m", "pytest", str(SUITE), "-p", "no:cacheprovider", "-o", "addopts=",
            "--cluster", str(cluster_file.resolve()), "--report-json", str(report),
            *(f"--node={name}" for name in nodes),
            *([f"--ssh-config={ssh_config}"] if ssh_config else []),
            *(f"--skip-check={name}" for name in skip),
            "-v" if verbose else "-q",
        ]  # fmt: skip
        # pytest's own report repeats the table at length; -v shows it
        output = None if verbose else subprocess.DEVNULL
        status = subprocess.run(command, cwd=ROOT, stdout=output, check=False).returncode
        if not report.exists():
            raise UserError("the verify suite did not run", f"run it by hand to see why: {' '.join(command)}")
        results: list[dict[str, str]] = json.loads(report.read_text())
    return status, results


def format_report(results: list[dict[str, str]]) -> str:
    """The table, then each failure and each reason for skipping, then a count."""
    nodes = list(dict.fromkeys(r["node"] for r in results))
    checks = list(dict.fromkeys(r["check"] for r in results))
    cell = {(r["check"], r["node"]): CELLS[r["outcome"]] for r in results}
    width = max([len("check"), *map(len, checks)])
    columns = [max(len(node), 4) for node in nodes]
    header = [f"{'check':<{width}}", *(f"{n:<{w}}" for n, w in zip(nodes, columns, strict=True))]
    lines = ["  ".join(header).rstrip()]
    for check in checks:
        row = [f"{cell.get((check, node), '-'):<{w}}" for node, w in zip(nodes, columns, strict=True)]
        lines.append("  ".join([f"{check:<{width}}", *row]).rstrip())
    failures = [r for r in results if r["outcome"] == "failed"]
    if failures:
        lines.append("")
        lines += [f"FAIL {r['node']}: {r['check']}: {r['message']}" for r in failures]
    skipped: dict[str, list[str]] = {}
    for r in results:
        if r["outcome"] == "skipped":
            skipped.setdefault(f"{r['node']}: {r['message']}", []).append(r["check"])
    if skipped:
        lines.append("")
        lines += [f"skip {reason}: {', '.join(names)}" for reason, names in skipped.items()]
    counts = {word: sum(r["outcome"] == outcome for r in results) for outcome, word in CELLS.items()}
    lines.append("")
    lines.append(
        f"{len(checks)} checks on {len(nodes)} node{'s' if len(nodes) != 1 else ''}: "
        f"{counts['ok']} ok, {counts['FAIL']} failed, {counts['skip']} skipped"
    )
    return "\n".join(lines)
