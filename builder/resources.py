"""Where picluster's own files are: the overlays, the firmware templates and the verify suite.

They are found with importlib.resources, as package data of `builder`. An installed wheel carries
them inside the package (pyproject.toml maps each top-level folder into it); a source checkout
keeps them where the repository's layout has them, at its top.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PACKAGE = Path(str(files("builder")))
CHECKOUT = PACKAGE.parent


def _shipped(name: str, in_checkout: str) -> Path:
    inside = PACKAGE / name
    return inside if inside.is_dir() else CHECKOUT / in_checkout


OVERLAYS_DIR = _shipped("overlays", "overlays")
FIRMWARE_DIR = _shipped("firmware", "firmware")
VERIFY_SUITE = _shipped("verify_suite", "tests/verify")
