"""The e2e tier's guests run one at a time and never outlive it: `sleep` stands in for QEMU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.machines import vm
from tests.support.project import REPO

pytestmark = pytest.mark.e2e

GUEST = ["sleep", "600"]


def test_a_second_guest_is_refused_while_one_runs(tmp_path: Path) -> None:
    with vm(GUEST, tmp_path / "first.log") as first:
        with pytest.raises(pytest.fail.Exception, match="1 QEMU guest"), vm(GUEST, None):
            pass
        assert first.poll() is None
    assert first.poll() == -signal.SIGKILL, "the guest stops with its block"
    with vm(GUEST, None) as again:  # and then the next may start
        assert again.poll() is None


def test_a_guest_dies_with_a_pytest_killed_outright(tmp_path: Path) -> None:
    """Ctrl-C unwinds the fixtures; a SIGKILL does not, and the kernel stops the guest then."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tests.support.machines import vm\n"
         "with vm(['sleep', '600'], None) as guest:\n    print(guest.pid, flush=True); time.sleep(600)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    guest = int(holder.stdout.readline())
    holder.kill()
    holder.wait()
    deadline = time.monotonic() + 10
    while _alive(guest):
        assert time.monotonic() < deadline, f"guest {guest} outlived the pytest that started it"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    if state == "Z":  # a zombie, dead, waiting for init to reap it
        return False
    os.kill(pid, 0)
    return True
