"""`husai external`: the official SAEBench or CE-Bench harness on a registered SAE.

The version is exported as a plain sae-lens folder (`husai.registry.export`), and the harness
runs on it in its own Python (`--python`: the environment where it is installed, which need
not be HUSAI's) through a small runner (`husai/harness/`), in a fresh working folder. What it
writes there is read into metrics (`husai.measure.official`: `saebench/<eval>/<category>/
<metric>`, `cebench/<field>`) and recorded on a run in `husai-external` that the version links
to (`husai.registry.external_records`), so a gate policy can check those keys. Everything that
can be checked is checked before the harness starts: the version exists, the Python runs and
imports the harness, the evals are SAEBench's, CE-Bench's checkout and dataset exist.

    husai external --version 3 --harness saebench --model pythia-70m-deduped \
        --evals core,sparse_probing --python ~/saebench-env/bin/python --device cuda
    husai external --version 3 --harness cebench --harness-path ~/CE-Bench \
        --dataset ~/data/contrastive-stories-v3 --model pythia-70m-deduped --python ...
"""

from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from husai import console, names
from husai.core.errors import InputError
from husai.measure.official import read_results
from husai.registry.export import export_sae
from husai.registry.external_records import HarnessRun, record_external, record_failed_external
from husai.registry.tracking import Tracker

HARNESS_DIR = Path(__file__).resolve().parent.parent / "harness"
# SAEBench's eval types (sae_bench.custom_saes.run_all_evals_custom_saes, sae-bench 0.6.0).
SAEBENCH_EVALS = (
    "absorption",
    "autointerp",
    "core",
    "ravel",
    "scr",
    "tpp",
    "sparse_probing",
    "sparse_probing_sae_probes",
    "unlearning",
)
# What `--python` must import, and the distribution whose version is recorded.
IMPORTS = {names.HARNESS_SAEBENCH: "sae_bench", names.HARNESS_CEBENCH: "sae_bench"}


@dataclass(frozen=True)
class ExternalRequest:
    """One harness run on one version, as the command line gives it."""

    version: str
    harness: str
    model: str  # the language model the harness runs (it must be in the HF cache)
    evals: tuple[str, ...] = ("core",)  # SAEBench only
    python: str = sys.executable
    harness_path: Path | None = None  # CE-Bench's checkout
    dataset: str = ""  # CE-Bench's contrastive stories: a save_to_disk folder or a Hub name
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 64


@dataclass(frozen=True)
class ExternalOutcome:
    run_id: str
    version: str
    harness: str
    metrics: dict[str, float]
    skipped: list[str]


class HarnessFailed(RuntimeError):
    """The harness exited non-zero or wrote nothing usable; its FAILED run says why."""


def run_external(tracker: Tracker, req: ExternalRequest) -> ExternalOutcome:
    mv = tracker.model_version(names.SAE_MODEL_NAME, req.version, None)
    if mv is None:
        raise InputError(
            f"--version: {names.SAE_MODEL_NAME} has no version {req.version!r} in {tracker.uri}"
        )
    harness_version = check_request(req)
    run = HarnessRun(
        req.harness,
        req.model,
        ",".join(req.evals) if req.harness == names.HARNESS_SAEBENCH else "contrastive",
        harness_version,
        req.device,
    )
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="husai-external-") as tmp:
        sae_folder = export_sae(tracker, str(mv.version), Path(tmp) / "sae").out
        work = Path(tmp) / "work"
        work.mkdir()
        console.say(f"external: {req.harness} on husai-sae v{mv.version} in {work}")
        rc, tail = _run_harness(_command(req, sae_folder, f"husai-v{mv.version}"), work)
        if rc != 0:
            why = f"{req.harness} exited {rc}: {tail or 'no output'}"
            rid = record_failed_external(tracker, mv, run, why, started)
            raise HarnessFailed(f"{why} (FAILED run {rid})")
        try:
            results = read_results(req.harness, work)
        except InputError as e:
            rid = record_failed_external(tracker, mv, run, str(e), started)
            raise HarnessFailed(f"{e} (FAILED run {rid})") from None
        run_id = record_external(tracker, mv, run, results, work, started)
    return ExternalOutcome(run_id, str(mv.version), req.harness, results.metrics, results.skipped)


def check_request(req: ExternalRequest) -> str:
    """Every check before the harness runs; the harness's version (for the run's params)."""
    if req.harness not in names.HARNESSES:
        raise InputError(f"--harness: {req.harness!r}; choose one of {', '.join(names.HARNESSES)}")
    if not req.model:
        raise InputError("--model: name the language model the harness runs (e.g. pythia-70m)")
    if req.harness == names.HARNESS_SAEBENCH:
        unknown = [e for e in req.evals if e not in SAEBENCH_EVALS]
        if unknown or not req.evals:
            raise InputError(
                f"--evals: {', '.join(unknown) or 'none given'}; SAEBench's are "
                f"{', '.join(SAEBENCH_EVALS)}"
            )
    else:
        checkout = req.harness_path
        if checkout is None or not (checkout / "ce_bench" / "CE_Bench.py").is_file():
            raise InputError(
                f"--harness-path: {checkout or '(not given)'} is not a CE-Bench checkout "
                "(no ce_bench/CE_Bench.py)"
            )
        if not req.dataset:
            raise InputError("--dataset: give CE-Bench's contrastive stories (folder or name)")
    probe = (
        f"import importlib.metadata as m, {IMPORTS[req.harness]}\n"
        "try:\n    print(m.version('sae-bench'))\n"
        "except m.PackageNotFoundError:\n    print('unknown')\n"
    )
    try:
        done = subprocess.run(
            [req.python, "-c", probe], capture_output=True, text=True, timeout=300
        )
    except OSError as e:
        raise InputError(f"--python: {req.python} cannot run ({e.strerror})") from None
    if done.returncode != 0:
        raise InputError(
            f"--python: {req.python} cannot import {IMPORTS[req.harness]} "
            f"({_last_line(done.stderr)}); give the Python of the harness's environment"
        )
    version = done.stdout.strip() or "unknown"
    if req.harness == names.HARNESS_CEBENCH:
        version = f"ce-bench {req.harness_path}; sae-bench {version}"
    return version


def _command(req: ExternalRequest, sae_folder: Path, name: str) -> list[str]:
    common = [
        "--sae-folder", str(sae_folder), "--name", name, "--model", req.model,
        "--device", req.device, "--dtype", req.dtype, "--batch-size", str(req.batch_size),
    ]  # fmt: skip
    if req.harness == names.HARNESS_SAEBENCH:
        runner = HARNESS_DIR / "saebench_runner.py"
        return [req.python, str(runner), *common, "--evals", ",".join(req.evals)]
    runner = HARNESS_DIR / "cebench_runner.py"
    extra = ["--harness-path", str(req.harness_path), "--dataset", req.dataset]
    return [req.python, str(runner), *common, *extra]


def _run_harness(cmd: list[str], work: Path) -> tuple[int, str]:
    """Run it in `work`, its output shown as it comes (the harness's own progress bars); the
    exit code and its last meaningful line."""
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with subprocess.Popen(
        cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            if line.strip():
                tail.append(line.strip())
    return proc.returncode, tail[-1] if tail else ""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"
