"""One writer per piece of work: a claim on a content key, so that identical work started at the
same time (4 identical trials, 3 first runs of one config) is done once and reused by the rest.

Reuse is "look in MLflow, else compute and record": two processes that both look before
either records both compute. A claim turns that into one critical section per key: the first
process holds it while it looks, computes and records; the others wait, then look and find
the record.

- A local SQLite store: an exclusive `flock` on a file beside the database
  (`<db>.claims/<kind>-<key>.lock`), released by the kernel even if its holder is killed.
- Any other store (a tracking server, shared by processes on several hosts that share no file
  system): a RUNNING run in the `husai-claims` experiment, tagged with the claim, its holder
  and a heartbeat. A process creates its run, then reads the claim's RUNNING runs back: alone,
  it holds the claim; not alone, it withdraws (deletes its run), waits until no live run is
  left, and tries again after a random pause (two that withdrew together do not collide
  again). Correct as long as the server answers a search with every run created before it
  (one database behind it). A holder refreshes its heartbeat every `SERVER_BEAT_S`; a claim
  whose heartbeat is older than `STALE_S` belongs to a killed process and is deleted by
  whoever finds it (hosts' clocks must agree to well within `STALE_S`, as NTP keeps them).
  A released claim's run is deleted, so the experiment stays empty in the UI.

A thread that already holds a claim and asks for it again (a stage inside another on the same
key) is let through: neither form is re-entrant by itself.

A sweep's trial names its Ray trial as the claim's owner. Ray Tune runs a trial again only after
its attempt died (its node was lost), so a claim of the same owner is that dead attempt's and
is taken over at once rather than waited out for `STALE_S`.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from husai import names
from husai.registry.provenance import exclusive_lock, sqlite_path
from husai.registry.tracking import Tracker
from husai.registry.views import RunView

SERVER_BEAT_S = 10.0
STALE_S = 6 * SERVER_BEAT_S
POLL_S = 1.0  # how often a waiting process reads the claim again

_local = threading.local()  # `.held`: the claims this thread holds, for nested asks


def _held() -> set[str]:
    if not hasattr(_local, "held"):
        _local.held = set()
    held: set[str] = _local.held
    return held


@contextmanager
def claim(tracker: Tracker, kind: str, key: str, owner: str | None = None) -> Iterator[None]:
    """Hold the claim on (`kind`, `key`) for the block; wait while another process holds it.
    `owner`: the Ray trial asking (None outside sweeps)."""
    name = f"{kind}-{key}"
    held = _held()
    if name in held:
        yield
        return
    db = sqlite_path(tracker.uri)
    with exclusive_lock(db, name) if db is not None else _server_claim(tracker, name, owner):
        held.add(name)
        try:
            yield
        finally:
            held.discard(name)


def _fresh(run: RunView, now: float) -> bool:
    beat = run.tags.get(names.TAG_CLAIM_HEARTBEAT, "")
    try:
        return now - float(beat) < STALE_S
    except ValueError:
        return False


def _live_rivals(tracker: Tracker, name: str, mine: str | None, owner: str | None) -> list[RunView]:
    """The claim's RUNNING runs other than `mine` with a fresh heartbeat; stale ones (their
    holder was killed) and those of an earlier attempt of `owner` are deleted on the way."""
    now = time.time()
    rivals = []
    for run in tracker.running_runs(names.EXPERIMENT_CLAIMS, {names.TAG_CLAIM: name}):
        if run.run_id == mine:
            continue
        earlier_attempt = owner is not None and run.tags.get(names.TAG_CLAIM_OWNER) == owner
        if _fresh(run, now) and not earlier_attempt:
            rivals.append(run)
        else:
            tracker.delete_run(run.run_id)
    return rivals


@contextmanager
def _server_claim(tracker: Tracker, name: str, owner: str | None) -> Iterator[None]:
    holder = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        tags = {
            names.TAG_CLAIM: name,
            names.TAG_CLAIM_HOLDER: holder,
            names.TAG_CLAIM_HEARTBEAT: f"{time.time():.3f}",
            **({names.TAG_CLAIM_OWNER: owner} if owner else {}),
        }
        mine = tracker.open_claim_run(name, tags)
        if not _live_rivals(tracker, name, mine, owner):
            break
        tracker.delete_run(mine)  # withdraw, wait for the holder, try again
        while _live_rivals(tracker, name, None, owner):
            time.sleep(POLL_S)
        time.sleep(random.uniform(0.0, POLL_S))
    stop = threading.Event()
    beat = threading.Thread(
        target=_beat, args=(tracker, mine, stop), name="husai-claim", daemon=True
    )
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        tracker.delete_run(mine)


def _beat(tracker: Tracker, run_id: str, stop: threading.Event) -> None:
    while not stop.wait(SERVER_BEAT_S):
        with contextlib.suppress(Exception):  # a missed beat must not stop the work
            tracker.set_tags(run_id, {names.TAG_CLAIM_HEARTBEAT: f"{time.time():.3f}"})
