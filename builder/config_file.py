"""Reading cluster.yaml: YAML with line numbers, then the model, with every problem reported at once."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from builder.errors import ConfigError, Problem, UserError
from builder.model import Cluster, cross_field_problems


def load_cluster(path: Path) -> Cluster:
    """Parse and validate cluster.yaml; raise ConfigError listing every problem."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(
            f"{path} does not exist", "run in the folder with cluster.yaml or pass -f PATH"
        ) from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    source = str(path)
    tree = _compose(text, source)
    data = yaml.safe_load(text) if tree is not None else None
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
        cluster = Cluster.model_validate(data)
    except ValidationError as error:
        raise ConfigError(source, [_problem(e, tree) for e in error.errors()]) from None
    problems = cross_field_problems(cluster)
    if problems:
        raise ConfigError(source, [_locate(p, tree) for p in problems])
    return cluster


def _compose(text: str, source: str) -> yaml.Node | None:
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line = mark.line + 1 if mark else None
        column = f", column {mark.column + 1}" if mark else ""
        raise ConfigError(
            source,
            [Problem("(yaml)", f"{error.problem}{column}", "fix the YAML syntax there", line)],
        ) from None
    duplicates = list(_duplicate_keys(tree, ""))
    if duplicates:
        raise ConfigError(source, duplicates)
    return tree


def _duplicate_keys(node: yaml.Node | None, path: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            if key.value in seen:
                yield Problem(
                    child,
                    "appears twice; the first one would be ignored",
                    "keep one of them",
                    key.start_mark.line + 1,
                )
            seen.add(key.value)
            yield from _duplicate_keys(value, child)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path}[{index}]")


def _problem(error: Any, tree: yaml.Node | None) -> Problem:
    loc = tuple(part for part in error["loc"] if not _is_validator_tag(part))
    path = _format_path(loc)
    line = _line_of(tree, loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        return Problem(path, "unknown key", _did_you_mean(loc), line)
    if kind == "missing":
        return Problem(path, "is required but missing", _describe(loc) or "add it", line)
    message = error["msg"].removeprefix("Value error, ")
    if kind != "value_error" and "input" in error and not isinstance(error["input"], dict | list):
        message = f"{error['input']!r}: {message}"
    hint = _describe(loc)
    return Problem(path, message, f"expected {hint}" if hint else "", line)


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
