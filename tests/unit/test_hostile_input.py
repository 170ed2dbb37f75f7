"""Whatever bytes cluster.yaml holds, `picluster validate` answers 0 or 2, quickly, never a traceback.

Four sources of input, 2,000 examples each: raw bytes, text made of YAML's punctuation, random
YAML documents, and the bundled cluster.yaml with a field deleted or replaced by a random value.
Then, 500 examples each, the bundled file with every setting given and one value changed: a YAML
tag on it, a control character in it, nesting written out or through aliases in its place, or a
Wi-Fi passphrase of any type, which no message may show.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.cli import main
from builder.spec.load import MAX_DEPTH
from tests.support.config_edits import EVERY_FIELD, set_at, string_fields, value_at
from tests.support.project import BUNDLED

EXAMPLES = settings(max_examples=2000, deadline=timedelta(seconds=2))
FOCUSED = settings(max_examples=500, deadline=timedelta(seconds=2))
"""For inputs drawn from a small space: one field, one kind of change."""

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


def validate(path: Path, content: bytes) -> tuple[int, str]:
    """The exit status and everything printed."""
    path.write_bytes(content)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        status = main(["validate", "-f", str(path)])
    assert status in (0, 2)
    return status, printed.getvalue()


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


def _replaced(where: str, value: Any) -> dict[str, Any]:
    """The bundled file with every setting given, and value at a dotted path ('nodes.1.name')."""
    document = copy.deepcopy(EVERY_FIELD)
    set_at(where, value)(document)
    return document


def _with_text_at(where: str, yaml_text: str) -> bytes:
    """The bundled file with every setting given, and yaml_text written as it is at where."""
    marker = "marker-0123456789"
    return yaml.safe_dump(_replaced(where, marker)).replace(marker, yaml_text).encode()


STRING_FIELDS = string_fields(EVERY_FIELD)
TAGS = [
    *(f"!!{name}" for name in ("null", "bool", "int", "float", "binary", "timestamp", "str")),
    *(f"!!{name}" for name in ("omap", "pairs", "set", "seq", "map", "merge", "value", "yaml")),
    "!!python/none",
    "!local",
]
tagged = st.builds(
    lambda tag, value: f"{tag} {value}",
    st.sampled_from(TAGS),
    st.text(max_size=12).map(json.dumps)
    | st.sampled_from(["x", "1_0", "0x", "0b", "-", ".", ":", "2020-99-99", "1:60", "[]", "{}", "[a, 1]"]),
)


@FOCUSED
@given(where=st.sampled_from(STRING_FIELDS), value=tagged)
def test_a_tag_on_any_value(path: Path, where: str, value: str) -> None:
    validate(path, _with_text_at(where, value))


CONTROL_CHARACTERS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]


@FOCUSED
@given(where=st.sampled_from(STRING_FIELDS), control=st.sampled_from(CONTROL_CHARACTERS), data=st.data())
def test_a_control_character_in_any_text_is_refused(
    path: Path, where: str, control: str, data: st.DataObject
) -> None:
    """The card writes these texts into files: a line break in one would start another line."""
    if where.startswith("access.ssh_authorized_keys") and control == "\t":
        return  # OpenSSH separates a key's fields with blanks and tabs
    text = value_at(EVERY_FIELD, where)
    at = data.draw(st.integers(0, len(text)))
    status, _ = validate(path, yaml.safe_dump(_replaced(where, text[:at] + control + text[at:])).encode())
    assert status == 2


@FOCUSED
@given(
    where=st.sampled_from(STRING_FIELDS),
    levels=st.lists(st.sampled_from([("[", "]"), ("{a: ", "}")]), max_size=200),
    aliases=st.integers(0, 30),
)
def test_a_value_nested_deep(path: Path, where: str, levels: list[tuple[str, str]], aliases: int) -> None:
    """Nesting written out, then `aliases` anchors each nesting the one before as deep again."""
    opening, closing = "".join(o for o, _ in levels), "".join(c for _, c in reversed(levels))
    chain = [f"l0: &l0 {opening}x{closing}"]
    chain += [f"l{i}: &l{i} {opening}*l{i - 1}{closing}" for i in range(1, aliases + 1)]
    _, printed = validate(path, "\n".join(chain).encode() + b"\n" + _with_text_at(where, f"*l{aliases}"))
    if 1 + (aliases + 1) * len(levels) >= MAX_DEPTH:  # the top-level mapping is the first level
        assert f"nest more than {MAX_DEPTH} levels deep" in printed


SECRET = "Sekr1t"
"""Every passphrase of text drawn holds it; it is no word of any message."""
texts = st.text(max_size=70).map(lambda text: json.dumps(SECRET + text))
numbers = st.integers(min_value=10**8).map(str)
passphrases = st.one_of(
    # (the passphrase as cluster.yaml holds it, the part no message may show)
    texts.map(lambda text: (text, SECRET)),
    numbers.map(lambda number: (number, number)),
    numbers.map(lambda number: (f"{number}.5", number)),
    numbers.map(lambda number: (f"{{{number}: 1, {number}: 2}}", number)),
    st.builds(lambda tag, text: (f"{tag} {text}", SECRET), st.sampled_from(TAGS), texts),
    texts.map(lambda text: (f"[{text}]", SECRET)),
    texts.map(lambda text: (f"{{{text}: 1, {text}: 2}}", SECRET)),
)


@FOCUSED
@given(passphrase=passphrases)
def test_no_message_shows_the_wifi_passphrase(path: Path, passphrase: tuple[str, str]) -> None:
    written, secret = passphrase
    _, printed = validate(path, _with_text_at("network.wifi.psk", written))
    assert secret not in printed
