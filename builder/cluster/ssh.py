"""Commands on a node over SSH, as root: the one way picluster reaches a node's own programs
(`upgrade`'s steps, `backup`'s etcd snapshot), as `picluster verify` reaches it."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from builder.run import CommandError, CommandTimedOut, Runner
from builder.spec.model import Node


class NodeFailed(Exception):
    """A command on the node failed, or the node did not answer; the message is what it said."""


NodeShell = Callable[[Node, list[str]], str]
"""Runs a command on a node as root and returns its output; raises NodeFailed."""


def ssh_shell(user: str, ssh_config: Path | None, runner: Runner, timeout: float = 1800) -> NodeShell:
    """Commands on a node over ssh as `picluster verify` reaches it, run with sudo."""

    def run(node: Node, command: list[str]) -> str:
        config = ["-F", str(ssh_config)] if ssh_config else []
        options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
        remote = shlex.join(["sudo", "-n", *command])
        try:
            return runner.run(
                ["ssh", *config, *options, f"{user}@{node.address.ip}", remote], timeout=timeout
            )
        except (CommandError, CommandTimedOut) as error:
            said = getattr(error, "output", "").strip().splitlines()
            raise NodeFailed(" | ".join(said[-3:]) or error.message) from None

    return run
