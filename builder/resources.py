"""Where picluster's own files are: the overlays, the firmware templates and the verify suite.

They are found with importlib.resources, as package data of `builder`. An installed wheel carries
the overlays and firmware inside the package (pyproject.toml maps each top-level folder into it);
a source checkout keeps them where the repository's layout has them, at its top. The verify suite
is a package of its own, builder.cluster.verify_suite, in both.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.resources import files
from pathlib import Path
from types import ModuleType

PACKAGE = Path(str(files("builder")))
CHECKOUT = PACKAGE.parent


def _shipped(name: str, in_checkout: str) -> Path:
    inside = PACKAGE / name
    return inside if inside.is_dir() else CHECKOUT / in_checkout


OVERLAYS_DIR = _shipped("overlays", "overlays")
FIRMWARE_DIR = _shipped("firmware", "firmware")
VERIFY_SUITE = PACKAGE / "cluster" / "verify_suite"
AGENT_DIR = OVERLAYS_DIR / "common/usr/lib/picluster/agent"


def agent_module(name: str) -> ModuleType:
    """One of the agent's modules, from the file the card carries. On the node the agent is the
    top-level package `agent`, which is not the builder's to put on sys.path, so the module is
    loaded by its path under a name of the builder's; it must import only the standard library."""
    spec = importlib.util.spec_from_file_location(f"builder.agent_{name}", AGENT_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None, AGENT_DIR
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module
