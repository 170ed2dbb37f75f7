"""node.json is the one contract between the builder and the agent on the card: the agent's
node_json writes it (the builder calls it), its load_config reads it, and both must agree key for
key. The cases are the golden cards' node.json files, which test_golden holds to the builder's."""

from __future__ import annotations

import json
from collections.abc import ItemsView, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from agent.config import Timing, node_json, parse_config

GOLDEN = Path(__file__).parent / "golden"
CARDS = sorted(GOLDEN.glob("*/expected/*/root/etc/picluster/node.json"))
NAMES = [f"{card.parts[-7]}/{card.parts[-5]}" for card in CARDS]


class ReadKeys(dict[str, Any]):
    """A JSON object that records which of its keys the reader looked up or went through."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __iter__(self) -> Iterator[str]:
        self.read.update(dict.keys(self))
        return super().__iter__()

    def items(self) -> ItemsView[str, Any]:
        self.read.update(dict.keys(self))
        return super().items()


def disagreements(data: bytes) -> list[str]:
    """Each key of `data` that load_config does not read, and each it reads that `data` lacks."""
    raw = json.loads(data, object_pairs_hook=ReadKeys)
    parse_config(raw)
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, ReadKeys):
            written = set(dict.keys(value))
            found.extend(f"written, never read: {path}{key}" for key in sorted(written - value.read))
            found.extend(f"read, never written: {path}{key}" for key in sorted(value.read - written))
            for key, inner in dict.items(value):
                walk(inner, f"{path}{key}.")

    walk(raw, "")
    return found


@pytest.mark.parametrize("card", CARDS, ids=NAMES)
def test_the_agent_reads_back_exactly_what_the_builder_writes(card: Path) -> None:
    data = card.read_bytes()
    assert node_json(parse_config(json.loads(data))) == data


def fullest(card: Path) -> bytes:
    """The card's node.json with every key written: the optional "agent" section is written
    only when a timing differs from the defaults, kubeadm.etcd_restore only on a restore card."""
    config = parse_config(json.loads(card.read_bytes()))
    return node_json(replace(config, timing=Timing(retry_initial=1.0), etcd_restore="/var/lib/snapshot.db"))


@pytest.mark.parametrize("card", CARDS, ids=NAMES)
def test_every_key_written_is_read_and_every_key_read_is_written(card: Path) -> None:
    assert disagreements(fullest(card)) == []


def test_the_key_check_can_fail() -> None:
    raw = json.loads(fullest(CARDS[0]))
    raw["node"]["gateway"] = "192.168.50.1"
    assert disagreements(json.dumps(raw).encode()) == ["written, never read: node.gateway"]
