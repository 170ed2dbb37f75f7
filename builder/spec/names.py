"""Names a card knows, kept in the repository so that `validate` needs no image: its time zones and
its Wi-Fi countries. Each list's file says where it comes from."""

from __future__ import annotations

from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIME_ZONES = HERE / "timezones.txt"
WIFI_COUNTRIES = HERE / "wifi-countries.txt"


def _read(path: Path) -> frozenset[str]:
    words = (line.split() for line in path.read_text().splitlines() if not line.startswith("#"))
    return frozenset(word for line in words for word in line)


@cache
def time_zones() -> frozenset[str]:
    return _read(TIME_ZONES)


@cache
def wifi_countries() -> frozenset[str]:
    return _read(WIFI_COUNTRIES)
