"""Joining a user's Ray cluster: the failure seen was a driver retrying a head it could not
reach every 5 s for more than 8 minutes, with no error. Now an unreachable head ends the command
within the connect timeout with one line (exit 1), before any compute or run; a Ray Client
address is refused with the reason (exit 2). (A sweep on a real `ray start` cluster: issue 20.)"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from husai import names
from husai.cli import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, main
from husai.core.errors import InputError
from husai.registry.tracking import Tracker
from husai.run.sweep.ray_runtime import (
    CONNECT_TIMEOUT_ENV,
    _head_on_loopback,
    _host_port,
    cluster_address,
    machine_address,
)
from tests.helpers import free_port, write_sweep


def test_an_unreachable_head_is_one_line_within_the_timeout(
    tmp_path: Path,
    isolated_store: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "2")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    argv = ["sweep", "--sweep", str(write_sweep(tmp_path)), "--ray-address", address]
    assert main(argv) == EXIT_UNAVAILABLE
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--ray-address {address}: no Ray head answered within 2 s" in err
    assert CONNECT_TIMEOUT_ENV in err
    # Found before the base model, the activations or the sweep run.
    tracker = Tracker(isolated_store)
    for experiment in (names.EXPERIMENT_BASE, "husai/tiny_sweep"):
        exp = tracker.client.get_experiment_by_name(experiment)
        assert exp is None or tracker.client.search_runs([exp.experiment_id]) == []


def test_ray_client_addresses_and_bad_timeouts_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = str(write_sweep(tmp_path))
    assert main(["sweep", "--sweep", sweep, "--ray-address", "ray://10.0.0.5:10001"]) == 2
    assert "Ray Client (ray://) addresses are not supported" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(InputError, match="ray://head:10001"):
        cluster_address(None)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "soon")
    argv = ["sweep", "--sweep", sweep, "--ray-address", f"127.0.0.1:{free_port()}"]
    assert main(argv) == EXIT_BAD_INPUT
    assert f"{CONNECT_TIMEOUT_ENV}='soon'" in capsys.readouterr().err
    assert _host_port("10.0.0.5") == ("10.0.0.5", 6379)
    assert _host_port("localhost:6390") == ("localhost", 6390)


def test_a_loopback_head_is_joined_the_way_it_registered() -> None:
    """A head given as 127.0.0.1 that listens only there registered on loopback (the driver
    must join as 127.0.0.1); one that also answers on the machine's address registered there
    (Ray's default join). Stand-in listeners, not Ray: this is our own decision rule."""
    if machine_address() in (None, "127.0.0.1"):
        pytest.skip("this machine has no address but loopback")
    for bind, on_loopback in (("127.0.0.1", True), ("0.0.0.0", False)):
        with socket.socket() as s:
            s.bind((bind, 0))
            s.listen()
            port = s.getsockname()[1]
            assert _head_on_loopback("127.0.0.1", port) is on_loopback, bind
    assert _head_on_loopback("10.0.0.5", 6379) is False
