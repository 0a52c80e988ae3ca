"""Is a sweep's driver still alive? What did its Ray start? What `--resume` must know before it
touches anything.

While a sweep runs, its driver records on the sweep run its host and pid, a heartbeat every
`HEARTBEAT_S` seconds, and the processes its private Ray started (pid and start time, read as
the driver's descendants: Ray's agents rewrite their command lines, so the temp dir in them
cannot be relied on). `--resume yes` refuses a sweep whose driver is alive (same host, pid
running) or whose heartbeat is fresh (another host), and after a SIGKILL kills exactly the
recorded processes that are still the same processes (a reused pid has another start time).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from pathlib import Path

import psutil

from husai import names
from husai.config.sweep.spec import SweepConfig
from husai.core.errors import ConfigError, InputError
from husai.registry.sweep_records import experiment_of
from husai.registry.tracking import Tracker
from husai.registry.views import RunView
from husai.run.sweep.ray_runtime import kill_private_ray

HEARTBEAT_S = 20.0
FRESH_S = 3 * HEARTBEAT_S  # a heartbeat younger than this is a live driver on another host


def _descendants(limit: int = 5000) -> str:
    """`pid:create_time` of every process under this one, comma-separated, whole entries only
    up to `limit` characters (an MLflow tag's room)."""
    out: list[str] = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            item = f"{p.pid}:{p.create_time():.2f}"
            if sum(len(x) + 1 for x in out) + len(item) > limit:
                break
            out.append(item)
    return ",".join(out)


def _me() -> str:
    """This process as `pid:create_time`: a pid alone may be reused by another process."""
    return f"{os.getpid()}:{psutil.Process().create_time():.2f}"


def _alive(item: str) -> bool:
    """Whether `pid:create_time` is still that same process."""
    with contextlib.suppress(psutil.Error, ValueError):
        pid, started = item.split(":")
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 0.05
    return False


class DriverWatch:
    """Records host, pid, heartbeat and Ray's processes on the sweep run, from a daemon thread,
    until `stop()`."""

    def __init__(self, tracker: Tracker, sweep_run_id: str) -> None:
        self.tracker, self.run_id = tracker, sweep_run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="husai-heartbeat", daemon=True)

    def start(self) -> DriverWatch:
        host = {names.TAG_DRIVER_HOST: socket.gethostname(), names.TAG_DRIVER_PID: _me()}
        self.tracker.set_tags(self.run_id, host)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat must not stop the sweep
                self.tracker.set_tags(
                    self.run_id,
                    {
                        names.TAG_DRIVER_HEARTBEAT: f"{time.time():.0f}",
                        names.TAG_RAY_PIDS: _descendants(),
                    },
                )
            if self._stop.wait(HEARTBEAT_S):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def refuse_if_alive(previous: RunView, now: float | None = None) -> None:
    """One-line InputError when the sweep run's driver is still running: resuming it would
    kill its Ray and lose its work."""
    tags = previous.tags
    host, pid = tags.get(names.TAG_DRIVER_HOST), tags.get(names.TAG_DRIVER_PID)
    beat = float(tags.get(names.TAG_DRIVER_HEARTBEAT, "0"))
    if host == socket.gethostname() and pid is not None:
        if _alive(pid) and pid != _me():
            raise InputError(
                f"--resume: sweep run {previous.run_id} is still running (driver pid "
                f"{pid.split(':')[0]} on this host); wait for it or stop it first"
            )
        return  # its driver is gone on this host, whatever its last heartbeat says
    age = (now or time.time()) - beat
    if host is not None and age < FRESH_S:
        raise InputError(
            f"--resume: sweep run {previous.run_id} is still running on {host} (heartbeat "
            f"{age:.0f} s ago); wait for it or stop it first"
        )


def kill_recorded(previous: RunView) -> int:
    """Kill the processes the interrupted driver recorded (on this host only) that are still
    those processes."""
    if previous.tags.get(names.TAG_DRIVER_HOST) != socket.gethostname():
        return 0
    killed = 0
    for item in filter(None, previous.tags.get(names.TAG_RAY_PIDS, "").split(",")):
        if _alive(item):
            with contextlib.suppress(psutil.Error):
                psutil.Process(int(item.split(":")[0])).kill()
                killed += 1
    return killed


# --- what --resume checks before it touches anything --------------------------------------------
def interrupted_run(tracker: Tracker, sweep: SweepConfig) -> RunView:
    """The newest sweep run of this sweep that did not finish, for --resume."""
    previous = tracker.latest_unfinished(experiment_of(sweep), names.KIND_SWEEP)
    if previous is None:
        raise ConfigError(
            f"--resume: no interrupted sweep {sweep.name!r} in the store {tracker.uri}"
        )
    return previous


def check_unchanged(previous: RunView, fingerprint: str, sweep_path: Path) -> None:
    """Before any compute: a resumed sweep must be the sweep that was interrupted."""
    if previous.tags.get(names.TAG_SWEEP_HASH) != fingerprint:
        raise ConfigError(
            f"--resume: {sweep_path} changed since sweep run {previous.run_id} started; "
            "resume with the file as it was, or start a new sweep without --resume"
        )


def ready_to_resume(previous: RunView, storage: Path) -> str:
    """The interrupted sweep's Ray Tune folder, after killing what its Ray left behind."""
    ray_name = previous.params[names.SWEEP_PARAM_RAY_NAME]
    if not (storage / ray_name).exists():
        raise ConfigError(
            f"--resume: sweep run {previous.run_id} stopped before Ray saved any state "
            f"(no {storage / ray_name}); start the sweep again without --resume"
        )
    left = previous.tags.get(names.TAG_RAY_TEMP_DIR)
    if killed := (kill_private_ray(left) if left else 0) + kill_recorded(previous):
        warnings.warn(f"killed {killed} leftover processes of the interrupted sweep", stacklevel=3)
    return ray_name
