"""The verify suite's hosts: every node in cluster.yaml (or those named with --node), reached
over SSH as the cluster's login user at the node's address.

An SSH config (testinfra's --ssh-config) can send an address elsewhere, e.g. `Host 10.0.2.15` to a port
QEMU forwards. Each check is one test per node (per node and entry, for the kernel's needs that
the node's node.json lists), so one failure hides nothing; the results go to --report-json, as
each check finishes, for `picluster verify`'s count and table.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import testinfra

from builder.spec.load import load_cluster
from builder.spec.model import Cluster, Node

NODE_CONFIG = "/etc/picluster/node.json"
KERNEL_NEEDS_CASES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "module": lambda needs: needs["modules"],
    "sysctl": lambda needs: [f"{key}={value}" for key, value in needs["sysctls"].items()],
    "kernel_arg": lambda needs: needs["args"],
}
"""A check taking one of these arguments runs once for each such entry of the kernel_needs in the
node's own node.json: what its card applies at boot and its agent's preflight checks, which this
checkout's builder/render/kernel_needs.py may no longer match when the card is older."""
NO_KERNEL_NEEDS = (
    "its node.json lists no kernel_needs (a card from an older picluster); reflash it to check them"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("picluster verify")
    group.addoption("--cluster", default="cluster.yaml", help="the cluster.yaml the nodes come from")
    group.addoption("--node", action="append", default=[], help="check only this node (repeatable)")
    group.addoption("--report-json", help="write each check's result here as it finishes (JSON lines)")
    group.addoption(
        "--skip-check", action="append", default=[], help="skip a check by name, e.g. time_synchronised"
    )


@cache
def _cluster(path: str) -> Cluster:
    return load_cluster(Path(path))


def cluster_of(config: pytest.Config) -> Cluster:
    return _cluster(str(config.getoption("--cluster")))


def selected_nodes(config: pytest.Config) -> list[Node]:
    wanted = config.getoption("--node")
    nodes = [n for n in cluster_of(config).nodes if not wanted or n.name in wanted]
    unknown = set(wanted) - {n.name for n in nodes}
    if unknown:
        raise pytest.UsageError(f"--node {', '.join(sorted(unknown))}: not in cluster.yaml")
    return nodes


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "control_plane: a check of the whole cluster, run on its control planes"
    )
    target = config.getoption("--report-json")
    if target:
        config.pluginmanager.register(JsonLinesReport(Path(target)))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "node" in metafunc.fixturenames:
        nodes = selected_nodes(metafunc.config)
        if metafunc.definition.get_closest_marker("control_plane"):
            nodes = [n for n in nodes if n.role == "control-plane"]
        listed = [argument for argument in KERNEL_NEEDS_CASES if argument in metafunc.fixturenames]
        if listed:
            (argument,) = listed
            cases = kernel_needs_cases(argument, nodes, lambda node: host_for(metafunc.config, node))
            metafunc.parametrize(("node", argument), cases)
        else:
            metafunc.parametrize("node", nodes, ids=[n.name for n in nodes])


def kernel_needs_cases(argument: str, nodes: list[Node], host_of: Callable[[Node], Any]) -> list[Any]:
    """One case per node and entry its node.json lists for `argument`; read over SSH while the
    suite is collected, so each entry is a row of `picluster verify`'s table."""
    cases = []
    for node in nodes:
        raw = json.loads(host_of(node).file(NODE_CONFIG).content_string)
        needs = raw.get("kernel_needs")
        if needs is None:
            cases.append(
                pytest.param(node, None, id=node.name, marks=pytest.mark.skip(reason=NO_KERNEL_NEEDS))
            )
        else:
            entries = KERNEL_NEEDS_CASES[argument](needs)
            cases += [pytest.param(node, entry, id=f"{node.name}-{entry}") for entry in entries]
    return cases


@pytest.fixture
def cluster(pytestconfig: pytest.Config) -> Cluster:
    return cluster_of(pytestconfig)


@cache
def _control_folder() -> str:
    return tempfile.mkdtemp(prefix="picluster-verify-ssh-")


@cache
def _host(user: str, address: str, ssh_config: str | None) -> Any:
    # one SSH connection per node, shared by every check (ControlMaster), not one per command
    control = f"{_control_folder()}/{user}@{address}"
    return testinfra.get_host(f"ssh://{user}@{address}", ssh_config=ssh_config, controlpath=control)


def host_for(config: pytest.Config, node: Node) -> Any:
    user = cluster_of(config).access.user
    return _host(user, str(node.address.ip), config.getoption("ssh_config"))


@pytest.fixture
def host(pytestconfig: pytest.Config, node: Node) -> Any:
    return host_for(pytestconfig, node)


_agent_states: dict[str, dict[str, Any]] = {}


@pytest.fixture
def agent_state(host: Any, node: Node) -> dict[str, Any]:
    """The agent's status, read once per node so every check sees the same moment."""
    if node.name not in _agent_states:
        output = host.run("sudo -n picluster-agent status --json")
        assert output.rc == 0, f"picluster-agent status failed: {output.stderr.strip()}"
        _agent_states[node.name] = json.loads(output.stdout)
    return _agent_states[node.name]


@pytest.fixture
def kubernetes(host: Any, agent_state: dict[str, Any]) -> None:
    """Checks that need Kubernetes skip, saying why, on a node where it is not installed."""
    if not host.exists("kubeadm"):
        pytest.skip(f"Kubernetes is not installed on this node (agent phase '{agent_state['phase']}')")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skipped = config.getoption("--skip-check")
    unknown = set(skipped) - {
        item.originalname.removeprefix("test_") for item in items if isinstance(item, pytest.Function)
    }
    if unknown:
        raise pytest.UsageError(f"--skip-check {', '.join(sorted(unknown))}: no such check")
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        name = item.originalname.removeprefix("test_")
        if name in skipped:
            item.add_marker(pytest.mark.skip(reason=f"skipped on request (--skip {name})"))
        params = item.callspec.params if hasattr(item, "callspec") else {}
        node = params.get("node")
        label = (item.function.__doc__ or item.name).strip().splitlines()[0]
        extra = [str(v) for k, v in params.items() if k != "node" and v is not None]
        item.user_properties += [
            ("node", node.name if isinstance(node, Node) else ""),
            ("check", " ".join([label, *extra])),
        ]


class JsonLinesReport:
    """Each result as it happens, one JSON object a line, after a first line with how many checks
    are planned, so `picluster verify` can say how far the suite has come while it runs; and each
    check as it starts (outcome "running")."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, record: dict[str, Any], mode: str) -> None:
        with self.path.open(mode) as report:
            report.write(json.dumps(record) + "\n")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._write({"planned": len(session.items)}, "w")

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # which check a node that stops answering holds up, for picluster verify to name
        self._write({**dict(item.user_properties), "outcome": "running"}, "a")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            properties = dict(report.user_properties)
            if report.skipped and isinstance(report.longrepr, tuple):
                message = report.longrepr[2].removeprefix("Skipped: ")
            elif report.failed:
                message = _assertion_message(report)
            else:
                message = ""
            self._write({**properties, "outcome": report.outcome, "message": message}, "a")


def _assertion_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return text.split("\nassert ")[0].removeprefix("AssertionError: ").strip()
