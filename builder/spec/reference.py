"""cluster.yaml's key reference in Markdown, made from the model's JSON Schema so it says what the
model says. The checkout keeps it in docs/cluster-yaml.md; refresh it with
`python -m builder.spec.reference > docs/cluster-yaml.md`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from builder.spec.model import Cluster

Schema = dict[str, Any]

REGENERATE = "python -m builder.spec.reference > docs/cluster-yaml.md"

INTRO = f"""\
# cluster.yaml keys

Every key `cluster.yaml` takes, generated from picluster's model (`builder/spec/model.py`)
with `{REGENERATE}`: edit the model, not this file.
The types and defaults here are checked key by key; `picluster validate` also checks the rules
that relate several keys (such as every node's address being in the gateway's subnet) and says
how to fix each problem it finds.

A **required** key must be written whenever the section it is in is; any other key may be left
out and takes its default (none: the key is simply not set). `[]` in a path stands for every
entry of a list: `nodes[].address` is the address of each node.
"""

FORMATS = {
    "ipv4": ("IPv4 address", "IPv4 addresses"),
    "ipv4network": ("IPv4 network with prefix", "IPv4 networks with prefix"),
    "ipv4interface": ("IPv4 address with prefix", "IPv4 addresses with prefix"),
    "password": ("secret text", "secret texts"),
}
"""pydantic's formats for the string types the model uses, in plain words."""

TYPES = {
    "string": ("text", "text"),
    "integer": ("whole number", "whole numbers"),
    "object": ("section (keys below)", "sections (keys below)"),
}


def key_reference(schema: Schema) -> str:
    """The Markdown reference: one section per top-level key, in the model's order, each a table of
    that key and every key nested under it."""
    parts = [INTRO]
    required = set(schema.get("required", []))
    for key, field in schema["properties"].items():
        rows = _rows(schema, key, field, key in required)
        parts.append(f"## {key}\n\n| Key | Type | Default | Description |\n|---|---|---|---|\n{rows}")
    return "\n".join(parts)


def _rows(root: Schema, path: str, field: Schema, required: bool) -> str:
    """The table row of the key at path, then those of the keys nested under it."""
    default = "**required**" if required else _default(field)
    row = f"| `{path}` | {_kind(root, field)} | {default} | {_cell(field.get('description', ''))} |\n"
    nested, inside = _nested(root, field)
    if nested is None:
        return row
    below = set(nested.get("required", []))
    children = nested["properties"].items()
    return row + "".join(_rows(root, f"{path}{inside}.{key}", child, key in below) for key, child in children)


def _nested(root: Schema, field: Schema) -> tuple[Schema | None, str]:
    """The object whose keys sit under field, if any, and what its path adds before them: `[]`
    when field is a list of such objects."""
    field = _resolve(root, _present(field))
    if field.get("type") == "array":
        items = _resolve(root, field["items"])
        return (items, "[]") if items.get("type") == "object" else (None, "")
    return (field, "") if field.get("type") == "object" else (None, "")


def _kind(root: Schema, field: Schema, plural: bool = False) -> str:
    """The type of a value, in words; field's own bounds follow it."""
    field = _resolve(root, _present(field))
    if "anyOf" in field:
        return " or ".join(_kind(root, choice, plural) for choice in field["anyOf"])
    if "const" in field:
        return f"`{field['const']}`"
    if "enum" in field:
        return _choices(field["enum"])
    if field.get("type") == "array":
        words = f"list of {_kind(root, field['items'], plural=True)}"
    else:
        singular, many = FORMATS.get(field.get("format", ""), TYPES.get(field["type"], (field["type"],) * 2))
        words = many if plural else singular
    return words + _bounds(field)


def _bounds(field: Schema) -> str:
    if "minimum" in field and "maximum" in field:
        return f", {field['minimum']} to {field['maximum']}"
    if "minItems" in field:
        return f", at least {field['minItems']}"
    if "minLength" in field:
        return ", not empty"
    return ""


def _choices(values: list[str]) -> str:
    quoted = [f"`{value}`" for value in values]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]]) if len(quoted) > 1 else quoted[0]


def _present(field: Schema) -> Schema:
    """An optional field's type without its null: leaving the key out is what null means."""
    choices = [choice for choice in field.get("anyOf", []) if choice.get("type") != "null"]
    if len(choices) == 1:
        return {**{k: v for k, v in field.items() if k != "anyOf"}, **choices[0]}
    return field


def _resolve(root: Schema, field: Schema) -> Schema:
    if "$ref" not in field:
        return field
    name = field["$ref"].removeprefix("#/$defs/")
    return {**root["$defs"][name], **{k: v for k, v in field.items() if k != "$ref"}}


def _default(field: Schema) -> str:
    if "default" not in field or field["default"] is None:
        return "none"
    value = field["default"]
    if isinstance(value, dict):
        return "the defaults below"
    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    """Text that stays in its table cell and shows as written: a `|` would end the cell, and
    `<minor>` would be read as an HTML tag and hidden."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def main() -> None:
    sys.stdout.write(key_reference(Cluster.model_json_schema()))


if __name__ == "__main__":
    main()
