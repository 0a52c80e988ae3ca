"""Which MLflow store a command uses, and what every run is tagged with: the git commit, the
package versions and the device the process computes on. No MLflow calls here (they are all
in `husai.registry.tracking`).

The default store is MLflow's own default, `sqlite:///<project>/mlflow.db`, with artifacts in
`<project>/mlruns/artifacts`: `mlflow run`, `mlflow ui` and the Python client started in the
project's folder with nothing set find what HUSAI recorded. An explicit `--tracking-uri` or
`MLFLOW_TRACKING_URI` points at another store or a tracking server.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import husai
from husai import names
from husai.core import device as devices
from husai.core.errors import InputError, ServiceUnavailable, first_line
from husai.core.paths import project_root

TRACKED_PACKAGES = (
    "torch",
    "mlflow",
    "ray",
    "optuna",
    "sae-lens",
    "transformer-lens",
    "numpy",
    "pandas",
)


LEGACY_STORE = Path("mlruns") / "mlflow.db"  # the default before: MLflow's tools looked elsewhere


def default_tracking_uri() -> str:
    """`sqlite:///<project>/mlflow.db`, the file MLflow itself opens when nothing is set; a
    store left at the old default (`mlruns/mlflow.db`) and none at the new one is still used,
    with a warning saying how to move it."""
    root = project_root()
    db, legacy = root / "mlflow.db", root / LEGACY_STORE
    if not db.exists() and legacy.exists():
        warnings.warn(
            f"using the store at {legacy} (HUSAI's default before 0.1.0); `mlflow run` and "
            f"`mlflow ui` look for {db}: move it there (mv {legacy} {db})",
            stacklevel=2,
        )
        return "sqlite:///" + str(legacy)
    return "sqlite:///" + str(db)


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the project's SQLite store (absolute)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Relative SQLite paths follow whichever working directory opens them (Ray trials run
        # elsewhere), so pin them to an absolute path once, here.
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


# Schemes MLflow can open as a tracking and registry store (SQLAlchemy dialects may name a driver,
# e.g. postgresql+psycopg2).
SERVER_SCHEMES = ("http", "https")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
OTHER_SCHEMES = ("databricks",)
CONNECT_TIMEOUT_ENV = "HUSAI_TRACKING_CONNECT_TIMEOUT_S"
DEFAULT_CONNECT_TIMEOUT_S = 30.0


def is_server_uri(uri: str) -> bool:
    """Whether `uri` names a tracking server (http or https), not a database."""
    return uri.split(":", 1)[0].lower() in SERVER_SCHEMES


def check_tracking_uri(uri: str) -> None:
    """A URI MLflow can open as a store, or a one-line InputError naming it and what works
    (MLflow's own error is a 40-line traceback from deep inside its registry)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme in (*SERVER_SCHEMES, *DATABASE_SCHEMES, *OTHER_SCHEMES):
        return
    if scheme in ("", "file"):
        raise InputError(
            f"tracking URI {uri}: a plain folder (MLflow's file store) is not supported; use "
            "sqlite:///<path>/mlflow.db, or http(s)://<server>"
        )
    raise InputError(
        f"tracking URI {uri}: unknown scheme {scheme!r}; use sqlite:///<path>/mlflow.db, "
        "http(s)://<server>, or a database (postgresql://, mysql://, mssql://)"
    )


def connect_timeout() -> float:
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, str(DEFAULT_CONNECT_TIMEOUT_S))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InputError(
            f"{CONNECT_TIMEOUT_ENV}: expected a positive number of seconds, got {raw!r}"
        )
    return value


def check_server(uri: str, timeout: float | None = None) -> None:
    """A tracking server at an http(s) URI answers within `timeout` seconds (default
    HUSAI_TRACKING_CONNECT_TIMEOUT_S, 30), or ServiceUnavailable says so in one line: MLflow's
    client would retry with back-off for minutes. Any HTTP answer counts (a server behind
    authentication answers 401); only no answer at all does not."""
    if not is_server_uri(uri):
        return
    limit = connect_timeout() if timeout is None else timeout
    deadline = time.monotonic() + limit
    health = uri.rstrip("/") + "/health"
    why = "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            with urllib.request.urlopen(health, timeout=max(0.1, min(left, 5.0))):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            why = str(reason) or type(e).__name__
        if time.monotonic() + 0.5 >= deadline:
            break
        time.sleep(0.5)
    raise ServiceUnavailable(
        f"tracking server {uri} did not answer within {limit:g} s ({why}); check that "
        f"`mlflow server` runs there and the address is right ({CONNECT_TIMEOUT_ENV} sets the wait)"
    )


def server_lost(uri: str, e: BaseException, timeout: float = 5.0) -> str | None:
    """Why `e` happened, in one line, if it is the tracking server at `uri` going away (a
    server URI whose /health no longer answers within `timeout`); None for anything else."""
    if not is_server_uri(uri):
        return None
    try:
        check_server(uri, timeout)
    except ServiceUnavailable:
        cause = first_line(e).split(" with exception")[0][:200]  # MLflow's adds the whole URL
        return f"tracking server {uri} stopped answering ({cause})"
    return None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite store, else None (a server or another database)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@functools.cache
def git_sha() -> str:
    """The checkout's commit (+ "-dirty"), read once per process: the code a process runs is
    what it loaded when it started, and a sweep's trial process records many runs."""
    root = project_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the metrics depend on, read once per process
    (callers copy what they keep)."""
    out = {"husai": husai.__version__}
    for dist in TRACKED_PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def check_store_folder(uri: str, db: Path) -> None:
    """The folder of a SQLite store can be made and written, or a one-line InputError says why
    (before any compute: a store that cannot be written would lose the whole result)."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"tracking URI {uri}: cannot create {db.parent} ({e.strerror})") from None
    if not os.access(db.parent, os.W_OK | os.X_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise InputError(f"tracking URI {uri}: {db.parent} is not writable")


def run_tags(
    config_hash: str, kind: str, command: str, sha: str, versions: dict[str, str]
) -> dict[str, str]:
    """The tags every run gets. The device is where this process computes
    (`husai.core.device.activate`), e.g. cuda:0 and the GPU's name; it is not part of any
    config hash: the same recipe elsewhere is the same experiment."""
    info = devices.active_info()
    return {
        names.TAG_CONFIG_HASH: config_hash,
        names.TAG_GIT_SHA: sha,
        names.TAG_METRIC_VERSION: str(husai.metric_version),
        names.TAG_KIND: kind,
        names.TAG_COMMAND: command,
        names.TAG_DEVICE: info.device,
        names.TAG_DEVICE_NAME: info.name,
        **{names.package_tag(k): v for k, v in versions.items()},
    }


@contextlib.contextmanager
def exclusive_lock(db: Path, name: str) -> Iterator[None]:
    """An exclusive `flock` on `<db>.claims/<name>.lock` beside a SQLite store for the block;
    the kernel releases it even if its holder is killed."""
    folder = db.parent / f"{db.name}.claims"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def creating_store(db: Path) -> contextlib.AbstractContextManager[None]:
    """Held while a store is opened: MLflow's schema migrations are not safe to run twice at
    once on one new file."""
    return exclusive_lock(db, "store")
