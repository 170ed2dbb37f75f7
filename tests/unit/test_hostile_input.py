"""Whatever bytes cluster.yaml holds, `picluster validate` answers 0 or 2, quickly, never a traceback.

Four sources of input, 2,000 examples each: raw bytes, text made of YAML's punctuation, random
YAML documents, and the bundled cluster.yaml with a field deleted or replaced by a random value.
"""

from __future__ import annotations

import contextlib
import copy
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.cli import main
from tests.conftest import BUNDLED

EXAMPLES = settings(max_examples=2000, deadline=timedelta(seconds=2))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(["192.168.50.11", "10.244.0.0/16", "1.34.2", "pi4", "worker", "eth0", "-1", ""]),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
yaml_text = st.text(alphabet=st.sampled_from(list("ab1.:-?!&*|>{}[],#'\"%@`\\ \t\n")), max_size=200)


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "cluster.yaml"


def validate(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = main(["validate", "-f", str(path)])
    assert status in (0, 2)


@EXAMPLES
@given(content=st.binary(max_size=2000))
def test_random_bytes(path: Path, content: bytes) -> None:
    validate(path, content)


@EXAMPLES
@given(text=yaml_text)
def test_random_yaml_punctuation(path: Path, text: str) -> None:
    validate(path, text.encode())


@EXAMPLES
@given(document=values)
def test_random_yaml_documents(path: Path, document: Any) -> None:
    validate(path, yaml.safe_dump(document).encode())


BUNDLED_DATA = yaml.safe_load(BUNDLED.read_text())


@EXAMPLES
@given(data=st.data())
def test_the_bundled_file_with_a_field_deleted_or_replaced(path: Path, data: st.DataObject) -> None:
    document = copy.deepcopy(BUNDLED_DATA)
    parent: Any = document
    key = data.draw(st.sampled_from(sorted(parent)))
    # walk down a random path; stop anywhere, so top-level sections get replaced too
    while isinstance(parent[key], dict | list) and parent[key] and data.draw(st.booleans()):
        parent = parent[key]
        key = data.draw(st.sampled_from(sorted(parent) if isinstance(parent, dict) else range(len(parent))))
    if data.draw(st.booleans()):
        del parent[key]
    else:
        parent[key] = data.draw(values)
    validate(path, yaml.safe_dump(document).encode())
