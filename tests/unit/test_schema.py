"""cluster.yaml's JSON Schema: the copy editors read is current, and it fits the bundled file; the
key reference made from it is current and names every key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # comes with kubernetes-validate, a dev dependency
import pytest
import yaml

from builder.cli import main
from builder.spec import reference
from builder.spec.model import Cluster, json_schema
from builder.spec.reference import REGENERATE, key_reference
from tests.support.config_edits import Edit, problems_for, set_at
from tests.support.project import BUNDLED, REPO

SCHEMA_FILE = REPO / "builder" / "spec" / "cluster.schema.json"
MODELINE = "# yaml-language-server: $schema=builder/spec/cluster.schema.json"
REFERENCE_FILE = REPO / "docs" / "cluster-yaml.md"
GOLDEN_CLUSTERS = sorted((REPO / "tests" / "unit" / "golden").glob("*/cluster.yaml"))


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_kept_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text() == json_schema(), (
        "builder/spec/cluster.schema.json differs from the model in builder/spec/model.py; "
        "refresh it with `picluster schema > builder/spec/cluster.schema.json`"
    )


def test_schema_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == json_schema()
    schema = json.loads(printed)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["nodes"]["description"] == "the Raspberry Pis, at least one"


def test_the_bundled_file_names_the_schema() -> None:
    first_line = BUNDLED.read_text().splitlines()[0]
    assert first_line == MODELINE
    assert (BUNDLED.parent / first_line.split("=", 1)[1]).resolve() == SCHEMA_FILE


@pytest.mark.parametrize("path", [BUNDLED, *GOLDEN_CLUSTERS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_valid_cluster_files_fit_the_schema(path: Path) -> None:
    _validator().validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (set_at("clutser", {}), ""),
        (set_at("flannel.ifce", "eth0"), "flannel"),
        (set_at("nodes.0.ip", "192.168.50.10/24"), "nodes.0"),
        (
            set_at("network.wifi", {"ssid": "lab", "psk": "12345678", "country": "DE", "bnd": 5}),
            "network.wifi",
        ),
        (set_at("nodes.0.role", "master"), "nodes.0.role"),
        (lambda data: data.pop("access"), ""),
        (lambda data: data["cluster"].pop("pod_subnet"), "cluster"),
    ],
    ids=["top-level", "nested", "in-a-list", "optional-section", "choice", "required", "required-nested"],
)
def test_the_schema_refuses_what_validate_refuses(edit: Edit, where: str, tmp_path: Path) -> None:
    data = yaml.safe_load(BUNDLED.read_text())
    edit(data)
    assert problems_for(data, tmp_path)
    errors = list(_validator().iter_errors(data))
    assert [".".join(map(str, error.absolute_path)) for error in errors] == [where]


def test_the_kept_key_reference_is_current() -> None:
    assert REFERENCE_FILE.read_text() == key_reference(Cluster.model_json_schema()), (
        "docs/cluster-yaml.md differs from the model in builder/spec/model.py; "
        f"refresh it with `{REGENERATE}`"
    )


def test_the_module_prints_the_key_reference(capsys: pytest.CaptureFixture[str]) -> None:
    reference.main()
    assert capsys.readouterr().out == key_reference(Cluster.model_json_schema())


def _rows() -> dict[str, list[str]]:
    """The reference's table rows by key path: type, default, description."""
    found = {}
    for line in key_reference(Cluster.model_json_schema()).splitlines():
        if match := re.fullmatch(r"\| `([^`]+)` \| (.*) \| (.*) \| (.*) \|", line):
            found[match[1]] = [match[2], match[3], match[4]]
    return found


def test_the_key_reference_says_type_default_and_whether_required() -> None:
    rows = _rows()
    assert rows["cluster.join_window_days"][:2] == ["whole number, 1 to 365", "`90`"]
    assert rows["nodes"][:2] == ["list of sections (keys below), at least 1", "**required**"]
    assert rows["nodes[].address"] == [
        "IPv4 address with prefix",
        "**required**",
        "the static address with prefix, e.g. 192.168.50.10/24",
    ]
    assert rows["network.wifi"][:2] == ["section (keys below)", "none"]
    assert rows["network.wifi.ssid"][:2] == ["text, not empty", "**required**"]
    assert rows["flannel.backend"][:2] == ["`vxlan` or `host-gw`", "`vxlan`"]
    assert "v1.&lt;minor>" in rows["cluster.kubernetes_repository"][2]


def _paths(value: Any, path: str = "") -> set[str]:
    if isinstance(value, dict):
        return {
            found for key, item in value.items() for found in {f"{path}{key}", *_paths(item, f"{path}{key}.")}
        }
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return {found for item in value for found in _paths(item, f"{path.removesuffix('.')}[].")}
    return set()


@pytest.mark.parametrize("path", [BUNDLED, *GOLDEN_CLUSTERS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_the_key_reference_names_every_key_written(path: Path) -> None:
    assert _paths(yaml.safe_load(path.read_text())) - set(_rows()) == set()
