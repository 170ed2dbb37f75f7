"""The catalogue of Raspberry Pi models, read from firmware/boards.yaml."""

from __future__ import annotations

from functools import cache

import yaml
from pydantic import BaseModel, ConfigDict

from builder.resources import FIRMWARE_DIR


class Board(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str
    memory_mb: int
    debian_kernel: bool
    dtbs: tuple[str, ...]
    console: str
    config: tuple[str, ...]
    cmdline: tuple[str, ...]


@cache
def boards() -> dict[str, Board]:
    raw = yaml.safe_load((FIRMWARE_DIR / "boards.yaml").read_text())
    return {name: Board.model_validate(entry) for name, entry in raw.items()}
