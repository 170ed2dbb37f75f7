"""Integration fixtures: real partition tables and filesystems, made with the real tools."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from builder.image.context import default_cache
from builder.image.flannel_image import FlannelImage
from builder.spec.load import load_cluster
from builder.spec.model import Cluster
from tests.support.api_standin import on_a_lan_of_its_own
from tests.support.cold_builds import cold_builds  # noqa: F401  a fixture of this tier
from tests.support.host import publish_flannel_image
from tests.support.project import BUNDLED
from tests.support.raspios_standin import raspios_standin_source  # noqa: F401  a fixture of this tier


@pytest.fixture
def lan() -> Iterator[ipaddress.IPv4Address]:
    """The test on a LAN of its own, as the build machine (api_standin.on_a_lan_of_its_own)."""
    with on_a_lan_of_its_own() as address:
        yield address


@pytest.fixture
def cluster() -> Cluster:
    return load_cluster(BUNDLED)


@pytest.fixture(scope="session")
def flannel() -> FlannelImage:
    """flannel's OCI image (builder.image.flannel_image), built once into the project's cache and
    reused by later runs."""
    return publish_flannel_image(default_cache())
