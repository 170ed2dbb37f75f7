"""Edits of the bundled cluster.yaml for validation tests, and what validate says of the result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.errors import ConfigError, Problem
from builder.spec.load import load_cluster
from tests.support.project import BUNDLED

Edit = Callable[[dict[str, Any]], None]


def problems_for(data: dict[str, Any], tmp_path: Path) -> list[Problem]:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    return caught.value.problems


def set_at(path: str, value: Any) -> Edit:
    """An edit that sets a dotted path, e.g. 'cluster.pod_subnet' or 'nodes.2.address'."""

    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return edit


def every_field(data: dict[str, Any]) -> dict[str, Any]:
    """The bundled file with every optional setting given, so that each string field is present."""
    data["cluster"]["control_plane_endpoint"] = "kube.lab:6443"
    data["cluster"]["kubernetes_repository"] = "https://mirror.lab/k8s/"
    data["network"]["wifi"] = {"ssid": "lab", "psk": "correct horse", "country": "DE"}
    data["base"]["packages"] = ["htop"]
    data["base"]["image"] = {"url": "https://example.org/os.img.xz", "sha256": "0" * 64}
    return data


def string_fields(value: Any, path: str = "") -> list[str]:
    """The dotted path of every string in value, e.g. 'nodes.1.name'."""
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in string_fields(item, f"{path}{key}.")]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in string_fields(item, f"{path}{i}.")]
    return [path.rstrip(".")] if isinstance(value, str) else []


def value_at(data: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted path, e.g. 'nodes.1.name'."""
    value: Any = data
    for part in dotted.split("."):
        value = value[int(part)] if part.isdigit() else value[part]
    return value


EVERY_FIELD = every_field(yaml.safe_load(BUNDLED.read_text()))
