"""Cache entries are written all or nothing: a folder or file is either complete under its key
or absent, never half-written, even with several processes filling the same entry."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def publish_dir(dst: Path, fill: Callable[[Path], object]) -> Path:
    """Fill a staging folder beside `dst`, then rename it into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    fill(staging)
    try:
        staging.rename(dst)
    except OSError:  # another process filed the same entry first; theirs is as good
        shutil.rmtree(staging, ignore_errors=True)
    return dst


def publish_text(dst: Path, text: str) -> Path:
    """Write `text` to a file unique to this writer beside `dst`, then replace `dst` with it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}-", dir=dst.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, dst)
    return dst
