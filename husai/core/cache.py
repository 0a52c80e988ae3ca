"""Cache entries are written all or nothing and checked on every read.

A folder or file is either complete under its key or absent, never half-written, even with
several processes filling the same entry. Each entry carries the sha256 of its content, made
when it was written (`MANIFEST` inside a folder; a last line in a text file): a reader that
finds a changed entry (a disk error, an edit by hand) learns so before using it, and the caller
fetches the entry again from MLflow or recomputes it (`husai.run.stages.cached_entry`).
Staging folders that a killed writer left behind are removed by the next writer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MANIFEST = ".husai-sha256"  # in a folder entry: the sha256 of everything else in it
TEXT_SUM_PREFIX = "#husai-sha256:"  # the last line of a text entry
STALE_STAGING_S = 600.0  # a staging folder is written in seconds; one this old is a dead writer's
NO_CHECKSUM = "made before cache checksums"


def content_sha256(folder: Path) -> str:
    """sha256 over every file of `folder` but the manifest: relative paths and bytes, in order."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def check_dir(folder: Path) -> str | None:
    """None when the folder's content matches its manifest, else what is wrong with it."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        return NO_CHECKSUM
    if manifest.read_text().strip() != content_sha256(folder):
        return "content does not match its checksum"
    return None


def manifest_of(folder: Path) -> str | None:
    """The checksum written with a folder entry (None for one made before checksums)."""
    manifest = folder / MANIFEST
    return manifest.read_text().strip() if manifest.exists() else None


def check_copy(folder: Path, recorded: str | None) -> str | None:
    """None when a copy of an entry (fetched from MLflow) matches the checksum recorded for it
    (`recorded`, else the manifest that travelled with it; a copy with neither was made before
    checksums and passes), else what is wrong with it."""
    expected = recorded or manifest_of(folder)
    if expected is not None and content_sha256(folder) != expected:
        return "the copy does not match the checksum recorded with it"
    return None


def publish_dir(dst: Path, fill: Callable[[Path], object]) -> Path:
    """Fill a staging folder beside `dst`, write its checksum, then rename it into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dst.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    fill(staging)
    (staging / MANIFEST).write_text(content_sha256(staging) + "\n")
    try:
        staging.rename(dst)
    except OSError:  # another process filed the same entry first; theirs is as good
        shutil.rmtree(staging, ignore_errors=True)
    return dst


def remove_stale_staging(parent: Path, older_than_s: float = STALE_STAGING_S) -> int:
    """Delete staging folders and files (`.<name>-*`) older than `older_than_s` in `parent`:
    left by a writer that was killed. Younger ones may belong to a live writer and stay."""
    removed, now = 0, time.time()
    for p in parent.glob(".*-*"):
        try:
            if now - p.stat().st_mtime < older_than_s:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
            removed += 1
        except OSError:
            continue  # another process removed it first
    return removed


def publish_text(dst: Path, text: str) -> Path:
    """Write `text` and its checksum line to a file unique to this writer beside `dst`, then
    replace `dst` with it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dst.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}-", dir=dst.parent)
    digest = hashlib.sha256(text.encode()).hexdigest()
    with os.fdopen(fd, "w") as f:
        f.write(f"{text}\n{TEXT_SUM_PREFIX}{digest}\n")
    os.replace(tmp, dst)
    return dst


def read_text(path: Path) -> tuple[str | None, str | None]:
    """(text, None) when `path` holds a text entry whose checksum matches, else (None, what is
    wrong with it)."""
    try:
        body = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return None, f"unreadable ({type(e).__name__})"
    text, _, last = body.rstrip("\n").rpartition("\n")
    if not last.startswith(TEXT_SUM_PREFIX):
        return None, NO_CHECKSUM
    if hashlib.sha256(text.encode()).hexdigest() != last.removeprefix(TEXT_SUM_PREFIX):
        return None, "content does not match its checksum"
    return text, None
