"""What each card holds: the MiB of data `picluster flash` writes (the block map's mapped blocks),
beside the figures of the previous run.

    .venv/bin/python bench/card_bytes.py [IMAGES]     # default: images/

Reads IMAGES/<node>.img.bmap for every node image there. The previous run's figures are kept in
bench/card_bytes.json; a run replaces them.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

RESULTS = Path(__file__).with_suffix(".json")
MIB = 1 << 20


def mapped_mib(bmap: Path) -> float:
    root = ET.parse(bmap).getroot()
    block = int(root.findtext("BlockSize") or 0)
    return int(root.findtext("MappedBlocksCount") or 0) * block / MIB


def main(images: Path) -> int:
    cards = {
        bmap.name.removesuffix(".img.bmap"): round(mapped_mib(bmap), 1)
        for bmap in sorted(images.glob("*.img.bmap"))
    }
    if not cards:
        print(f"no <node>.img.bmap in {images}: run make images first", file=sys.stderr)
        return 2
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    print(f"{'card':<8} {'MiB now':>9} {'before':>9}")
    for node, mib in cards.items():
        before = previous.get("cards", {}).get(node)
        print(f"{node:<8} {mib:>9.1f} {before if before is not None else '-':>9}")
    RESULTS.write_text(json.dumps({"cards": cards, "images": str(images)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("images")))
