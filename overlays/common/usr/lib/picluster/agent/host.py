"""The node the agent works on: its filesystem (under a root, so tests use a folder) and the
commands it runs. The one place that starts programs; --dry-run stops here."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BOOTSTRAP_TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")  # kubeadm init prints one
CERTIFICATE_KEY = re.compile(r"(--certificate-key\s+)[0-9a-f]{64}")


def redact(text: str) -> str:
    """Output goes to the journal; bootstrap tokens and certificate keys must not."""
    return CERTIFICATE_KEY.sub(r"\1<key>", BOOTSTRAP_TOKEN.sub("<token>", text))


def say(line: str) -> None:
    print(line, flush=True)


def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


class CommandFailed(Exception):
    def __init__(self, argv: list[str], status: int, output: str) -> None:
        self.argv, self.status, self.output = argv, status, output
        super().__init__(self.summary)

    @property
    def summary(self) -> str:
        tail = " | ".join(line.strip() for line in self.output.strip().splitlines()[-3:])
        return f"{shlex.join(self.argv)} exited with {self.status}" + (f": {tail}" if tail else "")


@dataclass(frozen=True)
class Host:
    root: Path = Path("/")
    dry_run: bool = False

    def path(self, node_path: str | Path) -> Path:
        """A path on the node, e.g. /etc/kubernetes/kubelet.conf, under the root worked on."""
        return self.root / str(node_path).lstrip("/")

    def run(self, argv: list[str], *, changes: bool = True, timeout: float | None = None) -> str:
        """Run a command and return its output; raises CommandFailed on a non-zero exit.

        Commands that change the node are shown, with their output, in the journal; under
        --dry-run they are only shown. Read-only commands (changes=False) always run, quietly.
        """
        if changes:
            say(f"{'would run' if self.dry_run else '+'} {shlex.join(argv)}")
            if self.dry_run:
                return ""
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise CommandFailed(argv, 127, f"{argv[0]}: command not found") from None
        except subprocess.TimeoutExpired:
            raise CommandFailed(argv, -1, f"no answer within {timeout:.0f} s") from None
        output = redact(done.stdout + done.stderr)
        if changes:
            for line in output.splitlines():
                say(f"    {line}")
        if done.returncode != 0:
            raise CommandFailed(argv, done.returncode, output)
        return done.stdout

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Backoff:
    """Delays that double from `initial` up to `cap`."""

    def __init__(self, initial: float, cap: float) -> None:
        self.next_delay, self.cap = initial, cap

    def next(self) -> float:
        delay = self.next_delay
        self.next_delay = min(self.next_delay * 2, self.cap)
        return delay
