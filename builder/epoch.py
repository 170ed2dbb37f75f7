"""SOURCE_DATE_EPOCH: the time reproducible builds stamp on everything they write."""

from __future__ import annotations

import os

from builder.errors import UserError


def source_date_epoch() -> int | None:
    """The pinned build time, or None when it is not set."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > LATEST:
        raise UserError(
            f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds before the year 10000",
            "set it to a Unix time such as $(git log -1 --format=%ct), or unset it",
        )
    return int(value)


LATEST = 253402300799
"""9999-12-31T23:59:59Z, the last second file times and Python's datetime can carry."""
