"""Progress for long work: a line per step with its elapsed time, and a counter across nodes.

The reporter is passed in, so tests can use a silent one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Reporter:
    def __init__(self, stream: TextIO | None = sys.stderr) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Announce a step, then say how long it took (or that it failed)."""
        self.say(f"==> {name}")
        start = time.monotonic()
        try:
            yield
        except BaseException:
            self.say(f"    failed after {time.monotonic() - start:.1f}s")
            raise
        self.say(f"    done in {time.monotonic() - start:.1f}s")

    def item(self, index: int, total: int, text: str) -> None:
        """One line per item of a stage, e.g. per node: `[2/3] w1: built in 1.2s`."""
        width = len(str(total))
        self.say(f"    [{index:>{width}}/{total}] {text}")


def silent() -> Reporter:
    return Reporter(stream=None)
