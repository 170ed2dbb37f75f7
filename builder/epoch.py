"""SOURCE_DATE_EPOCH: the time reproducible builds stamp on everything they write."""

from __future__ import annotations

import os

from builder.errors import UserError


def source_date_epoch() -> int | None:
    """The pinned build time, or None when it is not set."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    if not value.isdigit():
        raise UserError(
            f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds",
            "set it to a Unix time such as $(git log -1 --format=%ct), or unset it",
        )
    return int(value)
