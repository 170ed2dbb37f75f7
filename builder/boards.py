"""The catalogue of Raspberry Pi models, read from firmware/boards.yaml."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = ROOT / "firmware"
OVERLAYS_DIR = ROOT / "overlays"

Arch = Literal["arm64", "armhf"]


class Board(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str
    arches: tuple[Arch, ...]
    debian_kernel: bool
    dtbs: tuple[str, ...]
    console: str
    config: tuple[str, ...]
    cmdline: tuple[str, ...]


@cache
def boards() -> dict[str, Board]:
    raw = yaml.safe_load((FIRMWARE_DIR / "boards.yaml").read_text())
    return {name: Board.model_validate(entry) for name, entry in raw.items()}


def kubernetes_arch(arch: Arch) -> str:
    """The architecture name Kubernetes (kubernetes.io/arch) and image tags use for a Debian arch."""
    return {"arm64": "arm64", "armhf": "arm"}[arch]
