"""Ray for a sweep: a private local instance kept on loopback, or a user's cluster; what a trial
may ask of it; and the clean-up after a killed driver. Never `ray stop`, which would kill every
Ray process of the user on the machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings

import psutil
import ray
from ray._private import ray_constants

from husai.config.sweep import SweepConfig

PRIVATE_PREFIX = "husai-ray-"  # the temp dir of every private instance HUSAI starts


def trial_resources(sweep: SweepConfig) -> dict[str, float]:
    """{cpu, gpu} per trial; a fractional GPU on a GPU-less cluster would wait in PENDING
    forever, so it becomes 0 with a warning."""
    gpu = sweep.resources.gpu
    if gpu > 0 and ray.cluster_resources().get("GPU", 0) == 0:
        warnings.warn(
            f"resources.gpu = {gpu} but the Ray cluster has no GPU: running trials on CPU",
            stacklevel=2,
        )
        gpu = 0.0
    return {"cpu": sweep.resources.cpu, "gpu": gpu}


def keep_on_loopback() -> None:
    """Make Ray register nodes on 127.0.0.1 instead of the machine's network address.
    For local instances only: a real cluster needs real addresses. Ray reads the switch once,
    when it is imported, so the constant it was read into is set as well as the variable that
    the processes Ray starts will read."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def kill_private_ray(temp_dir: str) -> int:
    """Kill what is left of a private Ray instance (its processes name its unique temp dir):
    after a SIGKILL of the driver, Ray's helpers outlive it. Returns how many were killed."""
    if PRIVATE_PREFIX not in temp_dir:
        return 0  # only ever our own private instances
    killed = 0
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if temp_dir in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    return killed


def start_ray(address: str | None) -> str | None:
    """Connect to `address` (or RAY_ADDRESS); else start a private local instance on loopback
    and return its temp dir. `ray.shutdown()` afterwards stops the one or disconnects from the
    other."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return None
    keep_on_loopback()
    temp_dir = tempfile.mkdtemp(prefix=PRIVATE_PREFIX)
    ray.init(
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp_dir,
    )
    # Ray opens its temp dir to everyone (0777); its sockets and logs are the user's alone.
    os.chmod(temp_dir, 0o700)
    return temp_dir


def remove_private_ray_dir(temp_dir: str | None) -> None:
    """After `ray.shutdown()`: delete the private instance's temp dir (only ever one of ours),
    so finished sweeps leave nothing in /tmp."""
    if temp_dir is not None and PRIVATE_PREFIX in os.path.basename(temp_dir):
        shutil.rmtree(temp_dir, ignore_errors=True)
