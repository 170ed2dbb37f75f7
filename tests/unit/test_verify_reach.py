"""`picluster verify` before the suite runs: a --skip that names no check lists the checks."""

from __future__ import annotations

import pytest

from builder.cli import main
from tests.conftest import BUNDLED


def test_verify_lists_the_checks_when_skip_names_none(capsys: pytest.CaptureFixture[str]) -> None:
    # no allow_subprocess: the name is checked before any node is reached
    assert main(["verify", "-f", str(BUNDLED), "--skip", "time_synchronized"]) == 2
    message, _, hint = capsys.readouterr().err.partition("fix:")
    assert "--skip time_synchronized: no such check" in message
    assert "time_synchronised" in hint and "hostname" in hint and "flannel_daemonset" in hint
