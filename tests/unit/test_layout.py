"""The package's folders follow the data's way, cluster.yaml -> card: a stage imports only the
stages before it and the shared doors beside them; the doors import no stage."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.project import REPO

STAGES = ("spec", "secrets", "render", "image", "card", "cluster")
DOORS = ("run", "resources", "files", "errors", "download", "progress", "epoch", "upstream")
BUILDER = REPO / "builder"


def imported_stages(module: Path) -> set[str]:
    """The stages a module imports from (`from builder.image.base import x`, `from builder.image
    import base`)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("builder."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1] for alias in node.names if alias.name.startswith("builder.")
            )
    return found & set(STAGES)


def test_no_stage_imports_a_later_one() -> None:
    backwards = [
        f"{module.relative_to(REPO)} imports builder.{stage}"
        for index, folder in enumerate(STAGES)
        for module in sorted((BUILDER / folder).glob("*.py"))
        for stage in imported_stages(module)
        if STAGES.index(stage) > index
    ]
    assert backwards == []


def test_the_shared_doors_import_no_stage() -> None:
    leaning = {door: imported_stages(BUILDER / f"{door}.py") for door in DOORS}
    assert {door: stages for door, stages in leaning.items() if stages} == {}


def test_every_module_is_in_a_stage_or_a_door() -> None:
    top = {path.stem for path in BUILDER.glob("*.py")} - {"__init__", "__main__", "cli", "project"}
    assert top == set(DOORS)
    assert {path.name for path in BUILDER.iterdir() if path.is_dir() and path.name != "__pycache__"} == set(
        STAGES
    )


TESTS = REPO / "tests"


def _shared(module: str) -> bool:
    """Whether a test may import `module`: anything but tests' own modules, and of those only
    tests/support's, never a test module or a conftest."""
    if not module.startswith("tests."):
        return True
    last = module.rsplit(".", 1)[-1]
    return module.startswith("tests.support") and last != "conftest" and not last.startswith("test_")


def test_tests_import_only_the_support_package_and_support_lives_in_one_place() -> None:
    """A test imports what tests share from tests/support, never from another test module or a
    conftest; and every module of tests/ that is neither a test, a conftest nor a package marker
    is in tests/support (the golden cases' own files aside)."""
    wrong = [
        f"{module.relative_to(REPO)} imports {node.module}"
        for module in sorted(TESTS.rglob("*.py"))
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module and not _shared(node.module)
    ]
    assert wrong == []
    strays = [
        module.relative_to(REPO).as_posix()
        for module in sorted(TESTS.rglob("*.py"))
        if module.name not in ("conftest.py", "__init__.py")
        and not module.name.startswith("test_")
        and module.parent != TESTS / "support"
        and "golden" not in module.parts
    ]
    assert strays == []
