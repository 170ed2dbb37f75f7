"""The cards the e2e tier boots, each built once per run, and the Raspberry Pi OS stand-in they
share with the integration tests (built once per machine, served on 127.0.0.1)."""

from __future__ import annotations

import os

import pytest

from builder.spec.model import ImageSource
from tests.support.cold_builds import cold_builds
from tests.support.host import require_tools
from tests.support.machines import Card, make_card
from tests.support.raspios_standin import raspios_standin_source
from tests.support.registry import registry

__all__ = ["cold_builds", "raspios_standin_source"]


@pytest.fixture(scope="session")
def card(tmp_path_factory: pytest.TempPathFactory) -> Card:
    """cp1's card, carrying small images standing in for its container images (images: card)."""
    if os.geteuid() != 0:
        pytest.skip("building the Debian base needs root")
    require_tools("mmdebstrap")
    with registry(tmp_path_factory.mktemp("registry")) as mirror:
        return make_card(tmp_path_factory.mktemp("e2e"), "pi4", mirror=mirror)


@pytest.fixture(scope="session")
def raspios_card(tmp_path_factory: pytest.TempPathFactory, raspios_standin_source: ImageSource) -> Card:
    """A Pi 5's card on the Raspberry Pi OS stand-in (tests/support/raspios_standin.py)."""
    return make_card(tmp_path_factory.mktemp("e2e-raspios"), "pi5", raspios_standin_source)
