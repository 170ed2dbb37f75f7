"""`picluster verify`: run the testinfra suite (tests/verify) against the booted nodes and print
one table, a row per check and a column per node, then what failed and how to fix it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from builder.boards import ROOT
from builder.errors import UserError

SUITE = ROOT / "tests" / "verify"
CELLS = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}


def verify(
    cluster_file: Path, nodes: Sequence[str], ssh_config: Path | None, skip: Sequence[str], verbose: bool
) -> int:
    """Run the suite; print the report; return pytest's exit status."""
    if not SUITE.is_dir():
        raise UserError(f"the verify suite is missing ({SUITE})", "run picluster from its source checkout")
    names = check_names(SUITE)
    unknown = sorted(set(skip) - set(names))
    if unknown:
        raise UserError(f"--skip {', '.join(unknown)}: no such check", f"choose from {', '.join(names)}")
    with tempfile.TemporaryDirectory(prefix="picluster-verify-") as scratch:
        report = Path(scratch) / "report.json"
        command = [
            sys.executable, "-m", "pytest", str(SUITE), "-p", "no:cacheprovider", "-o", "addopts=",
            "--cluster", str(cluster_file.resolve()), "--report-json", str(report),
            *(f"--node={name}" for name in nodes),
            *([f"--ssh-config={ssh_config.resolve()}"] if ssh_config else []),
            *(f"--skip-check={name}" for name in skip),
            "-v" if verbose else "-q",
        ]  # fmt: skip
        # pytest's own report repeats the table at length; -v shows it
        output = None if verbose else subprocess.DEVNULL
        status = subprocess.run(command, cwd=ROOT, stdout=output, check=False).returncode
        if not report.exists():
            raise UserError("the verify suite did not run", f"run it by hand to see why: {' '.join(command)}")
        results = json.loads(report.read_text())
    print(format_report(results))
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
