"""What the terminal shows of a long mmdebstrap run: its own steps, and a package count through
the minutes dpkg works under emulation without a word."""

from __future__ import annotations

import dataclasses
import re

APT_PLAN = re.compile(r"^(?P<upgraded>\d+) upgraded, (?P<installed>\d+) newly installed")
"""apt-get's summary before it installs ("0 upgraded, 15 newly installed, 0 to remove ...")."""


@dataclasses.dataclass
class MmdebstrapProgress:
    """What the terminal shows of mmdebstrap's --verbose output: its own milestones ("I: installing
    remaining packages..."), and through the minutes that dpkg then works under emulation, how
    many of the packages apt's summary announced are unpacked and set up. A count is shown when it
    moved, at most every `every` seconds after the line before it, and when the last is set up."""

    every: float = 10.0
    planned: int = 0
    unpacked: int = 0
    configured: int = 0
    _said_at: float = dataclasses.field(default=0.0, init=False, repr=False)
    _said_count: int = dataclasses.field(default=0, init=False, repr=False)

    def feed(self, line: str, elapsed: float) -> str | None:
        """Take one line of output; return what to show for it, if anything."""
        # not a step: mmdebstrap's note that it emulates arm64, or a maintainer script's words
        # while dpkg works (the kernel's postinst says "I: /vmlinuz is now a symlink to ...")
        if line.startswith("I: ") and "binfmt" not in line and not self._in_dpkg():
            self._said_at = elapsed
            return line
        if plan := APT_PLAN.match(line):
            # the essential packages' summary comes while they are downloaded, the rest's just
            # before they are installed; either way the count starts again
            self.planned = int(plan["upgraded"]) + int(plan["installed"])
            self.unpacked = self.configured = self._said_count = 0
        elif line.startswith("Unpacking "):
            self.unpacked += 1
        elif line.startswith("Setting up "):
            self.configured += 1
        # any line may be the one that finds a count due: a package's script can talk for a
        # while after the count last moved
        count = self.unpacked + self.configured
        if not self.planned or count == self._said_count:
            return None
        if elapsed - self._said_at < self.every and self.configured < self.planned:
            return None
        self._said_at, self._said_count = elapsed, count
        # indented to sit under the milestone's text, after its "I: "
        return (
            f"   packages: {self.unpacked}/{self.planned} unpacked, {self.configured}/{self.planned} set up"
        )

    def _in_dpkg(self) -> bool:
        """dpkg has started on the announced packages and not set them all up yet."""
        return self.unpacked > 0 and self.configured < self.planned
