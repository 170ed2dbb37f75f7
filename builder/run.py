"""The one place picluster starts programs: a Runner. A verbose one (-v) echoes each command as
`+ cmd`, and every line of a long one.

A failing command becomes a CommandError naming the command and the end of its output, so a
broken build reads as one clear message rather than a traceback. Every program dies with
picluster: it is started through util-linux's `setpriv --pdeathsig KILL`, so a build killed with
`kill -9` leaves no `cp` finishing a 1.2 GiB hidden file behind it. (Not preexec_fn: the build
starts programs from several threads, where Python cannot run code between fork and exec safely.)
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from builder.errors import UserError

Output = Literal["show", "hide", "pipe"]

OUTPUT_TAIL_LINES = 15
DIE_WITH_PICLUSTER = ("setpriv", "--pdeathsig", "KILL", "--")


class CommandError(UserError):
    def __init__(self, command: Sequence[str], status: int, output: str, hint: str = "") -> None:
        tail = "\n".join(output.strip().splitlines()[-OUTPUT_TAIL_LINES:])
        message = f"`{shlex.join(command)}` failed with status {status}"
        if tail:
            message += ":\n    " + tail.replace("\n", "\n    ")
        super().__init__(message, hint or "run again with -v to see every command")
        self.status = status
        self.output = output


class CommandTimedOut(UserError):
    def __init__(self, command: Sequence[str], seconds: float) -> None:
        super().__init__(f"`{shlex.join(command)}` did not finish within {seconds:g} s")
        self.seconds = seconds


@dataclass(frozen=True)
class Runner:
    """Starts programs. `verbose`: echo each command, and every line of a long one."""

    verbose: bool = False

    def run(
        self,
        command: Sequence[str | Path],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        hint: str = "",
        merge_stderr: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Run a command to completion; return its output; raise CommandError on failure, and
        CommandTimedOut (having killed it) when it runs longer than `timeout` seconds.

        The output is standard output, or both streams interleaved with merge_stderr.
        """
        words = self._announce(command, env)
        try:
            result = subprocess.run(
                [*DIE_WITH_PICLUSTER, *words],
                input=input,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                env={**os.environ, **env} if env else None,
                cwd=cwd,
                check=False,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise CommandTimedOut(words, timeout or 0) from None
        stdout = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            output = stdout + (result.stderr or b"").decode(errors="replace")
            raise CommandError(words, result.returncode, output, hint)
        return stdout

    def start(
        self, command: Sequence[str | Path], *, cwd: Path | None = None, output: Output = "show"
    ) -> subprocess.Popen[bytes]:
        """Start a command that picluster follows while it runs; the caller waits for it.

        Its output goes to the terminal ("show"), nowhere ("hide") or to the caller ("pipe").
        """
        words = self._announce(command, None)
        stdout = {"show": None, "hide": subprocess.DEVNULL, "pipe": subprocess.PIPE}[output]
        return subprocess.Popen([*DIE_WITH_PICLUSTER, *words], cwd=cwd, stdout=stdout)

    def stream(
        self,
        command: Sequence[str | Path],
        log: Path,
        *,
        follow: Callable[[str, float], str | None] = lambda line, elapsed: None,
        show: Callable[[str], None] = lambda text: None,
        hint: str = "",
    ) -> None:
        """Run a long command with its output going to a log file, each line stamped with its time.

        `follow` is given each line with the seconds since the start, and says what to show of it,
        if anything; that is passed to `show` with the time. Verbose, every line is printed instead.
        """
        words = self._announce(command, None)
        began = time.monotonic()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [*DIE_WITH_PICLUSTER, *words], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            assert process.stdout is not None
            for line in process.stdout:
                elapsed = time.monotonic() - began
                # the log says when each line came, so a slow step can be found afterwards
                sink.write(f"[{elapsed:7.1f}s] ".encode() + line)
                sink.flush()  # someone may be following the log while the build runs
                text = line.decode(errors="replace").rstrip()
                if self.verbose:
                    print(text, file=sys.stderr, flush=True)
                elif shown := follow(text, elapsed):
                    minutes, seconds = divmod(int(elapsed), 60)
                    shown = shown if len(shown) <= 100 else shown[:97] + "..."
                    show(f"    [{minutes:2d}m{seconds:02d}s] {shown}")
            status = process.wait()
        if status != 0:
            raise CommandError(words, status, log.read_text(errors="replace"), hint or f"full log: {log}")

    def _announce(self, command: Sequence[str | Path], env: Mapping[str, str] | None) -> list[str]:
        """The command as words, echoed under -v; a program that is not installed is a UserError
        here, before setpriv would report it as a failed command."""
        words = [str(word) for word in command]
        if self.verbose:
            print(f"+ {shlex.join(words)}", file=sys.stderr, flush=True)
        path = (env or {}).get("PATH", os.environ.get("PATH"))
        for program in (words[0], DIE_WITH_PICLUSTER[0]):
            if shutil.which(program, path=path) is None:
                raise UserError(
                    f"`{program}` is not installed", "run `make images`, which installs what picluster needs"
                )
        return words
