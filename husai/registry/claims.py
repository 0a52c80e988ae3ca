"""One writer per piece of work: a claim on a content key, so that identical work started at the
same time (4 identical trials, 3 first runs of one config) is done once and reused by the rest.

Reuse is "look in MLflow, else compute and record": two processes that both look before
either records both compute. A claim turns that into one critical section per key: the first
process holds it while it looks, computes and records; the others wait, then look and find
the record. For a local SQLite store the claim is an exclusive `flock` on a file beside the
database (`<db>.claims/<kind>-<key>.lock`), released by the kernel even if its holder is
killed. A tracking server has no shared file system: there no claim is taken, and identical
work started at the same time may still be done twice (README, "MLflow").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from husai.registry.provenance import exclusive_lock, sqlite_path
from husai.registry.tracking import Tracker


@contextmanager
def claim(tracker: Tracker, kind: str, key: str) -> Iterator[None]:
    """Hold the claim on (`kind`, `key`) for the block; wait while another process holds it."""
    db = sqlite_path(tracker.uri)
    if db is None:
        yield
        return
    with exclusive_lock(db, f"{kind}-{key}"):
        yield
