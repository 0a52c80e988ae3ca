"""`husai external`: the official SAEBench or CE-Bench harness on a registered SAE.

The version is exported as a plain sae-lens folder (`husai.registry.export`), and the harness
runs on it in its own Python (`--python`: the environment where it is installed, which need
not be HUSAI's) through a small runner (`husai/harness/`), in a fresh working folder. What it
writes there is read into metrics (`husai.measure.official`: `saebench/<eval>/<category>/
<metric>`, `cebench/<field>`) and recorded on a run in `husai-external` that the version links
to (`husai.registry.external_records`), so a gate policy can check those keys. Everything that
can be checked is checked before the harness starts: the version exists and was trained on a
language model's activations, `--model` is that model (and one SAEBench supports), the Python
runs and imports the harness, the evals are ones SAEBench runs for a custom SAE, CE-Bench's
checkout exists.

    husai external --version 3 --harness saebench --model pythia-70m-deduped \
        --evals core,sparse_probing --python ~/saebench-env/bin/python --device cuda
    husai external --version 3 --harness cebench --harness-path ~/CE-Bench \
        --dataset ~/data/contrastive-stories-v3 --model pythia-70m-deduped --python ...
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from husai import console, names
from husai.core.errors import InputError
from husai.measure.official import read_results
from husai.registry.export import export_sae, lm_model_of
from husai.registry.external_records import (
    HarnessOutput,
    HarnessRun,
    record_external,
    record_failed_external,
)
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


@dataclass(frozen=True)
class ExternalRequest:
    """One harness run on one version, as the command line gives it."""

    version: str
    harness: str
    model: str  # the model the harness runs (in the HF cache); "": the SAE's own, by name
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


@dataclass(frozen=True)
class HarnessExit:
    code: int
    last_line: str  # its last non-empty output line ("" if none)


def run_external(tracker: Tracker, req: ExternalRequest) -> ExternalOutcome:
    mv = tracker.model_version(names.SAE_MODEL_NAME, req.version, None)
    if mv is None:
        raise InputError(
            f"--version: {names.SAE_MODEL_NAME} has no version {req.version!r} in {tracker.uri}"
        )
    check_flags(req)
    trial = mv.tags.get(names.TAG_TRIAL_RUN_ID)
    req = replace(req, model=_model(req, mv.version, lm_model_of(tracker, _params(tracker, trial))))
    harness_version = probe_harness(req)
    evals = ",".join(req.evals) if req.harness == names.HARNESS_SAEBENCH else "contrastive"
    run = HarnessRun(req.harness, req.model, evals, harness_version, req.device)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="husai-external-") as tmp:
        sae_folder = export_sae(tracker, str(mv.version), Path(tmp) / "sae").out
        work = Path(tmp) / "work"
        work.mkdir()
        console.say(f"external: {req.harness} on husai-sae v{mv.version} in {work}")
        try:
            done = _run_harness(_command(req, sae_folder, f"husai-v{mv.version}"), work)
        except KeyboardInterrupt:
            record_failed_external(tracker, mv, run, "interrupted (Ctrl-C)", started)
            raise
        if done.code != 0:
            why = f"{req.harness} exited {done.code}: {done.last_line or 'no output'}"
            rid = record_failed_external(tracker, mv, run, why, started)
            raise HarnessFailed(f"{why} (FAILED run {rid})")
        asked = req.evals if req.harness == names.HARNESS_SAEBENCH else ()
        try:
            results = read_results(req.harness, work, asked)
        except InputError as e:
            rid = record_failed_external(tracker, mv, run, str(e), started)
            raise HarnessFailed(f"{e} (FAILED run {rid})") from None
        out = HarnessOutput(results.metrics, results.files, results.skipped, results.eval_type_ids)
        run_id = record_external(tracker, mv, run, out, work, started)
    return ExternalOutcome(run_id, str(mv.version), req.harness, results.metrics, results.skipped)


def _params(tracker: Tracker, run_id: str | None) -> dict[str, str]:
    return tracker.get_run_params(run_id) if run_id else {}


def check_flags(req: ExternalRequest) -> None:
    """What the flags alone can say is wrong."""
    if req.harness not in names.HARNESSES:
        raise InputError(f"--harness: {req.harness!r}; choose one of {', '.join(names.HARNESSES)}")
    if req.harness == names.HARNESS_SAEBENCH:
        unknown = [e for e in req.evals if e not in SAEBENCH_EVALS]
        if unknown or not req.evals:
            raise InputError(
                f"--evals: {', '.join(unknown) or 'none given'}; SAEBench's are "
                f"{', '.join(SAEBENCH_EVALS)}"
            )
        if "unlearning" in req.evals:  # sae-bench 0.6.0 skips it for every custom SAE
            raise InputError("--evals: unlearning: SAEBench's custom-SAE runner skips it")
        if "autointerp" in req.evals and not os.environ.get("OPENAI_API_KEY"):
            raise InputError("--evals: autointerp needs OPENAI_API_KEY (SAEBench skips it)")
        return
    checkout = req.harness_path
    if checkout is None or not (checkout / "ce_bench" / "CE_Bench.py").is_file():
        raise InputError(
            f"--harness-path: {checkout or '(not given)'} is not a CE-Bench checkout "
            "(no ce_bench/CE_Bench.py)"
        )
    if not req.dataset:
        raise InputError("--dataset: give CE-Bench's contrastive stories (folder or Hub name)")


def _model(req: ExternalRequest, version: str, lm: str | None) -> str:
    """The model the harness runs: the SAE's own language model, by the name it was read
    under; a model given as a folder must be named (the harness loads models by name)."""
    if lm is None:
        raise InputError(
            f"--version: husai-sae v{version} was trained on the modular-addition model's "
            "activations or on your own rows; the official harnesses run a language model "
            "(train on one: activations.source transformer_lens)"
        )
    if Path(lm).expanduser().exists():
        if not req.model:
            raise InputError(
                f"--model: husai-sae v{version} read the model in the folder {lm}; name the "
                "model the harness should load (the same weights)"
            )
        return req.model
    if req.model and req.model != lm:
        raise InputError(
            f"--model: {req.model}, but husai-sae v{version} was trained on {lm}'s activations"
        )
    return lm


PROBE = """import importlib.metadata as m, json, sys
import {module}
models = list(getattr({module}, "MODEL_CONFIGS", {{}}))
try:
    version = m.version("sae-bench")
except m.PackageNotFoundError:
    version = "unknown"
print(json.dumps({{"version": version, "models": models}}))
"""


def probe_harness(req: ExternalRequest) -> str:
    """Run `--python` once: it imports the harness and says its version (returned, for the
    run's params) and, for SAEBench, the models it has settings for (`--model` must be one)."""
    module = "sae_bench.custom_saes.run_all_evals_custom_saes"
    try:
        done = subprocess.run(
            [req.python, "-c", PROBE.format(module=module)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=600,
        )
    except OSError as e:
        raise InputError(f"--python: {req.python} cannot run ({e.strerror})") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"--python: {req.python} took over 600 s to import SAEBench") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise InputError(
            f"--python: {req.python} cannot import sae_bench ({_last_line(done.stderr)}); "
            "give the Python of the harness's environment"
        )
    found = json.loads(lines[-1])
    models = tuple(found["models"]) if req.harness == names.HARNESS_SAEBENCH else ()
    if models and req.model not in models:
        raise InputError(
            f"--model: {req.model} is not among SAEBench's models ({', '.join(models)})"
        )
    version = str(found["version"])
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


def _run_harness(cmd: list[str], work: Path) -> HarnessExit:
    """Run it in `work`, its output shown as it comes (the harness's own progress bars)."""
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with subprocess.Popen(
        cmd,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",  # a harness's bytes never stop the record of its run
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            if line.strip():
                tail.append(line.strip())
    return HarnessExit(proc.returncode, tail[-1] if tail else "")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"
