"""Cache entries are written all or nothing, the first writer of an entry wins, every entry
carries the checksum of its content, and a killed writer's staging folder is cleaned up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from husai.core.cache import (
    MANIFEST,
    NO_CHECKSUM,
    check_dir,
    publish_dir,
    publish_text,
    read_text,
    remove_stale_staging,
)


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
    assert read_text(dst) == ('{"a": 2}', None)
    assert [p.name for p in dst.parent.iterdir()] == ["x.json"]  # no writer's file left


def test_a_changed_folder_entry_fails_its_checksum(tmp_path: Path) -> None:
    dst = publish_dir(tmp_path / "entry", lambda d: (d / "rows.bin").write_bytes(b"\x01" * 64))
    assert (dst / MANIFEST).exists() and check_dir(dst) is None
    (dst / "rows.bin").write_bytes(b"\x01" * 63 + b"\x02")  # same size, one value changed
    assert check_dir(dst) == "content does not match its checksum"
    (dst / "rows.bin").write_bytes(b"\x01" * 64)
    (dst / "extra.txt").write_text("a file nobody wrote")
    assert check_dir(dst) == "content does not match its checksum"
    (dst / "extra.txt").unlink()
    (dst / MANIFEST).unlink()
    assert check_dir(dst) == NO_CHECKSUM


def test_a_changed_text_entry_fails_its_checksum(tmp_path: Path) -> None:
    dst = publish_text(tmp_path / "x.json", '{"excess": 0.1}')
    dst.write_text(dst.read_text().replace("0.1", "0.9"))
    assert read_text(dst) == (None, "content does not match its checksum")
    dst.write_text('{"excess": 0.1}')  # an entry from before checksums
    assert read_text(dst) == (None, NO_CHECKSUM)


def test_a_killed_writers_staging_folder_is_removed_by_the_next_writer(tmp_path: Path) -> None:
    parent = tmp_path / "cache"
    parent.mkdir()
    dead, live = parent / ".entry-dead0001", parent / ".other-live0002"
    dead.mkdir()
    (dead / "half.safetensors").write_bytes(b"\x00" * 10)
    live.mkdir()
    old = time.time() - 3600
    os.utime(dead, (old, old))
    publish_dir(parent / "entry", lambda d: (d / "a.txt").write_text("x"))
    assert not dead.exists()  # an hour old: its writer is gone
    assert live.exists()  # seconds old: it may belong to a writer still at work
    assert remove_stale_staging(parent) == 0
