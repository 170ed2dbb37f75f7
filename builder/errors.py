"""The one error path for user mistakes: a message that names the problem and a hint that fixes it.

The CLI prints these and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

SHOWN_PROBLEMS = 10
"""Enough to work on, few enough to fit one screen with their fixes; the count says how many more."""
MESSAGE_CHARS = 240
"""Messages quote the value they refuse, which can be any length; the reason comes after it."""


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text


class FieldError(ValueError):
    """A field validator's refusal that knows its own fix; pydantic keeps it as the error's cause."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Problem:
    """One thing wrong in cluster.yaml, located by its field path and, when known, its line."""

    path: str
    message: str
    hint: str = ""
    line: int | None = None


class ConfigError(UserError):
    """Every problem found in one cluster.yaml, reported together."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.path))
        count = len(self.problems)
        super().__init__(f"{source} has {count} problem{'s' if count != 1 else ''}")

    def render(self) -> str:
        lines = [f"error: {self.message}:"]
        for problem in self.problems[:SHOWN_PROBLEMS]:
            where = f"{self.source}:{problem.line}" if problem.line else self.source
            lines.append(f"  {where}: {problem.path}: {_clipped(problem.message)}")
            if problem.hint:
                lines.append(f"      fix: {problem.hint}")
        hidden = len(self.problems) - SHOWN_PROBLEMS
        if hidden > 0:
            lines.append(f"  ... and {hidden} more (fix these first)")
        return "\n".join(lines)


def _clipped(message: str) -> str:
    if len(message) <= MESSAGE_CHARS:
        return message
    return f"{message[: MESSAGE_CHARS // 2]} ... {message[-MESSAGE_CHARS // 2 :]}"
