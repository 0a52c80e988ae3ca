"""`--resume yes` never kills a live sweep, and after a SIGKILL it finds the Ray processes the
driver recorded even when their command lines no longer name its temp dir."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from husai import names
from husai.cli import EXIT_BAD_INPUT, main
from husai.core.errors import InputError
from husai.registry.tracking import Tracker
from husai.registry.views import RunView
from husai.run.sweep.resume import FRESH_S, DriverWatch, kill_recorded, refuse_if_alive
from tests.helpers import write_sweep


@pytest.fixture
def sleeper() -> Iterator[psutil.Process]:
    """A live process in its own session, its command line naming no Ray temp dir: what Ray's
    agents look like to a search by command line after they rewrite it."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield psutil.Process(proc.pid)
    with contextlib.suppress(OSError):  # a test may have killed and reaped it already
        proc.kill()
    proc.wait()


def _view(tags: dict[str, str]) -> RunView:
    return RunView("r1", "1", "sweep-x", "RUNNING", 0, None, {}, {}, tags)


def test_resume_refuses_a_sweep_whose_driver_is_alive(
    tmp_path: Path,
    tracker: Tracker,
    sleeper: psutil.Process,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The failure seen: resume treated a running sweep as interrupted and killed its Ray."""
    path = write_sweep(tmp_path)
    exp = tracker.experiment_id("husai/tiny_sweep")
    tags = {
        names.TAG_KIND: names.KIND_SWEEP,
        names.TAG_DRIVER_HOST: socket.gethostname(),
        names.TAG_DRIVER_PID: f"{sleeper.pid}:{sleeper.create_time():.2f}",
    }
    run = tracker.client.create_run(exp, run_name="sweep-tiny_sweep", tags=tags)  # left RUNNING
    assert main(["sweep", "--sweep", str(path), "--resume", "yes"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"sweep run {run.info.run_id} is still running (driver pid {sleeper.pid}" in err
    assert sleeper.is_running()
    assert tracker.get_run(run.info.run_id).status == "RUNNING"  # nothing was touched


def test_a_driver_elsewhere_is_alive_while_its_heartbeat_is_fresh() -> None:
    now = time.time()
    elsewhere = {names.TAG_DRIVER_HOST: "other-host", names.TAG_DRIVER_PID: "1"}
    with pytest.raises(InputError, match="still running on other-host"):
        refuse_if_alive(_view({**elsewhere, names.TAG_DRIVER_HEARTBEAT: f"{now - 5:.0f}"}))
    stale = f"{now - FRESH_S - 5:.0f}"
    refuse_if_alive(_view({**elsewhere, names.TAG_DRIVER_HEARTBEAT: stale}))  # gone: resumable
    refuse_if_alive(_view({}))  # recorded before drivers were: resumable as before


def test_a_dead_driver_on_this_host_is_resumable_whatever_its_heartbeat(
    sleeper: psutil.Process,
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = f"{dead.pid}:{time.time() - 10:.2f}"
    here = {names.TAG_DRIVER_HOST: socket.gethostname(), names.TAG_DRIVER_PID: gone}
    refuse_if_alive(_view({**here, names.TAG_DRIVER_HEARTBEAT: f"{time.time():.0f}"}))
    # A pid now held by another process (same pid, another start time) is not the driver.
    reused = f"{sleeper.pid}:{sleeper.create_time() - 100:.2f}"
    here = {names.TAG_DRIVER_HOST: socket.gethostname(), names.TAG_DRIVER_PID: reused}
    refuse_if_alive(_view({**here, names.TAG_DRIVER_HEARTBEAT: f"{time.time():.0f}"}))


def test_recorded_processes_are_killed_only_if_still_the_same(sleeper: psutil.Process) -> None:
    here = {names.TAG_DRIVER_HOST: socket.gethostname()}
    wrong_start = f"{sleeper.pid}:{sleeper.create_time() - 100:.2f}"  # a reused pid
    assert kill_recorded(_view({**here, names.TAG_RAY_PIDS: wrong_start})) == 0
    same = f"{sleeper.pid}:{sleeper.create_time():.2f}"
    elsewhere = {names.TAG_DRIVER_HOST: "other-host", names.TAG_RAY_PIDS: same}
    assert kill_recorded(_view(elsewhere)) == 0  # another host's pids mean nothing here
    assert sleeper.is_running()
    assert kill_recorded(_view({**here, names.TAG_RAY_PIDS: same})) == 1
    sleeper.wait(timeout=5)
    assert not sleeper.is_running()


def test_the_driver_watch_records_host_pid_heartbeat_and_children(tracker: Tracker) -> None:
    with tracker.run("husai-test", "sweep", {}) as run_id:
        child = subprocess.Popen(["sleep", "30"])
        try:
            watch = DriverWatch(tracker, run_id).start()
            deadline = time.monotonic() + 10
            while names.TAG_RAY_PIDS not in tracker.get_run(run_id).tags:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            watch.stop()
        finally:
            child.kill()
            child.wait()
    tags = tracker.get_run(run_id).tags
    assert tags[names.TAG_DRIVER_HOST] == socket.gethostname()
    assert abs(float(tags[names.TAG_DRIVER_HEARTBEAT]) - time.time()) < 60
    assert f"{child.pid}:" in tags[names.TAG_RAY_PIDS]
