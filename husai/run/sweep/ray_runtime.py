"""Ray for a sweep: a private local instance kept on loopback, or a user's cluster; what a trial
may ask of it; and the clean-up after a killed driver. Never `ray stop`, which would kill every
Ray process of the user on the machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator

import psutil
import ray
from ray._private import ray_constants

from husai.config.sweep.spec import SweepConfig
from husai.core.errors import InputError, ServiceUnavailable, first_line

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


def processes_of(temp_dir: str) -> list[psutil.Process]:
    """The processes of the Ray node(s) whose temp dir is `temp_dir`: those naming it on their
    command line, their children, and any holding a file open under it (Ray's agents rename
    themselves, e.g. `ray::DashboardAgent`, and can outlive a killed raylet)."""
    found: dict[int, psutil.Process] = {}
    inside = temp_dir.rstrip(os.sep) + os.sep
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():
            continue  # the caller, which may hold a log of the node open
        with contextlib.suppress(psutil.Error):
            if temp_dir in " ".join(proc.info["cmdline"] or []) or any(
                f.path.startswith(inside) for f in proc.open_files()
            ):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, child)
    return list(found.values())


def kill_processes_of(temp_dir: str) -> int:
    """SIGKILL what `processes_of` finds; how many."""
    killed = 0
    for proc in processes_of(temp_dir):
        with contextlib.suppress(psutil.Error):
            proc.kill()
            killed += 1
    return killed


def kill_private_ray(temp_dir: str) -> int:
    """Kill what is left of a private Ray instance (its processes name its unique temp dir):
    after a SIGKILL of the driver, Ray's helpers outlive it. Returns how many were killed."""
    if PRIVATE_PREFIX not in temp_dir:
        return 0  # only ever our own private instances
    return kill_processes_of(temp_dir)


CONNECT_TIMEOUT_ENV = "HUSAI_RAY_CONNECT_TIMEOUT_S"  # seconds to reach a cluster's head
CONNECT_TIMEOUT_S = 60.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_GCS_PORT = 6379


def cluster_address(address: str | None) -> str | None:
    """The cluster a sweep joins: `address`, else RAY_ADDRESS; None: a private instance.
    A Ray Client address (ray://) is refused: Tune's driver must run on the cluster."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None and address.startswith("ray://"):
        raise InputError(
            f"--ray-address {address}: Ray Client (ray://) addresses are not supported: a "
            "sweep's driver runs Ray Tune, which must run on the cluster. Run the sweep on a "
            "node of the cluster with the head's address (<head>:6379), or submit it as a Ray "
            "Job (README, 'On a Ray cluster')"
        )
    return address


def connect_timeout() -> float:
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else CONNECT_TIMEOUT_S
    except ValueError:
        raise InputError(f"{CONNECT_TIMEOUT_ENV}={raw!r}: give a number of seconds") from None
    if not value > 0:
        raise InputError(f"{CONNECT_TIMEOUT_ENV}={raw!r}: give a number of seconds above 0")
    return value


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    try:
        return host.strip("[]"), int(port) if port else DEFAULT_GCS_PORT
    except ValueError:
        raise InputError(f"--ray-address {address}: give host:port (e.g. 10.0.0.5:6379)") from None


def _unreachable(address: str, timeout: float, what: str) -> ServiceUnavailable:
    host, port = _host_port(address)
    return ServiceUnavailable(
        f"--ray-address {address}: {what} within {timeout:g} s; check that the head runs "
        f"(`ray start --head --port {port}` on {host}) and that this machine can reach "
        f"{host}:{port}; {CONNECT_TIMEOUT_ENV} sets the wait"
    )


def check_reachable(address: str, timeout: float | None = None) -> None:
    """Before any compute: something listens at the head's address (retried until `timeout`),
    else ServiceUnavailable naming the address and what to check."""
    timeout = connect_timeout() if timeout is None else timeout
    host, port = _host_port(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise _unreachable(address, timeout, "no Ray head answered") from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def machine_address() -> str | None:
    """This machine's address on its default route, where a plain `ray start` registers its
    node (as Ray finds it: a UDP socket's own end, nothing is sent); None without a route."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("8.8.8.8", 53))
        return str(s.getsockname()[0])
    return None


def _head_on_loopback(host: str, port: int) -> bool:
    """Whether a head given by a loopback address registered itself on loopback (started with
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0): then it listens on 127.0.0.1 only, and the driver
    must join as a 127.0.0.1 node too (by default it would look for the head at the machine's
    network address, forever). A head started plainly (`ray start --head`) registers on the
    machine's address, answers there, and is joined as Ray would."""
    if host not in LOOPBACK_HOSTS:
        return False
    ip = machine_address()
    if ip is None or ip.startswith("127."):
        return True
    try:
        with socket.create_connection((ip, port), timeout=2.0):
            return False
    except OSError:
        return True


def _join_failed(address: str, timeout: float, e: BaseException) -> ServiceUnavailable:
    """Why `ray.init` did not join, in one line (Ray wraps the cause in a ConnectionError)."""
    chain: list[str] = []
    cause: BaseException | None = e
    while cause is not None and len(chain) < 5:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = " ".join(chain)
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        return ServiceUnavailable(
            f"--ray-address {address}: the cluster uses token authentication and this process "
            "has not got its token: give it the cluster's RAY_AUTH_MODE=token and its token "
            "(RAY_AUTH_TOKEN, or ~/.ray/auth_token on this machine)"
        )
    if isinstance(e, ServiceUnavailable):
        return e
    return _unreachable(address, timeout, f"Ray did not connect ({first_line(e)})")


@contextlib.contextmanager
def _deadline(seconds: float, error: Exception) -> Iterator[None]:
    """Raise `error` in this (main) thread if the block is still running after `seconds`:
    `ray.init` retries a head it cannot finish connecting to without end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise error

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def start_ray(address: str | None) -> str | None:
    """Connect to `address` (or RAY_ADDRESS); else start a private local instance on loopback
    and return its temp dir. `ray.shutdown()` afterwards stops the one or disconnects from the
    other. A head that registered on loopback is joined as a loopback node (`_head_on_loopback`);
    any head not joined within the connect timeout is a ServiceUnavailable."""
    address = cluster_address(address)
    if address:
        timeout = connect_timeout()
        kwargs: dict[str, str] = {}
        if address != "auto":  # "auto": the cluster this machine's `ray start` left a file of
            # Reachability was checked before any compute (`check_reachable`, the sweep's first
            # step); a head gone since then is caught by the deadline below.
            host, port = _host_port(address)
            if _head_on_loopback(host, port):
                keep_on_loopback()
                kwargs["_node_ip_address"] = "127.0.0.1"
            elif host in LOOPBACK_HOSTS:
                # Named, not looked up: a private instance earlier in this process may have
                # turned Ray's own lookup to loopback.
                kwargs["_node_ip_address"] = str(machine_address())
        try:
            with _deadline(timeout, _unreachable(address, timeout, "Ray did not connect")):
                ray.init(address=address, log_to_driver=False, **kwargs)  # type: ignore[arg-type]
        except (ServiceUnavailable, ConnectionError, RuntimeError) as e:
            ray.shutdown()
            raise _join_failed(address, timeout, e) from None
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
