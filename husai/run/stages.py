"""The stages layer: every step that finds a thing in MLflow, else computes it and records it.

Each stage has one shape:
1. look the thing up through the records (`husai.registry.records`);
2. if it is not there, call pure compute (`husai.model`, `husai.sae`, `husai.measure`);
3. prepare what gets logged (weights folder, plots, cache entry) in a temporary folder;
4. record it, and hand back a handle (`husai.registry.handles`) saying what was reused.
Things kept as folders in the local cache (activations, reference SAEs) go through one seam,
`cached_entry`: the local cache, else the MLflow run that logged the entry, else compute; a run
is recorded only when the store has none. Trials: `husai.run.trial_stages`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from husai import console, names
from husai.config.experiment import ExperimentConfig
from husai.core import device as devices
from husai.core.cache import (
    MANIFEST,
    NO_CHECKSUM,
    check_copy,
    check_dir,
    content_sha256,
    manifest_of,
    publish_dir,
)
from husai.core.errors import ConfigError, InputError
from husai.core.hashing import stable_hash
from husai.core.paths import cache_root
from husai.measure.trial import check_batch, check_memory
from husai.model.activations import (
    ActivationCacheError,
    ActivationSet,
    activation_key,
    check_hook,
    extract,
    extract_random_base,
    load_activations,
    n_split_rows,
    random_base_key,
    save_activations,
)
from husai.model.base_model import (
    BaseTrainResult,
    HookedTransformer,
    load_base,
    save_base,
    train_base,
)
from husai.registry.claims import claim
from husai.registry.handles import ActivationsHandle, BaseModelHandle, Reference
from husai.registry.records import (
    ActivationsRecord,
    BaseModelRecord,
    find_activations_run,
    find_reference_run,
    record_activations,
    record_base_model,
    record_null_activations,
    record_reference,
)
from husai.registry.tracking import Tracker
from husai.report.plots import plot_base_curves
from husai.sae.build import decoder, load_sae, save_sae
from husai.sae.train import train_sae


def check_before_compute(cfg: ExperimentConfig) -> None:
    """Everything about an experiment that can be checked before the base model is trained:
    the device exists (and becomes this process's device), the hook exists in the configured
    model, the split leaves rows on both sides, a batch fits in the SAE-train rows, the SAEs
    fit in memory. Raises a one-line InputError; nothing is created."""
    devices.activate(cfg.runtime.device, cfg.runtime.deterministic)
    check_hook(cfg)
    check_batch(cfg, n_split_rows(cfg)[0])
    # Every hook's width is at least d_model: a lower estimate, so nothing that fits is refused.
    check_memory(cfg, cfg.base.d_model)


Writer = Callable[[Path], object]  # writes one cache entry into the folder it is given


def require_generalised(version: str, generalised: bool, test_acc: float, allow: bool) -> None:
    """SAEs on a base model that never learned the task describe nothing worth reproducing:
    refuse one that did not generalise (one line, exit 2) unless the user says so."""
    if not generalised and not allow:
        raise InputError(
            f"husai-base version {version} did not generalise (held-out accuracy "
            f"{test_acc:.4f}): SAEs on its activations would describe a model that has not "
            "learned the task; train it longer or pass --allow-memorised yes"
        )


def cached_entry(
    path: Path,
    run_id: str | None,
    tracker: Tracker,
    artifact: str,
    adopt: Callable[[Path], Writer],
    compute: Callable[[], Writer] | None = None,
) -> str:
    """Make sure the cache folder `path` holds its entry; say where it came from: "disk" (it was
    there), "mlflow" (`run_id`'s `artifact` downloaded, then `adopt(fetched)` checks it and says
    how to write it) or "computed" (`compute()` does the work and says how to write it). The
    work and the checks happen first; the entry is then published whole or not at all.
    `compute` None: the caller has checked that the entry exists somewhere.
    An entry on disk is used only if its content matches the checksum written with it; one that
    does not (or was made before checksums) is fetched again or recomputed, and the console
    says so. A copy fetched from MLflow is used only if it matches the checksum recorded on its
    run (`husai.content_sha256`); one that does not is recomputed (and, when the result equals
    the record, logged back to the run), or refused when there is nothing to compute it from."""
    recorded: str | None = None
    if path.exists():
        problem = check_dir(path)
        if problem is None:
            return "disk"
        if run_id is None and compute is None:
            # Nothing to replace it with: an entry from before checksums is adopted as it is;
            # a changed one is refused (ActivationCacheError names it).
            if problem != NO_CHECKSUM:
                raise ActivationCacheError(f"{path}: {problem}; no MLflow run holds a copy")
            _write_manifest(path)
            return "disk"
        console.print_cache_repair(path, problem, run_id)
        shutil.rmtree(path, ignore_errors=True)
    if run_id is not None:
        recorded = tracker.get_run(run_id).tags.get(names.TAG_CONTENT_SHA256)
        with tempfile.TemporaryDirectory() as tmp:
            fetched = tracker.download(run_id, artifact, Path(tmp))
            problem = check_copy(fetched, recorded)
            if problem is None:
                publish_dir(path, adopt(fetched))
                return "mlflow"
        where = f"MLflow run {run_id}, artifact {artifact}"
        if compute is None:
            raise ActivationCacheError(f"{where}: {problem}; nothing to compute it from")
        console.print_cache_repair(where, problem, None)  # never adopted: computed again
    if compute is None:
        raise ValueError(f"{path}: not cached and nothing to compute it with")
    publish_dir(path, compute())
    if run_id is not None and recorded is not None and manifest_of(path) == recorded:
        # Computed again exactly as recorded: the run's copy is mended for the next reader.
        tracker.log_artifacts(run_id, path, artifact)
    return "computed"


def _write_manifest(path: Path) -> None:
    """Adopt an entry made before checksums: its manifest written whole (temp file + rename)."""
    digest = content_sha256(path)  # before the temp file exists in the folder
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}-", dir=path)
    with os.fdopen(fd, "w") as f:
        f.write(digest + "\n")
    os.replace(tmp, path / MANIFEST)


# --- base model --------------------------------------------------------------------------------
def base_model(cfg: ExperimentConfig, tracker: Tracker, progress: bool = True) -> BaseModelHandle:
    """The registered husai-base version with this config's hash, or train and register one
    (first runs of one config started at once train it once: the others wait and reuse it)."""
    with claim(tracker, "base", cfg.base_hash()):
        return _base_model(cfg, tracker, progress)


def _base_model(cfg: ExperimentConfig, tracker: Tracker, progress: bool) -> BaseModelHandle:
    found = tracker.find_base_version(cfg.base_hash())
    if found is not None:
        with tempfile.TemporaryDirectory() as tmp:
            weights = tracker.download(found.run_id, names.ARTIFACT_BASE_WEIGHTS, Path(tmp))
            model, task, base = load_base(weights)
        if (task, base) != (cfg.task, cfg.base):
            raise ConfigError(
                f"husai-base version {found.version} has config hash {cfg.base_hash()} "
                "but a different config; the registry is inconsistent"
            )
        return BaseModelHandle(
            model, cfg, found.version, found.run_id, True, found.test_acc, found.generalised
        )
    result = train_base(cfg, progress=progress)
    with tempfile.TemporaryDirectory() as tmp:
        registered = record_base_model(tracker, cfg, _base_record(cfg, result, Path(tmp)))
    return BaseModelHandle(
        result.model,
        cfg,
        registered.version,
        registered.run_id,
        False,
        result.test_acc,
        result.generalised,
    )


def _base_record(cfg: ExperimentConfig, result: BaseTrainResult, tmp: Path) -> BaseModelRecord:
    c = result.curves
    plots = tmp / names.ARTIFACT_PLOTS
    plots.mkdir()
    plot_base_curves(c, plots / names.PLOT_BASE_CURVES, title=f"p={cfg.task.p}")
    return BaseModelRecord(
        curves={
            names.BASE_TRAIN_LOSS: list(zip(c.steps, c.train_loss, strict=True)),
            names.BASE_TEST_LOSS: list(zip(c.steps, c.test_loss, strict=True)),
            names.BASE_TRAIN_ACC: list(zip(c.steps, c.train_acc, strict=True)),
            names.BASE_TEST_ACC: list(zip(c.steps, c.test_acc, strict=True)),
        },
        seconds=result.seconds,
        steps=result.steps,
        test_acc=result.test_acc,
        generalised=result.generalised,
        outcome=result.outcome,
        weights_dir=save_base(result.model, cfg, tmp / names.ARTIFACT_BASE_WEIGHTS),
        plots_dir=plots,
    )


def base_model_of_run(tracker: Tracker, run_id: str) -> HookedTransformer:
    """The base model whose weights a husai-base run logged."""
    with tempfile.TemporaryDirectory() as tmp:
        model, _, _ = load_base(tracker.download(run_id, names.ARTIFACT_BASE_WEIGHTS, Path(tmp)))
    return model


# --- activations -------------------------------------------------------------------------------
def activations(
    cfg: ExperimentConfig, base: BaseModelHandle, tracker: Tracker, cache_dir: Path | None = None
) -> ActivationsHandle:
    """Cached activations for this base model and request, computed and logged on a miss."""
    key = activation_key(base.run_id, base.version, base.config.base_hash(), cfg.activations)
    with claim(tracker, "activations", key):  # concurrent first runs record it once
        return _activations(cfg, base, tracker, cache_dir, key)


def _activations(
    cfg: ExperimentConfig, base: BaseModelHandle, tracker: Tracker, cache_dir: Path | None, key: str
) -> ActivationsHandle:
    path, run_id, source = activation_entry(
        key,
        tracker,
        cache_dir,
        compute=lambda: partial(
            save_activations, extract(base.model, cfg.task.p, cfg.activations, key)
        ),
    )
    acts = load_activations(path, key)
    hit = source != "computed"
    if run_id is None:
        rec = activations_record(acts, path, hit)
        run_id = record_activations(tracker, cfg, base.version, base.run_id, rec)
    return ActivationsHandle(acts=acts, run_id=run_id, cache_hit=hit, source=source, path=path)


def activations_by_key(
    key: str, tracker: Tracker, cache_dir: Path | None = None
) -> ActivationsHandle:
    """A cached activation set by key, from disk or its MLflow run; nothing is computed, so a
    key that neither has is a one-line ConfigError."""
    with claim(tracker, "activations", key):  # a repair of the entry is one process's
        path, run_id, source = activation_entry(key, tracker, cache_dir)
        acts = load_activations(path, key)
    return ActivationsHandle(
        acts=acts,
        run_id=run_id or "",
        cache_hit=True,
        source=source,
        path=path,
    )


def random_base_activations(
    cfg: ExperimentConfig, tracker: Tracker, cache_dir: Path | None = None
) -> ActivationsHandle:
    """The random-base null's activations: the base model of this config at its initialisation,
    at the same hook, position and split. Extracted once per config (no training, so no run id
    in the key), cached and recorded like the trained model's, reused by every trial."""
    key = random_base_key(cfg.base_hash(), cfg.activations)
    with claim(tracker, "activations", key):
        return _random_base_activations(cfg, tracker, cache_dir, key)


def _random_base_activations(
    cfg: ExperimentConfig, tracker: Tracker, cache_dir: Path | None, key: str
) -> ActivationsHandle:
    path, run_id, source = activation_entry(
        key,
        tracker,
        cache_dir,
        compute=lambda: partial(save_activations, extract_random_base(cfg, key)),
    )
    acts = load_activations(path, key)
    hit = source != "computed"
    if run_id is None:
        rec = activations_record(acts, path, hit)
        run_id = record_null_activations(tracker, cfg, names.NULL_RANDOM_BASE, rec)
    return ActivationsHandle(acts=acts, run_id=run_id, cache_hit=hit, source=source, path=path)


def activations_record(acts: ActivationSet, path: Path, hit: bool) -> ActivationsRecord:
    n_ood = 0 if acts.ood is None else acts.ood.shape[0]
    n_train, n_eval = acts.train.shape[0], acts.eval.shape[0]
    return ActivationsRecord(acts.key, acts.d_in, n_train, n_eval, n_ood, path, hit, acts.sha256)


def activation_entry(
    key: str,
    tracker: Tracker,
    cache_dir: Path | None,
    compute: Callable[[], Writer] | None = None,
    adopt: Callable[[Path], Writer] | None = None,
) -> tuple[Path, str | None, str]:
    """(cache folder, the run that logged it if any, where it came from) of activation set
    `key`; without `compute`, a set that is neither on disk nor in MLflow is a ConfigError.
    `adopt`: how a copy fetched from MLflow is written (default: read and written again)."""
    path = (cache_dir or cache_root()) / "activations" / key
    run_id = find_activations_run(tracker, key)
    if compute is None and not path.exists() and run_id is None:
        raise ConfigError(
            f"activations.key: no activation set with key {key!r} in {path.parent} or in the "
            f"MLflow store {tracker.uri}"
        )
    source = cached_entry(
        path,
        run_id,
        tracker,
        names.ARTIFACT_ACTIVATIONS,
        adopt=adopt or (lambda fetched: partial(save_activations, load_activations(fetched, key))),
        compute=compute,
    )
    return path, run_id, source


# --- reference SAEs ----------------------------------------------------------------------------
def reference_key(cfg: ExperimentConfig, activation_key: str, seed: int) -> str:
    # A reference is one seed trained by sae-lens's step, whatever `seed_batched` says: that
    # switch is left out so that references cached before it existed stay valid.
    train = cfg.train.identity(exclude=("seed_batched",))
    return stable_hash(
        {"activation_key": activation_key, "sae": cfg.sae, "train": train, "seed": seed}
    )


def reference(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    seed: int,
    tracker: Tracker,
    cache_dir: Path | None = None,
    parent_run_id: str | None = None,
) -> Reference:
    """A reference SAE of the consistency objective: the plain recipe (same sae and train
    settings, lambda 0) trained with `seed`, never one of the trial's seeds; its own run,
    nested under `parent_run_id` (the sweep run it is made for) if given."""
    key = reference_key(cfg, acts.key, seed)
    with claim(tracker, "reference", key):  # trials sharing a reference train it once
        return _reference(cfg, acts, seed, tracker, key, cache_dir, parent_run_id)


def _reference(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    seed: int,
    tracker: Tracker,
    key: str,
    cache_dir: Path | None,
    parent_run_id: str | None,
) -> Reference:
    path = (cache_dir or cache_root()) / "references" / key
    run_id = find_reference_run(tracker, cfg, key)
    started = time.time()
    source = cached_entry(
        path,
        run_id,
        tracker,
        names.ARTIFACT_SAE,
        adopt=lambda fetched: partial(shutil.copytree, fetched, dirs_exist_ok=True),
        compute=lambda: partial(save_sae, train_sae(cfg.sae, cfg.train, acts.train, seed).sae),
    )
    if run_id is None:
        # A reference read from the cache was trained before: its run starts now.
        begun = started if source == "computed" else None
        sha = manifest_of(path)
        run_id = record_reference(
            tracker, cfg, acts.key, seed, key, path, begun, sha, parent_run_id
        )
    return Reference(
        seed=seed,
        key=key,
        decoder=decoder(load_sae(path)),
        run_id=run_id,
        reused=source != "computed",
    )
