"""Where HUSAI keeps its files: the checkout, and a cache that can be moved."""

from __future__ import annotations

from pathlib import Path

import pytest

from husai.core.paths import cache_root, project_root
from tests.helpers import ROOT


def test_the_project_root_is_the_checkout() -> None:
    assert project_root() == ROOT and (project_root() / "MLproject").exists()


def test_the_cache_follows_husai_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUSAI_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("HUSAI_CACHE_DIR")
    assert cache_root() == ROOT / "mlruns" / "cache"
