"""Reading cluster.yaml: YAML with line numbers, then the model, with every problem reported at once."""

from __future__ import annotations

import codecs
import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from builder.errors import ConfigError, FieldError, Problem, UserError
from builder.spec.model import Cluster, cross_field_problems, validation_context

MAX_FILE_BYTES = 1 << 20
"""A cluster description is a few KB; the cap keeps `-f /dev/zero` or a disk image from being read whole."""


def load_cluster(path: Path) -> Cluster:
    """Parse and validate cluster.yaml; raise ConfigError listing every problem."""
    source = str(path)
    tree, data = _parse(_decode(_read(path), source), source)
    if not isinstance(data, dict):
        raise ConfigError(
            source,
            [
                Problem(
                    "(top)", "the file is not a mapping of settings", "start from the bundled cluster.yaml"
                )
            ],
        )
    try:
        cluster = Cluster.model_validate(data, context=validation_context(data))
    except ValidationError as error:
        raise ConfigError(source, [_problem(e, tree) for e in error.errors()]) from None
    problems = cross_field_problems(cluster)
    if problems:
        raise ConfigError(source, [_locate(p, tree) for p in problems])
    return cluster


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(
            f"{path} does not exist", "run in the folder with cluster.yaml or pass -f PATH"
        ) from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder", f"pass the file in it: -f {path / 'cluster.yaml'}") from None
    except OSError as error:
        raise UserError(
            f"cannot read {path}: {error.strerror}", "pass a readable file with -f PATH"
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise UserError(
            f"{path} is larger than 1 MiB; a cluster description is a few KB",
            "pass your cluster.yaml with -f PATH",
        )
    return raw


def _decode(raw: bytes, source: str) -> str:
    # PyYAML would read UTF-16 with a byte order mark, but git diff, grep and most editors would
    # not: one encoding keeps the file reviewable.
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        problem = Problem(
            "(yaml)", "the file is UTF-16 text", "save it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8", 1
        )
        raise ConfigError(source, [problem])
    try:
        return raw.decode()
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        problem = Problem(
            "(yaml)",
            f"byte 0x{raw[error.start]:02x} is not UTF-8 text",
            "save the file as UTF-8; if it is not a cluster description, pass yours with -f PATH",
            line,
        )
        raise ConfigError(source, [problem]) from None


MAX_ALIAS_NODES = 10_000
"""How many values aliases may stand for in all. A real cluster.yaml reuses a list or two; nested
aliases can stand for 9**8 values in 1 KB (a "billion laughs"), which took minutes to walk."""
MAX_VALUES = 20_000
"""Room for two thousand nodes; PyYAML (pure Python, so aliases can be counted) takes seconds per 100,000."""
SURROGATE = re.compile("[\ud800-\udfff]")
"""Half of a UTF-16 pair: an escape in a quoted YAML string can make one, but no text holds it."""
MAX_DEPTH = 32
"""Far deeper than any cluster.yaml nests, far short of where PyYAML's recursion gives out. It holds
with aliases expanded: else each alias could add 32 levels, and the key check recurse past Python's
limit."""


class _Refused(yaml.composer.ComposerError):
    """A document PyYAML could read but that would take unbounded time or memory to use."""

    def __init__(self, problem: str, hint: str, mark: yaml.Mark | None) -> None:
        super().__init__(None, None, problem, mark)
        self.hint = hint


class _Loader(yaml.SafeLoader):
    """SafeLoader with bounds on aliases and nesting, and constructor errors that say where."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._alias_nodes = 0
        self._shapes: dict[int, tuple[int, int]] = {}  # node id -> (values, levels), aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # types-PyYAML leaves it untyped
        mark = event.start_mark
        self._values += 1
        if self._values > MAX_VALUES:
            raise _Refused(
                f"the file holds more than {MAX_VALUES} values",
                "pass your cluster.yaml with -f PATH; a cluster description holds a few hundred",
                mark,
            )
        if self._depth == MAX_DEPTH:
            raise _Refused(
                f"values nest more than {MAX_DEPTH} levels deep",
                "write cluster.yaml as the bundled one: settings nest a few levels at most",
                mark,
            )
        if isinstance(event, yaml.AliasEvent) and event.anchor in self.anchors:
            self._check_alias(self.anchors[event.anchor], mark)
        if isinstance(event, yaml.ScalarEvent) and (half := SURROGATE.search(event.value)):
            raise _Refused(
                f"an escape here stands for U+{ord(half[0]):04X}, half of a UTF-16 pair, not a character",
                "write the character itself, or its \\U escape of 8 hex digits",
                mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _check_alias(self, target: yaml.Node, mark: yaml.Mark | None) -> None:
        if target.end_mark is None:  # the composer sets it when the anchored value is complete
            raise _Refused(
                "an alias stands for a value that contains it, which never ends",
                "write the value out instead of the alias",
                mark,
            )
        values, levels = self._shape(target)
        if self._depth + levels > MAX_DEPTH:
            raise _Refused(
                f"values nest more than {MAX_DEPTH} levels deep with this alias expanded",
                "write the value out instead of nesting aliases",
                mark,
            )
        self._alias_nodes += values
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise _Refused(
                f"aliases stand for more than {MAX_ALIAS_NODES} values (an alias bomb?)",
                "write the values out instead of nesting aliases",
                mark,
            )

    def _shape(self, node: yaml.Node) -> tuple[int, int]:
        """How many values node stands for and how many levels they nest, aliases expanded."""
        # memoized: every alias inside node was measured when it was composed, so this recursion
        # only walks values written out, no deeper than MAX_DEPTH
        if id(node) not in self._shapes:
            if isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else []
            shapes = [self._shape(child) for child in children]
            values = 1 + sum(values for values, _ in shapes)
            self._shapes[id(node)] = (values, 1 + max((levels for _, levels in shapes), default=0))
        return self._shapes[id(node)]

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, LookupError, AttributeError, TypeError, ArithmeticError):
            # a scalar resolved to a type it does not fit: the date 2020-99-99, `!!int homelab`;
            # PyYAML's constructors assume the value has the tag's form and fail in any way if not.
            # Neither the value nor the error, which quotes it, is shown: it may be a passphrase.
            kind = node.tag.rpartition(":")[2]
            raise yaml.constructor.ConstructorError(
                None, None, f"YAML reads the value here as {kind} but cannot make one of it", node.start_mark
            ) from None


def _parse(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree (for line numbers) and the plain data built from it."""
    try:
        loader = _Loader(text)  # checks every character of a string up front
    except yaml.reader.ReaderError as error:
        raise ConfigError(source, [_unprintable(error, text)]) from None
    try:
        tree = _compose(loader, source)
        try:
            return tree, (loader.construct_document(tree) if tree else None)
        except yaml.MarkedYAMLError as error:
            hint = "write a plain value there (quote it to keep it as text)"
            raise ConfigError(source, [_yaml_problem(error, hint)]) from None
    finally:
        loader.dispose()


def _compose(loader: yaml.SafeLoader, source: str) -> yaml.Node | None:
    try:
        tree = loader.get_single_node()
    except _Refused as error:
        raise ConfigError(source, [_yaml_problem(error, error.hint)]) from None
    except yaml.MarkedYAMLError as error:
        raise ConfigError(source, [_yaml_problem(error, "fix the YAML syntax there")]) from None
    problems = list(_key_problems(tree, ()))
    if problems:
        raise ConfigError(source, problems)
    return tree


def _yaml_problem(error: yaml.MarkedYAMLError, hint: str) -> Problem:
    mark = error.problem_mark
    line = mark.line + 1 if mark else None
    column = f", column {mark.column + 1}" if mark else ""
    return Problem("(yaml)", f"{error.problem}{column}", hint, line)


def _unprintable(error: yaml.reader.ReaderError, text: str) -> Problem:
    hint = "remove it"
    if error.character == 0:
        hint += "; NUL bytes mean a binary or UTF-16 file: save cluster.yaml as UTF-8 text"
    return Problem(
        "(yaml)",
        f"character U+{error.character:04X} is not allowed in YAML",
        hint,
        text.count("\n", 0, error.position) + 1,
    )


_NAME_TAGS = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:merge")
"""Keys every mapping of cluster.yaml may have: names, and `<<` to merge an anchored mapping."""


def _key_kind(key: yaml.Node) -> str:
    if isinstance(key, yaml.ScalarNode):
        return f"{key.value!r}, which YAML reads as {key.tag.rsplit(':', 1)[-1]}"
    return "a list" if isinstance(key, yaml.SequenceNode) else "a mapping"


def _key_problems(node: yaml.Node | None, loc: tuple[Any, ...]) -> Any:
    field = _field_at(loc)
    if field is not None and field.annotation is SecretStr:
        return  # keys written there could be the secret; the model refuses anything but text
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag not in _NAME_TAGS:
                yield Problem(
                    _format_path(loc),
                    f"has a key that is not a name: {_key_kind(key)}",
                    "write a setting's name as the key",
                    key.start_mark.line + 1,
                )
                continue
            child = (*loc, key.value)
            if key.value in seen:
                yield Problem(
                    _format_path(child),
                    "appears twice; the first one would be ignored",
                    "keep one of them",
                    key.start_mark.line + 1,
                )
            seen.add(key.value)
            yield from _key_problems(value, child)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _key_problems(item, (*loc, index))


def _problem(error: Any, tree: yaml.Node | None) -> Problem:
    loc = tuple(part for part in error["loc"] if not _is_validator_tag(part))
    path = _format_path(loc)
    line = _line_of(tree, loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        return Problem(path, "unknown key", _did_you_mean(loc), line)
    if kind == "missing":
        return Problem(path, "is required but missing", _describe(loc) or "add it", line)
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        return Problem(path, str(cause), cause.hint, line)
    message = error["msg"].removeprefix("Value error, ")
    field = _field_at(loc)
    secret = field is not None and _holds_secret(field.annotation)
    if kind != "value_error" and not secret and not isinstance(error.get("input", {}), dict | list):
        message = f"{error['input']!r}: {message}"
    hint = _describe(loc)
    return Problem(path, message, f"expected {hint}" if hint else "", line)


def _holds_secret(annotation: Any) -> bool:
    """Whether a value of this type is a secret or holds one: a whole `wifi` written as text could
    be the passphrase."""
    model = _submodel(annotation)
    if model is None:
        return annotation is SecretStr
    return any(_holds_secret(field.annotation) for field in model.model_fields.values())


def _is_validator_tag(part: Any) -> bool:
    """Pydantic names union branches and validators in locations; users never wrote those."""
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _format_path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"


def _line_of(tree: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest node of loc that exists in the YAML."""
    node, line = tree, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            matches = [(k, v) for k, v in node.value if k.value == part]
            if not matches:
                break
            key, node = matches[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _locate(problem: Problem, tree: yaml.Node | None) -> Problem:
    loc: list[Any] = []
    for part in problem.path.replace("]", "").replace("[", ".").split("."):
        loc.append(int(part) if part.isdigit() else part)
    return Problem(problem.path, problem.message, problem.hint, _line_of(tree, tuple(loc)))


def _field_at(loc: tuple[Any, ...]) -> FieldInfo | None:
    model, name = _model_at(loc)
    return model.model_fields.get(name) if model is not None and name is not None else None


def _model_at(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, str | None]:
    """The model that owns the last field in loc, and that field's name."""
    model: type[BaseModel] | None = Cluster
    for index, part in enumerate(loc):
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if index == len(loc) - 1 or field is None:
            return model, str(part)
        model = _submodel(field.annotation)
    return model, None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation such as `Node`, `list[Node]` or `Wifi | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _submodel(argument)
        if found:
            return found
    return None


def _describe(loc: tuple[Any, ...]) -> str:
    while loc and isinstance(loc[-1], int):  # an item of a list is described by the list
        loc = loc[:-1]
    model, name = _model_at(loc)
    if model is None or name is None or name not in model.model_fields:
        return ""
    return model.model_fields[name].description or ""


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    model, name = _model_at(loc)
    if model is None or name is None:
        return "remove it"
    known = list(model.model_fields)
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"remove it; known keys here: {', '.join(known)}"
