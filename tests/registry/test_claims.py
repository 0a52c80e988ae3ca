"""Claims against a real `mlflow server` (the form for stores with no shared file system): one
holder at a time, a killed holder's stale claim does not block, a live one does (unless it is
an earlier attempt of the same Ray trial). The contenders
are threads with a Tracker each: the claim lives only in the server's runs, so a thread is a
process as far as it is concerned. (The SQLite form, a flock, is tested by 4 identical trials
at once in tests/run/test_trial_stages.py.)"""

from __future__ import annotations

import threading
import time

import pytest

from husai import names
from husai.registry import claims
from husai.registry.claims import claim
from husai.registry.tracking import Tracker


def _claims_left(tracker: Tracker) -> list[str]:
    return [r.run_id for r in tracker.running_runs(names.EXPERIMENT_CLAIMS, {})]


@pytest.mark.slow
def test_a_server_claim_has_one_holder_and_outlives_only_a_live_process(
    mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claims, "POLL_S", 0.2)
    spans: list[tuple[float, float]] = []

    def contender() -> None:
        tracker = Tracker(mlflow_server)
        with claim(tracker, "trial", "abc"):
            began = time.monotonic()
            time.sleep(0.5)
            spans.append((began, time.monotonic()))

    threads = [threading.Thread(target=contender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(spans) == 4
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    tracker = Tracker(mlflow_server)
    assert _claims_left(tracker) == []

    # A holder killed without releasing left a RUNNING claim with an old heartbeat: not waited for.
    old = {names.TAG_CLAIM: "trial-stale", names.TAG_CLAIM_HEARTBEAT: f"{time.time() - 999}"}
    tracker.open_claim_run("trial-stale", old)
    started = time.monotonic()
    with claim(tracker, "trial", "stale"):
        assert time.monotonic() - started < 5
    assert _claims_left(tracker) == []

    # A fresh claim of an earlier attempt of the same Ray trial (Tune retries a trial only once
    # its attempt died) is taken over at once: no wait of STALE_S for a dead holder.
    fresh = {names.TAG_CLAIM: "trial-retry", names.TAG_CLAIM_HEARTBEAT: f"{time.time()}"}
    tracker.open_claim_run("trial-retry", {**fresh, names.TAG_CLAIM_OWNER: "ray-trial-1"})
    started = time.monotonic()
    with claim(tracker, "trial", "retry", owner="ray-trial-1"):
        assert time.monotonic() - started < 5
    assert _claims_left(tracker) == []

    # A live holder elsewhere (fresh heartbeat) is waited for until it lets go, even by a Ray
    # trial other than the holder's.
    fresh = {names.TAG_CLAIM: "trial-live", names.TAG_CLAIM_HEARTBEAT: f"{time.time()}"}
    rival = tracker.open_claim_run("trial-live", {**fresh, names.TAG_CLAIM_OWNER: "ray-trial-2"})
    entered = threading.Event()

    def waiter() -> None:
        with claim(Tracker(mlflow_server), "trial", "live", owner="ray-trial-3"):
            entered.set()

    t = threading.Thread(target=waiter)
    t.start()
    assert not entered.wait(2.0)
    tracker.delete_run(rival)
    assert entered.wait(10.0)
    t.join(timeout=10)
    # Nested asks for a held claim go through (a stage inside another on the same key).
    with claim(tracker, "trial", "nested"), claim(tracker, "trial", "nested"):
        pass
    assert _claims_left(tracker) == []
