"""Where HUSAI keeps its files: the project checkout and the content-addressed cache."""

from __future__ import annotations

import os
from pathlib import Path

import husai


def project_root() -> Path:
    """The source checkout (the folder holding MLproject), else the working directory."""
    here = Path(husai.__file__).resolve().parent.parent
    return here if (here / "MLproject").exists() else Path.cwd()


def cache_root(default: Path | None = None) -> Path:
    """$HUSAI_CACHE_DIR, else `default`, else <project>/mlruns/cache (git-ignored, beside the
    local store)."""
    env = os.environ.get("HUSAI_CACHE_DIR")
    if env:
        return Path(env)
    return default if default is not None else project_root() / "mlruns" / "cache"
