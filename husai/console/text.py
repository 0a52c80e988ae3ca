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


# Where `mlflow ui` serves a local store (and `make ui` starts it).
UI_HOST, UI_PORT = "127.0.0.1", 5000
# MLflow 3's UI opens an experiment on its GenAI overview unless the address asks for the
# model-training view (the experiment's `mlflow.experimentKind` tag does not decide it).
UI_WORKFLOW_QUERY = "workflowType=machine_learning"


def _served(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_address(uri: str, experiment_id: str) -> str:
    """The address of an experiment's runs table: on the tracking server itself, or where
    `mlflow ui` serves a local store."""
    base = uri.rstrip("/") if _served(uri) else f"http://{UI_HOST}:{UI_PORT}"
    return f"{base}/#/experiments/{experiment_id}?{UI_WORKFLOW_QUERY}"


def ui_hint(uri: str, experiment_id: str) -> str:
    """How to look at what a command recorded, as a few lines."""
    address = ui_address(uri, experiment_id)
    if _served(uri):
        return f"MLflow UI: {address}"
    return (
        f"MLflow UI: mlflow ui --backend-store-uri {uri} --host {UI_HOST} --port {UI_PORT}\n"
        f"  then open {address}"
    )


def error(command: str, message: object) -> None:
    """A command's failure, as one line on stderr."""
    print(f"husai {command}: error: {message}", file=sys.stderr)


def interrupted(command: str, why: object) -> None:
    print(f"husai {command}: interrupted{': ' + str(why) if str(why) else ''}", file=sys.stderr)


def say(line: str) -> None:
    """A progress line of a running sweep, on stderr (stdout keeps the results)."""
    print(line, file=sys.stderr, flush=True)
