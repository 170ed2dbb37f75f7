"""`picluster verify`: reach every node over SSH, run the testinfra suite (verify_suite/, beside
this module) against those that answer, counting its checks as they finish, and print one table,
a row per check and a column per node, then what failed and how to fix it."""

from __future__ import annotations

import ast
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import UserError
from builder.progress import Reporter
from builder.resources import VERIFY_SUITE
from builder.run import CommandError, CommandTimedOut, Runner
from builder.spec.model import Cluster, Node

CELLS = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}
CONNECT_TIMEOUT_S = 5
"""Ample for a Pi on a LAN; a node that is off fails here rather than at the deadline."""
FOLLOW_INTERVAL_S = 0.5
UNREACHABLE_FIX = "is each node powered and on the LAN? try the ssh command shown"


@dataclass(frozen=True)
class Deadlines:
    """How long verify waits on the nodes, whole. ssh's ConnectTimeout covers the connection (and,
    in recent OpenSSH, the banner), not a node that accepts it and then stalls in key exchange,
    login or a command: without these, verify would wait for it for ever."""

    reach: float = 20.0
    """For `ssh ... true`: connecting, key exchange, login and `true`; seconds on a LAN."""
    check: float = 120.0
    """For one check of the suite, or for collecting them (each node's node.json is read over
    ssh then): a few commands, seconds on a Pi, tens under emulation."""


@dataclass(frozen=True)
class Checks:
    """What `picluster verify` was asked to check: which nodes (all when empty), which checks to
    skip, and how ssh reaches the nodes."""

    nodes: Sequence[str] = ()
    skip: Sequence[str] = ()
    ssh_config: Path | None = None


def verify(
    cluster_file: Path,
    cluster: Cluster,
    checks: Checks,
    reporter: Reporter,
    runner: Runner,
    deadlines: Deadlines = Deadlines(),
) -> int:
    """Reach the nodes, run the suite on those that answer, print the report; return non-zero
    when a check failed or a node did not answer."""
    names = check_names(VERIFY_SUITE)
    unknown = sorted(set(checks.skip) - set(names))
    if unknown:
        raise UserError(f"--skip {', '.join(unknown)}: no such check", f"choose from {', '.join(names)}")
    config = checks.ssh_config.resolve() if checks.ssh_config else None
    selected = [node for node in cluster.nodes if not checks.nodes or node.name in checks.nodes]
    reaches = reach_nodes(selected, cluster.access.user, config, reporter.say, runner, deadlines.reach)
    answered = [r.node for r in reaches if not r.reason]
    unreachable = [r for r in reaches if r.reason]
    if not answered:
        raise UserError(
            f"no node answers over SSH, so nothing was checked:\n{format_unreachable(unreachable)}",
            UNREACHABLE_FIX,
        )
    if unreachable:
        reporter.say(f"checking {', '.join(answered)} only")
    chosen = Checks(answered, checks.skip, config)
    status, results = run_suite(cluster_file, chosen, reporter.say, runner, deadlines.check)
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


def reach(node: Node, user: str, ssh_config: Path | None, runner: Runner, deadline: float) -> Reach:
    """ssh to the node as the suite's testinfra does (same user, address and ssh_config) and run
    `true`, for `deadline` seconds at most."""
    config = ["-F", str(ssh_config)] if ssh_config else []
    target = f"{user}@{node.address.ip}"
    by_hand = shlex.join(["ssh", *config, target])
    start = time.monotonic()
    try:
        # BatchMode: a missing key or an unknown host key fails here with ssh's reason, where the
        # suite would wait at a prompt
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        runner.run(["ssh", *config, *options, target, "true"], timeout=deadline)
    except CommandTimedOut:
        reason = f"accepts the connection, then no answer within {deadline:g} s (stalled in key exchange?)"
        return Reach(node.name, by_hand, time.monotonic() - start, reason)
    except CommandError as error:
        said = error.output.strip().splitlines()
        reason = said[-1] if said else f"ssh failed with status {error.status}"
        return Reach(node.name, by_hand, time.monotonic() - start, reason)
    return Reach(node.name, by_hand, time.monotonic() - start)


def reach_nodes(
    nodes: Sequence[Node],
    user: str,
    ssh_config: Path | None,
    say: Callable[[str], None],
    runner: Runner,
    deadline: float,
) -> list[Reach]:
    """Try every node at once, saying each as it answers; return them in the nodes' order."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = [pool.submit(reach, node, user, ssh_config, runner, deadline) for node in nodes]
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
    cluster_file: Path, checks: Checks, say: Callable[[str], None], runner: Runner, deadline: float
) -> tuple[int, list[dict[str, str]]]:
    """Run pytest on the suite for `checks.nodes`, saying how far it has come; return its status
    and the results. A check (or the collecting of them) that takes longer than `deadline`
    seconds stops the suite."""
    with tempfile.TemporaryDirectory(prefix="picluster-verify-") as scratch:
        report = Path(scratch) / "report.jsonl"
        report.touch()  # followed from the start; the suite writes to it as each check finishes
        command = [
            sys.executable, "-m", "pytest", str(VERIFY_SUITE), "-p", "no:cacheprovider", "-o", "addopts=",
            "--cluster", str(cluster_file.resolve()), "--report-json", str(report),
            *(f"--node={name}" for name in checks.nodes),
            *([f"--ssh-config={checks.ssh_config}"] if checks.ssh_config else []),
            *(f"--skip-check={name}" for name in checks.skip),
            "-v" if runner.verbose else "-q",
        ]  # fmt: skip
        progress = Progress()
        start = time.monotonic()
        # pytest's own report repeats the table at length; -v shows it
        process = runner.start(command, cwd=VERIFY_SUITE, output="show" if runner.verbose else "hide")
        with report.open() as growing:
            news = start  # when the suite last reported anything
            while process.poll() is None:
                time.sleep(FOLLOW_INTERVAL_S)
                text = growing.read()
                news = time.monotonic() if text else news
                line = progress.feed(text, time.monotonic() - start)
                if line:
                    say(line)
                if time.monotonic() - news > deadline:
                    process.kill()
                    process.wait()
                    raise _stalled(progress, checks, deadline)
            progress.feed(growing.read(), time.monotonic() - start)
    # 0: every check passed, 1: some failed; anything else is pytest failing to run them
    if progress.planned is None or process.returncode > 1:
        raise UserError("the verify suite did not run", f"run it by hand to see why: {shlex.join(command)}")
    say(progress.line(time.monotonic() - start))
    return process.returncode, progress.results


def _stalled(progress: Progress, checks: Checks, deadline: float) -> UserError:
    if progress.running:
        what = f"check {progress.running['check']} on {progress.running['node']} has not finished"
    else:  # the suite reads each node's node.json while it collects the checks
        what = f"the checks of {', '.join(checks.nodes)} were not collected"
    return UserError(
        f"{what} within {deadline:g} s, so the suite was stopped: the node stopped answering over SSH?",
        "is each node powered and on the LAN? `ssh USER@ADDRESS true` should answer at once; then run "
        "picluster verify again",
    )


@dataclass
class Progress:
    """Follows the suite's report as pytest writes it, one JSON object a line: first how many
    checks are planned, then each result. Says how far the checks have come, at most every
    `every` seconds and only when the count moved."""

    every: float = 5.0
    planned: int | None = None
    results: list[dict[str, str]] = field(default_factory=list)
    running: dict[str, str] | None = None
    """The check under way, once one is: its node and check."""
    _unfinished: str = field(default="", init=False, repr=False)
    _said: tuple[float, int] = field(default=(0.0, 0), init=False, repr=False)

    def feed(self, text: str, elapsed: float) -> str | None:
        """Take what pytest wrote since the last call; return a line to show when one is due."""
        *lines, self._unfinished = (self._unfinished + text).split("\n")
        for line in lines:
            record = json.loads(line)
            if "planned" in record:
                self.planned = record["planned"]
            elif record["outcome"] == "running":
                self.running = record
            else:
                self.results.append(record)
        done = len(self._outcomes())
        said_at, said_done = self._said
        if done == said_done or elapsed - said_at < self.every:
            return None
        self._said = (elapsed, done)
        return self.line(elapsed)

    def line(self, elapsed: float) -> str:
        outcomes = self._outcomes()
        failed = sum(outcome == "failed" for outcome in outcomes.values())
        counted = f"{len(outcomes)}/{self.planned} done" + (f", {failed} failed" if failed else "")
        return f"checks: {counted} ({elapsed:.0f} s)"

    def _outcomes(self) -> dict[tuple[str, str], str]:
        # a check that fails in teardown after its call reports twice; the table shows the last
        return {(r["node"], r["check"]): r["outcome"] for r in self.results}


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
