"""Cache entries are written all or nothing, and the first writer of an entry wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from husai.core.cache import publish_dir, publish_text


def test_a_folder_is_published_whole_or_not_at_all(tmp_path: Path) -> None:
    dst = tmp_path / "cache" / "entry"

    def broken(staging: Path) -> None:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        publish_dir(dst, broken)
    assert not dst.exists()  # nothing under the key; the staging folder is not the entry

    publish_dir(dst, lambda staging: (staging / "a.txt").write_text("first"))
    # A second writer of the same entry (another process that raced) keeps the first one.
    publish_dir(dst, lambda staging: (staging / "a.txt").write_text("second"))
    assert (dst / "a.txt").read_text() == "first"
    assert sorted(p.name for p in dst.parent.iterdir() if not p.name.startswith(".")) == ["entry"]


def test_a_text_entry_is_replaced_atomically(tmp_path: Path) -> None:
    dst = tmp_path / "evals" / "x.json"
    publish_text(dst, '{"a": 1}')
    publish_text(dst, '{"a": 2}')
    assert dst.read_text() == '{"a": 2}'
    assert [p.name for p in dst.parent.iterdir()] == ["x.json"]  # no writer's file left
