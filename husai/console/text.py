"""Shared pieces of every printed line: numbers (absent, never a made-up value), error and
progress lines on stderr."""

from __future__ import annotations

import sys


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A metric that was not computed prints as absent (as wide as the number would be), never
    as a number."""
    if value is not None:
        return format(value, spec)
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return "absent".rjust(int(width) if width else 0)


def ui_hint(uri: str) -> str:
    return f"Open the MLflow UI:  mlflow ui --backend-store-uri {uri}"


def error(command: str, message: object) -> None:
    """A command's failure, as one line on stderr."""
    print(f"husai {command}: error: {message}", file=sys.stderr)


def interrupted(command: str, why: object) -> None:
    print(f"husai {command}: interrupted{': ' + str(why) if str(why) else ''}", file=sys.stderr)


def say(line: str) -> None:
    """A progress line of a running sweep, on stderr (stdout keeps the results)."""
    print(line, file=sys.stderr, flush=True)
