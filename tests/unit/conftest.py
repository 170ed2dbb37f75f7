"""Unit tests run no programs: an unexpected subprocess fails the test loudly.

A test that means to run one (openssl, to cross-check a hash) asks for `allow_subprocess`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


class UnexpectedSubprocess(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _no_subprocess(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if "allow_subprocess" not in request.fixturenames:

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise UnexpectedSubprocess(f"unit test started a program: {args[0] if args else kwargs}")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield


@pytest.fixture
def allow_subprocess() -> None:
    """Request this to let a unit test run a program on purpose."""
