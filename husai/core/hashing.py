"""Content hashes: the identity of configs, cache entries and recorded results."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel


def stable_hash(obj: Any) -> str:
    """16 hex chars of sha256 over canonical JSON; key order and float repr cannot change it."""

    def plain(o: Any) -> Any:
        if isinstance(o, BaseModel):
            return plain(o.model_dump(mode="json"))
        if isinstance(o, dict):
            return {k: plain(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [plain(v) for v in o]
        return o

    text = json.dumps(plain(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derived_seed(label: str) -> int:
    """A 62-bit seed named by `label` (e.g. "covariance:1000003"): the same on every platform and
    Python, unlike hash(); fits torch.Generator.manual_seed and numpy."""
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "little") >> 2
